"""``data show``: labelled rows of images (geometry, pixels) and per-class contact sheets."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from fixtures_data import assert_refused

from diffscape.core.atomic import tmp_dir_beside
from diffscape.core.layout import MANIFEST, images_file, labels_file
from diffscape.data.dataset import (
    Dataset,
    DatasetError,
    SplitWriter,
    load_dataset,
    write_manifest_and_publish,
)
from diffscape.data.show import labelled_rows_image, show_dataset

RED, BLUE = (255, 0, 0), (0, 0, 255)


def solid(colour: tuple[int, int, int], n: int, size: int = 32) -> np.ndarray:
    return np.broadcast_to(np.array(colour, np.uint8)[None, :, None, None], (n, 3, size, size))


def write_dataset(out: Path, classes: list[str], images: np.ndarray, labels: list[int]) -> Dataset:
    """A one-split ("train") dataset from uint8 (N, 3, S, S) images, via the real writer."""
    tmp = tmp_dir_beside(out)
    writer = SplitWriter(tmp, "train", images.shape[-1])
    for image, label in zip(images, labels, strict=True):
        writer.add(np.ascontiguousarray(image), label)
    writer.finish()
    return write_manifest_and_publish(
        tmp,
        out,
        classes=classes,
        size=images.shape[-1],
        split_labels={"train": writer.labels},
        source="test",
        resize="none",
        skipped=[],
    )


def count(sheet, colour: tuple[int, int, int]) -> int:
    return int((np.asarray(sheet) == colour).all(axis=-1).sum())


def test_rows_are_upscaled_by_nearest_and_labelled() -> None:
    scale = 3
    rows = [
        ("red\n2 images", solid(RED, 2, 8)),
        ("blue", solid(BLUE, 3, 8)),
        ("empty", np.zeros((0, 3, 8, 8), np.uint8)),
    ]
    sheet = labelled_rows_image(rows, scale=scale)
    assert sheet.mode == "RGB"
    assert count(sheet, RED) == 2 * (8 * scale) ** 2  # every pixel became a scale x scale block
    assert count(sheet, BLUE) == 3 * (8 * scale) ** 2
    pixels = np.asarray(sheet)
    blue_cols = np.flatnonzero((pixels == BLUE).all(axis=-1).any(axis=0))
    label_w = int(blue_cols.min()) - scale * 2  # first image starts after the padding
    # the label column holds text (dark pixels) and nothing else
    assert pixels[:, :label_w].min() < 100
    assert not (pixels[:, :label_w] == BLUE).all(axis=-1).any()
    # the widest row (3 images) sets the width: padding + 3 x (image + padding)
    assert sheet.width == label_w + scale * (3 * (8 + 2) + 2)


def test_row_height_is_the_upscaled_image_for_32_px() -> None:
    for n_rows in (1, 5):
        rows = [(f"class {k}\n{k} images", solid(RED, 4)) for k in range(n_rows)]
        assert labelled_rows_image(rows).height == n_rows * 2 * (32 + 4)


def test_show_dataset_one_row_per_class_seeded(tmp_path: Path) -> None:
    a = solid(RED, 3)
    b = np.stack([solid((0, 10 * i, 255), 1)[0] for i in range(10)])  # distinct blues
    ds = write_dataset(
        tmp_path / "ds",
        ["a", "b", "c"],
        np.concatenate([b[:5], a, b[5:]]),
        [1] * 5 + [0] * 3 + [1] * 5,
    )
    sheet = show_dataset(ds, "train", per_class=4, seed=0)
    assert sheet.height == 3 * 2 * (32 + 4)  # "c" has no image but still gets its row
    assert count(sheet, RED) == 3 * 64 * 64  # all 3 of "a" (fewer than per_class)
    pixels = np.asarray(sheet)
    b_pixels = (pixels[..., 0] == 0) & (pixels[..., 2] == 255)  # white has R = 255
    assert b_pixels.sum() == 4 * 64 * 64  # 4 of "b"'s 10
    assert np.array_equal(np.asarray(show_dataset(ds, "train", 4, seed=0)), np.asarray(sheet))
    assert not np.array_equal(np.asarray(show_dataset(ds, "train", 4, seed=1)), np.asarray(sheet))
    with pytest.raises(DatasetError, match="no split 'val'"):
        show_dataset(ds, "val")
    with pytest.raises(ValueError, match="per_class"):
        show_dataset(ds, "train", per_class=0)


def test_show_unlabelled_dataset_is_one_row(tmp_path: Path) -> None:
    ds = write_dataset(tmp_path / "ds", [], solid(RED, 6), [-1] * 6)
    sheet = show_dataset(ds, "train", per_class=8)
    assert sheet.height == 2 * (32 + 4)
    assert count(sheet, RED) == 6 * 64 * 64


# --- damaged or hostile dataset folders: one line, nothing written ----------------------------


def _edit_manifest(**changes):
    def edit(root: Path) -> None:
        manifest = json.loads((root / MANIFEST).read_text())
        for key, value in changes.items():
            node, *path = key.split(".")
            target = manifest
            for part in [node, *path][:-1]:
                target = target[part]
            target[[node, *path][-1]] = value
        (root / MANIFEST).write_text(json.dumps(manifest))

    return edit


def _write(name: str, data: bytes | None = None, cut: float | None = None):
    def edit(root: Path) -> None:
        path = root / name
        content = path.read_bytes()
        path.write_bytes(data if data is not None else content[: int(len(content) * cut)])

    return edit


def _labels(values: list[int]):
    def edit(root: Path) -> None:
        np.save(root / labels_file("train"), np.asarray(values, np.int64))

    return edit


DAMAGE = {
    "manifest not JSON": (_write(MANIFEST, b'{"format": "diffscape-dataset", '), "not valid JSON"),
    "manifest is a list": (_write(MANIFEST, b"[1, 2]"), "not a diffscape-dataset manifest"),
    "class ../../../X": (_edit_manifest(classes=["a", "../../../X"]), "class name"),
    "class /": (_edit_manifest(classes=["a", "/"]), "class name"),
    "duplicate classes": (_edit_manifest(classes=["a", "a"]), "distinct"),
    "split ../evil": (_edit_manifest(splits={"../evil": {"n": 1}}), "splits must be"),
    "size 10**6": (_edit_manifest(size=10**6), "size must be"),
    "n missing": (_edit_manifest(**{"splits.train": {}}), "no image count"),
    "images truncated": (_write(images_file("train"), cut=0.5), "truncated"),
    "images header cut": (_write(images_file("train"), cut=0.005), "not a readable .npy"),
    "images garbage": (_write(images_file("train"), os.urandom(5000)), "not a readable .npy"),
    "labels garbage": (_write(labels_file("train"), os.urandom(300)), "not a readable .npy"),
    "images missing": (lambda root: (root / images_file("train")).unlink(), "is missing"),
    "label out of range": (_labels([0, 1, 7]), "labels range from 0 to 7"),
    "negative label": (_labels([0, -5, 1]), "labels range from -5"),
    "count mismatch": (_edit_manifest(**{"splits.train.n": 4}), "expected uint8"),
    "fewer labels": (_labels([0, 1]), "expected int64"),
    "per-class counts": (_edit_manifest(**{"splits.train.counts": {"a": 3, "b": 0}}), "counts"),
}


@pytest.mark.parametrize("name", list(DAMAGE))
def test_damaged_dataset_is_one_line(name: str, tmp_path: Path, capsys) -> None:
    damage, message = DAMAGE[name]
    root = write_dataset(tmp_path / "ds", ["a", "b"], solid(RED, 3), [0, 1, 0]).root
    damage(root)
    png = tmp_path / "sheet.png"
    err = assert_refused(capsys, ["data", "show", str(root), "--out", str(png)], tmp_path)
    assert message in err
    with pytest.raises(DatasetError):
        load_dataset(root)


@pytest.mark.parametrize(
    "args", [["--per-class", "0"], ["--per-class", "1000000"], ["--split", "nope"]]
)
def test_show_bad_arguments_are_one_line(args: list[str], tmp_path: Path, capsys) -> None:
    root = write_dataset(tmp_path / "ds", ["a", "b"], solid(RED, 3), [0, 1, 0]).root
    argv = ["data", "show", str(root), "--out", str(tmp_path / "s.png"), *args]
    assert_refused(capsys, argv, tmp_path)
