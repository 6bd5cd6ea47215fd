"""``data prepare``: layouts, pixel conversions, bad files, re-runs, the CLI.

Every fixture is generated here, small (tens of images of a few dozen pixels), in tmp_path.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
import sys
import tracemalloc
import types
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from fixtures_data import assert_refused
from PIL import Image

from diffscape.cli import main
from diffscape.core.layout import MANIFEST, OutError, images_file
from diffscape.data.dataset import DatasetError, SplitWriter, load_dataset
from diffscape.data.prepare import DEFAULT_MAX_PIXELS, prepare_dataset, preprocess_image

RED, BLUE, GREEN, WHITE = (255, 0, 0), (0, 0, 255), (0, 255, 0), (255, 255, 255)
KAGGLE_COLOURS = {
    "Coast": (0, 60, 220),
    "Desert": (230, 200, 80),
    "Forest": (20, 120, 30),
    "Glacier": (210, 240, 250),
    "Mountain": (110, 100, 90),
}
KAGGLE_ROOT = "Landscape Classification/Landscape Classification"


# --- fixtures -------------------------------------------------------------------------------


def save(image: Image.Image, path: Path, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kw)
    return path


def tree_hash(root: Path) -> str:
    """Names, bytes and mtimes of every file under root (or of root itself)."""
    h = hashlib.sha256()
    paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    for p in paths:
        h.update(f"{p.relative_to(root.parent)}|{p.stat().st_mtime_ns}|".encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def make_kaggle(root: Path) -> Path:
    """Kaggle "Landscape Recognition": 3/1/2 images per class in train/val/test, no Glacier
    in validation, a TFRecords folder and a text file beside the splits."""
    base = root / KAGGLE_ROOT
    for split, n in (("Training Data", 3), ("Validation Data", 1), ("Testing Data", 2)):
        for name, colour in KAGGLE_COLOURS.items():
            if split == "Validation Data" and name == "Glacier":
                continue
            for i in range(n):
                save(Image.new("RGB", (40, 30), colour), base / split / name / f"{name}-{i}.jpeg")
    (base / "TFRecords").mkdir()
    (base / "TFRecords" / "train.tfrecords").write_bytes(b"\x00\x01tfrecord" * 10)
    (root / "README.txt").write_text("landscapes\n")
    return root


def make_class_folders(root: Path, per_class: int = 10) -> Path:
    """Classes created out of order; red = 80 * class index in the sorted order, green = the
    image's index, so every output image tells where it came from."""
    for k, name in [(1, "b_sea"), (0, "a_sand"), (2, "c_snow")]:
        for i in range(per_class):
            colour = (80 * k, 20 * i, 7)
            save(Image.new("RGB", (24, 20), colour), root / name / f"img{i:02d}.png")
    return root


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels (a decompression bomb, but tiny)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b""))
        + (chunk(b"IEND", b""))
    )


def truncated_jpeg() -> bytes:
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, "JPEG", quality=90)
    return buf.getvalue()[: len(buf.getvalue()) * 6 // 10]


def zip_tree(root: Path, dest: Path, wrapper: str = "") -> Path:
    """Zip root's contents, below a folder ``wrapper`` if given (as zipping a folder does)."""
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(root.rglob("*")):
            zf.write(p, wrapper + p.relative_to(root).as_posix())
    return dest


def centre(ds, split: str) -> np.ndarray:
    """(N, 3) centre pixel of every image of a split."""
    s = ds.size // 2
    return np.asarray(ds.images(split)[:, :, s, s], dtype=int)


# --- one image ------------------------------------------------------------------------------


def test_solid_image_keeps_its_colour_at_any_size() -> None:
    for size in (8, 32, 64):
        out = preprocess_image(Image.new("RGB", (50, 37), (12, 200, 99)), size)
        assert out.dtype == np.uint8 and out.shape == (3, size, size)
        assert (out.reshape(3, -1).T == (12, 200, 99)).all()


def test_centre_crop_drops_the_sides_then_resizes() -> None:
    # 128x64: green | red | blue | green, 32 columns each; the centre square is red | blue.
    im = Image.new("RGB", (128, 64), GREEN)
    im.paste(RED, (32, 0, 64, 64))
    im.paste(BLUE, (64, 0, 96, 64))
    out = preprocess_image(im, 32)
    assert out[1].max() == 0  # nothing of the cropped-away green leaks in
    assert tuple(out[:, 16, 4]) == RED and tuple(out[:, 16, 27]) == BLUE
    assert (out[:, :, :15] == np.array(RED)[:, None, None]).all()


def test_exif_orientation_is_applied_and_input_untouched() -> None:
    im = Image.new("RGB", (64, 32), RED)  # stored: red left, blue right
    im.paste(BLUE, (32, 0, 64, 32))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display": left becomes top
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=95, exif=exif)
    with Image.open(buf) as jpeg:
        out = preprocess_image(jpeg, 32).astype(int)
        assert jpeg.size == (64, 32) and jpeg.getexif()[0x0112] == 6  # pure
    assert np.abs(out[:, 4, 16] - RED).max() < 10  # top is red
    assert np.abs(out[:, 28, 16] - BLUE).max() < 10  # bottom is blue


def _halves(mode: str, left, right, size=(16, 16)) -> Image.Image:
    im = Image.new(mode, size, left)
    im.paste(right, (size[0] // 2, 0, size[0], size[1]))
    return im


def _palette_with_transparency() -> Image.Image:
    im = Image.new("P", (16, 16), 0)
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)  # 0: black (transparent), 1: red
    im.paste(1, (8, 0, 16, 16))
    im.info["transparency"] = 0
    return im


def _sixteen_bit(mode: str) -> Image.Image:
    # Quadrants 0, 37*257, 32896 (=128*257), 65535: scaled, not clipped, they give 0, 37, 128, 255.
    a = np.zeros((16, 16), np.uint16 if mode == "I;16" else np.int32)
    a[:8, 8:], a[8:, :8], a[8:, 8:] = 37 * 257, 32896, 65535
    return Image.fromarray(a) if mode == "I;16" else Image.fromarray(a, "I")


@pytest.mark.parametrize(
    ("name", "image", "expected"),
    [
        ("L", Image.new("L", (16, 16), 100), {(8, 8): (100, 100, 100)}),
        ("P+transparency", _palette_with_transparency(), {(8, 3): WHITE, (8, 12): RED}),
        ("RGBA", _halves("RGBA", (0, 255, 0, 0), (255, 0, 0, 255)), {(8, 3): WHITE, (8, 12): RED}),
        ("RGBA half alpha", Image.new("RGBA", (16, 16), (0, 0, 0, 128)), {(8, 8): (127,) * 3}),
        ("LA", _halves("LA", (0, 0), (50, 255)), {(8, 3): WHITE, (8, 12): (50, 50, 50)}),
        ("CMYK", Image.new("CMYK", (16, 16), (0, 255, 255, 0)), {(8, 8): RED}),
        (
            "I;16",
            _sixteen_bit("I;16"),
            {(3, 3): (0,) * 3, (3, 12): (37,) * 3, (12, 3): (128,) * 3, (12, 12): (255,) * 3},
        ),
        ("I", _sixteen_bit("I"), {(3, 12): (37,) * 3, (12, 3): (128,) * 3, (12, 12): (255,) * 3}),
    ],
)
def test_modes_convert_to_rgb(name: str, image: Image.Image, expected: dict) -> None:
    out = preprocess_image(image, 16)  # same size: no resampling, exact values
    for (y, x), rgb in expected.items():
        assert np.abs(out[:, y, x].astype(int) - rgb).max() <= 1, (name, (y, x), out[:, y, x])


# --- layouts ------------------------------------------------------------------------------


def test_class_folders_hold_out_a_seeded_stratified_test_split(tmp_path: Path) -> None:
    src = make_class_folders(tmp_path / "src")
    ds = prepare_dataset(src, tmp_path / "out", test_fraction=0.2, seed=0, progress=False)
    assert ds.classes == ["a_sand", "b_sea", "c_snow"]
    assert ds.splits == ["train", "test"] and ds.manifest["layout"] == "class-folders"
    assert ds.manifest["splits"]["test"]["counts"] == {"a_sand": 2, "b_sea": 2, "c_snow": 2}
    assert ds.manifest["splits"]["train"]["counts"] == {"a_sand": 8, "b_sea": 8, "c_snow": 8}
    assert ds.images("train").shape == (24, 3, 32, 32)
    assert ds.manifest["skipped"] == []
    for split in ds.splits:  # the red channel encodes the class: labels must agree
        assert (centre(ds, split)[:, 0] == 80 * np.asarray(ds.labels(split))).all()

    def test_ids(d) -> set[tuple[int, int]]:
        return {
            (int(lab), int(g))
            for lab, g in zip(d.labels("test"), centre(d, "test")[:, 1], strict=True)
        }

    again = prepare_dataset(src, tmp_path / "again", test_fraction=0.2, seed=0, progress=False)
    other = prepare_dataset(src, tmp_path / "other", test_fraction=0.2, seed=1, progress=False)
    assert test_ids(again) == test_ids(ds)
    assert test_ids(other) != test_ids(ds)
    assert again.content_hash == ds.content_hash


def test_kaggle_layout_nested_with_tfrecords(tmp_path: Path) -> None:
    src = make_kaggle(tmp_path / "kaggle")
    before = tree_hash(src)
    ds = prepare_dataset(src, tmp_path / "out", progress=False)
    assert tree_hash(src) == before
    assert ds.classes == sorted(KAGGLE_COLOURS)
    assert ds.splits == ["train", "val", "test"] and ds.manifest["layout"] == "split-folders"
    assert [ds.count(s) for s in ds.splits] == [15, 4, 10]
    assert ds.manifest["splits"]["val"]["counts"]["Glacier"] == 0
    assert ds.manifest["splits"]["test"]["counts"] == dict.fromkeys(sorted(KAGGLE_COLOURS), 2)
    assert ds.manifest["skipped"] == []  # TFRecords and README.txt are not images: ignored
    colours = np.array([KAGGLE_COLOURS[c] for c in ds.classes])
    for split in ds.splits:  # solid JPEGs: within a few levels of the class colour
        assert np.abs(centre(ds, split) - colours[np.asarray(ds.labels(split))]).max() <= 4


def test_zip_is_read_in_place_and_matches_the_folder(tmp_path: Path) -> None:
    src = make_kaggle(tmp_path / "kaggle")
    archive = zip_tree(src, tmp_path / "landscapes.zip")
    before = tree_hash(archive)
    from_folder = prepare_dataset(src, tmp_path / "a", progress=False)
    from_zip = prepare_dataset(archive, tmp_path / "b", progress=False)
    assert tree_hash(archive) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "kaggle", "landscapes.zip"]
    assert from_zip.manifest["source"].endswith("landscapes.zip")
    assert from_zip.classes == from_folder.classes and from_zip.splits == from_folder.splits
    assert from_zip.content_hash == from_folder.content_hash


def test_flat_folder_and_zip_of_it_are_unlabelled(tmp_path: Path) -> None:
    src = tmp_path / "photos"
    for i in range(12):
        save(Image.new("RGB", (20, 20), (i * 20, 0, 0)), src / f"{i}.png")
    ds = prepare_dataset(src, tmp_path / "out", test_fraction=0.1, progress=False)
    assert ds.classes == [] and ds.manifest["layout"] == "flat"
    assert (ds.count("train"), ds.count("test")) == (11, 1)
    assert set(np.asarray(ds.labels("train"))) == {-1} and set(ds.labels("test")) == {-1}
    # A zip of the folder holds "photos/..." : the wrapper folder is not taken for a class.
    archive = zip_tree(src, tmp_path / "photos.zip", wrapper="photos/")
    zipped = prepare_dataset(archive, tmp_path / "zipped", progress=False)
    assert zipped.classes == [] and zipped.content_hash == ds.content_hash


def test_converted_files_through_prepare(tmp_path: Path) -> None:
    """Files on disk in other modes: 16-bit PNG, GIF with transparency, CMYK JPEG, EXIF."""
    src = tmp_path / "src"
    save(_sixteen_bit("I;16"), src / "a_grey16" / "x.png")
    save(_palette_with_transparency(), src / "b_gif" / "x.gif")
    save(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), src / "c_cmyk" / "x.jpg", quality=98)
    im = _halves("RGB", RED, BLUE, size=(32, 16))
    exif = Image.Exif()
    exif[0x0112] = 8  # "rotate 90 degrees counter-clockwise": left becomes bottom
    save(im, src / "d_exif" / "x.jpg", quality=98, exif=exif)
    ds = prepare_dataset(src, tmp_path / "out", size=16, test_fraction=0, progress=False)
    assert ds.splits == ["train"] and ds.classes == ["a_grey16", "b_gif", "c_cmyk", "d_exif"]
    grey, gif, cmyk, rotated = np.asarray(ds.images("train"), dtype=int)
    assert [grey[0, y, x] for y, x in ((3, 3), (3, 12), (12, 3), (12, 12))] == [0, 37, 128, 255]
    assert tuple(gif[:, 8, 3]) == WHITE and tuple(gif[:, 8, 12]) == RED
    assert np.abs(cmyk[:, 8, 8] - RED).max() <= 3
    assert np.abs(rotated[:, 2, 8] - BLUE).max() <= 10  # top: was right
    assert np.abs(rotated[:, 13, 8] - RED).max() <= 10  # bottom: was left


# --- bad files, options, failures --------------------------------------------------------


def test_bad_files_are_skipped_with_reasons(tmp_path: Path, capsys) -> None:
    src = make_class_folders(tmp_path / "src", per_class=3)
    (src / "a_sand" / "cut.jpg").write_bytes(truncated_jpeg())
    (src / "a_sand" / "empty.png").write_bytes(b"")
    (src / "b_sea" / "notes.jpg").write_text("not a photo\n")
    (src / "c_snow" / "bomb.png").write_bytes(png_claiming(100_000, 100_000))
    (src / "c_snow" / "notes.txt").write_text("ignored, not skipped\n")
    (src / "b_sea" / ".DS_Store").write_bytes(b"\x00" * 10)
    before = tree_hash(src)
    limit = Image.MAX_IMAGE_PIXELS
    ds = prepare_dataset(src, tmp_path / "out", test_fraction=0, progress=False)
    assert limit == Image.MAX_IMAGE_PIXELS  # restored
    assert tree_hash(src) == before
    assert ds.count("train") == 9 and ds.classes == ["a_sand", "b_sea", "c_snow"]
    reasons = {s["path"]: s["reason"] for s in ds.manifest["skipped"]}
    assert set(reasons) == {
        "a_sand/cut.jpg",
        "a_sand/empty.png",
        "b_sea/notes.jpg",
        "c_snow/bomb.png",
    }
    assert reasons["a_sand/cut.jpg"].startswith("truncated or corrupt")
    assert reasons["a_sand/empty.png"].startswith("empty file")
    assert reasons["b_sea/notes.jpg"].startswith("not an image")
    assert reasons["c_snow/bomb.png"].startswith("too large")
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "skipped" in ln]
    assert len(lines) == 1 and lines[0].startswith("skipped 4 of 13 image files")


def test_max_pixels_skips_large_images(tmp_path: Path) -> None:
    src = tmp_path / "src"
    save(Image.new("RGB", (16, 16), RED), src / "small.png")
    save(Image.new("RGB", (64, 64), RED), src / "large.png")
    ds = prepare_dataset(src, tmp_path / "out", test_fraction=0, progress=False, max_pixels=1000)
    assert ds.count("train") == 1
    assert [s["path"] for s in ds.manifest["skipped"]] == ["large.png"]
    assert ds.manifest["skipped"][0]["reason"].startswith("too large")
    assert DEFAULT_MAX_PIXELS == Image.MAX_IMAGE_PIXELS  # Pillow's default, untouched


def test_images_outside_split_folders_or_class_folders_are_skipped(tmp_path: Path) -> None:
    src = tmp_path / "src"
    save(Image.new("RGB", (16, 16), RED), src / "train" / "red" / "a.png")
    save(Image.new("RGB", (16, 16), BLUE), src / "TEST" / "blue" / "b.png")
    save(Image.new("RGB", (16, 16), BLUE), src / "valid" / "loose.png")
    save(Image.new("RGB", (16, 16), BLUE), src / "preview.png")
    ds = prepare_dataset(src, tmp_path / "out", size=8, progress=False)
    assert ds.splits == ["train", "val", "test"] and ds.classes == ["blue", "red"]
    assert [ds.count(s) for s in ds.splits] == [1, 0, 1]
    assert [s["path"] for s in ds.manifest["skipped"]] == ["preview.png", "valid/loose.png"]


def test_nothing_usable_fails_and_leaves_nothing_behind(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.jpg").write_bytes(b"")
    (src / "b.png").write_text("text")
    with pytest.raises(DatasetError, match=r"nothing usable in .*all 2 image files were skipped"):
        prepare_dataset(src, tmp_path / "out", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # no out, no temporary folder
    (src / "a.jpg").unlink()
    (src / "b.png").unlink()
    (src / "notes.txt").write_text("no images here")
    with pytest.raises(DatasetError, match="no images in"):
        prepare_dataset(src, tmp_path / "out", progress=False)


def test_bad_options_and_outputs_are_refused(tmp_path: Path) -> None:
    src = make_class_folders(tmp_path / "src", per_class=2)
    for size in (0, 4, 30):
        with pytest.raises(DatasetError, match="multiple of 8"):
            prepare_dataset(src, tmp_path / "out", size=size, progress=False)
    with pytest.raises(DatasetError, match="test-fraction"):
        prepare_dataset(src, tmp_path / "out", test_fraction=1.0, progress=False)
    with pytest.raises(DatasetError, match="inside SRC"):
        prepare_dataset(src, src / "out", progress=False)
    precious = tmp_path / "precious"
    save(Image.new("RGB", (4, 4)), precious / "keep.png")
    with pytest.raises(OutError, match="not a diffscape folder"):
        prepare_dataset(src, precious, progress=False)
    assert (precious / "keep.png").is_file()
    with pytest.raises(DatasetError, match="does not exist"):
        prepare_dataset(tmp_path / "missing", tmp_path / "out", progress=False)
    with pytest.raises(DatasetError, match=r"neither a folder nor a \.zip"):
        prepare_dataset(precious / "keep.png", tmp_path / "out", progress=False)


def test_rerun_is_a_no_op_until_input_or_options_change(tmp_path: Path, capsys) -> None:
    src = make_class_folders(tmp_path / "src", per_class=4)
    out = tmp_path / "out"
    first = prepare_dataset(src, out, progress=False)
    stamp = (out / MANIFEST).stat().st_mtime_ns, (out / images_file("train")).stat().st_ino
    capsys.readouterr()
    second = prepare_dataset(src, out, progress=False)
    assert "up to date" in capsys.readouterr().out
    assert (
        (out / MANIFEST).stat().st_mtime_ns,
        (out / images_file("train")).stat().st_ino,
    ) == stamp
    assert second.manifest == first.manifest

    with pytest.raises(OutError, match="--overwrite"):  # another option: not silently
        prepare_dataset(src, out, size=64, progress=False)
    bigger = prepare_dataset(src, out, size=64, progress=False, overwrite=True)  # rebuilt
    assert bigger.images("train").shape[1:] == (3, 64, 64)
    assert "up to date" not in capsys.readouterr().out
    save(Image.new("RGB", (24, 20), (0, 0, 0)), src / "a_sand" / "new.png")  # another input
    grown = prepare_dataset(src, out, size=64, progress=False, overwrite=True)
    assert sum(grown.count(s) for s in grown.splits) == 13
    assert not list(tmp_path.glob(".out*"))  # no leftover temporary or old folders


def test_memory_stays_flat_as_images_grow(tmp_path: Path, monkeypatch) -> None:
    """Peak Python/numpy allocations while decoding barely grow with the number of images (a
    64x64 image is 12 KB: holding 200 more would add 2.4 MB). Measured up to the writers'
    finish(), whose copy is bounded separately (64 MiB chunks, see dataset.py)."""
    peaks: list[int] = []
    finish = SplitWriter.finish

    def finish_and_record(self: SplitWriter) -> None:
        peaks.append(tracemalloc.get_traced_memory()[1])
        finish(self)

    monkeypatch.setattr(SplitWriter, "finish", finish_and_record)

    def peak(n: int) -> int:
        src = tmp_path / f"src{n}"
        for i in range(n):
            save(Image.new("RGB", (72, 64), (i % 256, 0, 0)), src / f"{i:04d}.png")
        tracemalloc.start()
        try:
            prepare_dataset(src, tmp_path / f"out{n}", size=64, progress=False)
            return peaks[
                -2
            ]  # train and test writers: the first finish() comes right after decoding
        finally:
            tracemalloc.stop()

    peak(5)  # warm up imports and caches
    small, large = peak(40), peak(240)
    assert large - small < 400_000, (small, large)


# --- command line -------------------------------------------------------------------------


def test_cli_prepare_and_show(tmp_path: Path, capsys) -> None:
    src = make_class_folders(tmp_path / "src", per_class=5)
    out, png = tmp_path / "data", tmp_path / "grid.png"
    assert main(["data", "prepare", str(src), "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert str(out) in printed and "a_sand" in printed and "test" in printed
    ds = load_dataset(out)
    assert ds.classes == ["a_sand", "b_sea", "c_snow"] and ds.count("test") == 3
    assert main(["data", "show", str(out), "--out", str(png), "--per-class", "4"]) == 0
    with Image.open(png) as sheet:
        assert sheet.mode == "RGB"
        assert sheet.height == 3 * 2 * (32 + 4)  # one row per class: 2x (image + padding)
    assert main(["data", "prepare", str(src), "--out", str(out), "--size", "30"]) == 2
    assert "multiple of 8" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["prepare", "show", "synth"])
def test_cli_help_has_examples(command: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["data", command, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "examples:" in text and f"diffscape data {command}" in text
    assert main(["data"]) == 2  # no subcommand: the group's help
    assert "prepare" in capsys.readouterr().out


def test_cli_synth_calls_synthesize(tmp_path: Path, monkeypatch, capsys) -> None:
    calls = []
    src = make_class_folders(tmp_path / "src", per_class=2)

    def synthesize(n: int, size: int, out, seed: int, test_fraction: float, overwrite: bool):
        calls.append((n, size, Path(out), seed, test_fraction))
        return prepare_dataset(src, out, size=size, test_fraction=0, progress=False)

    fake = types.ModuleType("diffscape.data.synth")
    fake.synthesize = synthesize
    monkeypatch.setitem(sys.modules, "diffscape.data.synth", fake)
    out = tmp_path / "synth"
    assert main(["data", "synth", "--out", str(out), "--n", "6", "--seed", "3"]) == 0
    assert calls == [(6, 32, out, 3, 0.2)]
    assert json.loads((out / MANIFEST).read_text())["classes"] == ["a_sand", "b_sea", "c_snow"]
    assert "b_sea" in capsys.readouterr().out


# --- hostile and careless input --------------------------------------------------------------


def test_zip_members_outside_the_archive_tree_are_skipped_with_a_reason(tmp_path: Path) -> None:
    """An absolute member used to yield the class "/" (and so sample folders at "/"); members
    with ".." were silently ignored. Both are now skipped and listed with the reason."""
    src = make_class_folders(tmp_path / "src", per_class=3)
    archive = zip_tree(src, tmp_path / "evil.zip")
    png = (src / "a_sand" / "img00.png").read_bytes()
    with zipfile.ZipFile(archive, "a") as zf:
        for name in ("/tmp/a.jpg", "/etc/x/b.png", "../../escape/c.png", "b_sea/../../d.png"):
            zf.writestr(zipfile.ZipInfo(name), png)  # ZipInfo keeps the name as given
        zf.writestr(zipfile.ZipInfo("C:/win/e.png"), png)
    ds = prepare_dataset(archive, tmp_path / "out", test_fraction=0, progress=False)
    assert ds.classes == ["a_sand", "b_sea", "c_snow"]
    assert ds.count("train") == 9
    reasons = {s["path"]: s["reason"] for s in ds.manifest["skipped"]}
    assert reasons == {
        "/tmp/a.jpg": "unsafe path in the archive: absolute",
        "/etc/x/b.png": "unsafe path in the archive: absolute",
        "C:/win/e.png": "unsafe path in the archive: absolute",
        "../../escape/c.png": "unsafe path in the archive: contains ..",
        "b_sea/../../d.png": "unsafe path in the archive: contains ..",
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.zip", "out", "src"]


def test_fifos_are_skipped_never_opened_even_if_swapped_in_after_listing(tmp_path: Path) -> None:
    """Opening a FIFO for reading waits for a writer: forever. One among the photos is listed as
    skipped; one that replaces a photo after the listing is refused without blocking."""
    import os

    from diffscape.data import prepare as P

    src = make_class_folders(tmp_path / "src", per_class=3)
    os.mkfifo(src / "a_sand" / "pipe.png")
    ds = prepare_dataset(src, tmp_path / "out", test_fraction=0, progress=False)
    assert ds.count("train") == 9
    (skipped,) = ds.manifest["skipped"]
    assert skipped["path"] == "a_sand/pipe.png" and "not a regular file" in skipped["reason"]
    source = P._Source(src)
    assert "a_sand/img00.png" in [f.rel for f in source.files()]
    (src / "a_sand" / "img00.png").unlink()
    os.mkfifo(src / "a_sand" / "img00.png")
    with pytest.raises(P._Unusable, match="not a regular file"), source.open("a_sand/img00.png"):
        pass


@pytest.mark.parametrize("name", ["Coast ", " Coast", "new\nline", "x" * 201])
def test_class_folder_names_that_cannot_be_folders_are_refused(
    name: str, tmp_path: Path, capsys
) -> None:
    src = make_class_folders(tmp_path / "src", per_class=2)
    save(Image.new("RGB", (8, 8)), src / name / "1.png")
    err = assert_refused(
        capsys, ["data", "prepare", str(src), "--out", str(tmp_path / "out")], tmp_path
    )
    assert "class name" in err and "rename it" in err


def _thesis(tmp_path: Path) -> Path:
    (tmp_path / "thesis").mkdir()
    (tmp_path / "thesis" / "chapter1.tex").write_text("months of work\n")
    return tmp_path / "thesis"


def _run(tmp_path: Path) -> Path:
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "run.json").write_text("{}\n")
    return tmp_path / "run"


def _a_file(tmp_path: Path) -> Path:
    (tmp_path / "notes.txt").write_text("mine\n")
    return tmp_path / "notes.txt"


@pytest.mark.parametrize(
    "make_out, message",
    [
        (_thesis, "not a diffscape folder"),
        (_run, "is a run folder"),
        (_a_file, "is a file"),
        (lambda tmp: tmp / "src", "inside SRC"),
        (lambda tmp: tmp / "src" / "a_sand", "inside SRC"),
    ],
    ids=["thesis", "run", "file", "src", "inside-src"],
)
def test_prepare_refuses_out_that_is_not_a_dataset(
    make_out, message: str, tmp_path: Path, capsys
) -> None:
    src = make_class_folders(tmp_path / "src", per_class=2)
    out = make_out(tmp_path)
    argv = ["data", "prepare", str(src), "--out", str(out), "--no-progress"]
    assert message in assert_refused(capsys, argv, tmp_path)


@pytest.mark.parametrize(
    "args",
    [["--size", "2048"], ["--size", "0"], ["--test-fraction", "-0.1"], ["--max-pixels", "0"]],
    ids=lambda a: " ".join(a),
)
def test_prepare_bad_arguments_are_one_line(args: list[str], tmp_path: Path, capsys) -> None:
    src = make_class_folders(tmp_path / "src", per_class=2)
    argv = ["data", "prepare", str(src), "--out", str(tmp_path / "out"), *args]
    assert_refused(capsys, argv, tmp_path)
