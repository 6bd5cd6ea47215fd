"""Procedural landscapes: determinism, dataset writing, and that the classes are learnable."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from fixtures_data import assert_refused

from diffscape.cli import main
from diffscape.data.dataset import load_dataset
from diffscape.data.synth import (
    CLASSES,
    SYNTH_VERSION,
    render_index,
    render_landscape,
    split_test_indices,
    synthesize,
)


def _render_many(seed: int, indices: range, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    pairs = [render_index(seed, i, size) for i in indices]
    return np.stack([p[0] for p in pairs]), np.array([p[1] for p in pairs])


def _by_index(ds, n: int, seed: int, test_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Undo the split: images and labels of a synth dataset back in index order."""
    is_test = np.zeros(n, bool)
    is_test[split_test_indices(n, seed, test_fraction)] = True
    images = np.empty((n, 3, ds.size, ds.size), np.uint8)
    labels = np.empty(n, np.int64)
    for split, mask in (("train", ~is_test), ("test", is_test)):
        if mask.any():
            images[mask] = ds.images(split)
            labels[mask] = ds.labels(split)
    return images, labels


@pytest.mark.parametrize("size", [8, 32, 64])
@pytest.mark.parametrize("name", CLASSES)
def test_render_shape_dtype_and_range(name: str, size: int) -> None:
    img = render_landscape(name, size, np.random.default_rng(0))
    assert img.shape == (3, size, size)
    assert img.dtype == np.uint8
    assert img.flags.c_contiguous
    assert img.std() > 5  # not a flat fill


def test_render_is_deterministic_per_generator() -> None:
    for name in CLASSES:
        a = render_landscape(name, 32, np.random.default_rng(7))
        b = render_landscape(name, 32, np.random.default_rng(7))
        c = render_landscape(name, 32, np.random.default_rng(8))
        np.testing.assert_array_equal(a, b)
        assert np.abs(a.astype(int) - c.astype(int)).mean() > 3


@pytest.mark.parametrize("size", [0, 4, 12, 36, 7.0])
def test_bad_size_is_a_clear_value_error(size, tmp_path) -> None:
    with pytest.raises(ValueError, match="multiple of 8"):
        render_landscape("Coast", size, np.random.default_rng(0))
    with pytest.raises(ValueError, match="multiple of 8"):
        synthesize(10, size, tmp_path / "d", progress=False)
    assert not (tmp_path / "d").exists()


def test_unknown_class_and_bad_arguments() -> None:
    with pytest.raises(ValueError, match="Coast, Desert, Forest, Glacier, Mountain"):
        render_landscape("Jungle", 32, np.random.default_rng(0))
    with pytest.raises(ValueError, match="test_fraction"):
        synthesize(10, 8, "unused", test_fraction=1.0, progress=False)
    with pytest.raises(ValueError, match="at least 5"):
        synthesize(3, 8, "unused", progress=False)
    with pytest.raises(ValueError, match="no training images"):
        synthesize(5, 8, "unused", test_fraction=0.9, progress=False)


def test_synthesize_writes_a_balanced_stratified_dataset(tmp_path) -> None:
    n, seed = 50, 3
    ds = synthesize(n, 16, tmp_path / "synth", seed=seed, progress=False)
    again = load_dataset(tmp_path / "synth")
    assert again.manifest == ds.manifest
    m = ds.manifest
    assert ds.classes == list(CLASSES)
    assert ds.size == 16
    assert m["source"] == "synth:seed=3"
    assert m["resize"] == "none (rendered at size)"
    assert m["skipped"] == []
    assert m["synth"] == {"seed": 3, "n": 50, "version": SYNTH_VERSION}
    # 10 per class, 20% of each class in test.
    assert m["splits"]["train"]["counts"] == {c: 8 for c in CLASSES}
    assert m["splits"]["test"]["counts"] == {c: 2 for c in CLASSES}
    assert ds.count("train") + ds.count("test") == n
    # Every stored image is exactly the one its index renders, with the label i % 5.
    images, labels = _by_index(ds, n, seed, 0.2)
    np.testing.assert_array_equal(labels, np.arange(n) % len(CLASSES))
    expected, _ = _render_many(seed, range(n), 16)
    np.testing.assert_array_equal(images, expected)
    assert not list(tmp_path.glob(".*tmp*"))  # temporary folder renamed into place


def test_same_seed_same_dataset_other_seed_differs(tmp_path) -> None:
    a = synthesize(20, 8, tmp_path / "a", seed=0, progress=False)
    b = synthesize(20, 8, tmp_path / "b", seed=0, progress=False)
    c = synthesize(20, 8, tmp_path / "c", seed=1, progress=False)
    assert a.content_hash == b.content_hash
    np.testing.assert_array_equal(a.images("train"), b.images("train"))
    assert c.content_hash != a.content_hash
    assert not np.array_equal(a.images("train"), c.images("train"))


def test_image_i_does_not_depend_on_n(tmp_path) -> None:
    small = synthesize(10, 8, tmp_path / "small", seed=5, progress=False)
    big = synthesize(35, 8, tmp_path / "big", seed=5, test_fraction=0.3, progress=False)
    small_images, _ = _by_index(small, 10, 5, 0.2)
    big_images, big_labels = _by_index(big, 35, 5, 0.3)
    np.testing.assert_array_equal(big_images[:10], small_images)
    assert np.bincount(big_labels).tolist() == [7] * 5


def test_no_test_split_when_fraction_is_zero(tmp_path) -> None:
    ds = synthesize(10, 8, tmp_path / "d", test_fraction=0.0, progress=False)
    assert ds.splits == ["train"]
    assert ds.count("train") == 10
    manifest = json.loads((tmp_path / "d" / "manifest.json").read_text())
    assert "test" not in manifest["splits"]


def test_split_is_seeded_and_stratified() -> None:
    a = split_test_indices(1000, 0, 0.2)
    assert len(a) == 200
    assert np.bincount(a % 5).tolist() == [40] * 5
    np.testing.assert_array_equal(a, split_test_indices(1000, 0, 0.2))
    assert not np.array_equal(a, split_test_indices(1000, 1, 0.2))


def test_images_vary_within_each_class() -> None:
    images, labels = _render_many(11, range(150))
    x = images.reshape(len(images), -1).astype(np.float32)
    for c in range(len(CLASSES)):
        members = x[labels == c]  # 30 images
        diff = np.abs(members[:, None] - members[None]).mean(-1)
        off_diagonal = diff[~np.eye(len(members), dtype=bool)]
        assert off_diagonal.min() > 5, CLASSES[c]  # no near-duplicates (levels of 255)
        assert off_diagonal.mean() > 20, CLASSES[c]


def test_classes_are_learnable_but_not_by_mean_colour() -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train_x, train_y = _render_many(0, range(500))
    test_x, test_y = _render_many(0, range(100_000, 100_250))

    def pooled(images: np.ndarray) -> np.ndarray:  # 8x8 colour thumbnails
        x = images.astype(np.float32) / 255
        return x.reshape(len(x), 3, 8, 4, 8, 4).mean((3, 5)).reshape(len(x), -1)

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    clf.fit(pooled(train_x), train_y)
    accuracy = (clf.predict(pooled(test_x)) == test_y).mean()
    assert accuracy >= 0.8  # chance is 0.2

    # One mean colour per class is far from enough: the classes share palettes.
    def mean_colour(images: np.ndarray) -> np.ndarray:
        return images.astype(np.float32).mean((2, 3))

    centres = np.stack([mean_colour(train_x[train_y == c]).mean(0) for c in range(5)])
    nearest = ((mean_colour(test_x)[:, None] - centres[None]) ** 2).sum(-1).argmin(1)
    assert (nearest == test_y).mean() < 0.8


def test_failure_midway_leaves_no_folder(tmp_path, monkeypatch) -> None:
    import diffscape.data.synth as synth

    def broken(seed: int, index: int, size: int):
        if index == 7:
            raise KeyboardInterrupt
        return render_index(seed, index, size)

    monkeypatch.setattr(synth, "render_index", broken)
    with pytest.raises(KeyboardInterrupt):
        synth.synthesize(20, 8, tmp_path / "d", progress=False)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# Careless --out and arguments: refused in one line, nothing touched


def _thesis(tmp_path):
    out = tmp_path / "thesis"
    out.mkdir()
    (out / "chapter1.tex").write_text("months of work\n")
    return out


def _run(tmp_path):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "run.json").write_text('{"classes": []}\n')
    (out / "config.json").write_text("{}\n")
    return out


def _file(tmp_path):
    out = tmp_path / "notes.txt"
    out.write_text("a file, not a folder\n")
    return out


@pytest.mark.parametrize("make_out", [_thesis, _run, _file], ids=["thesis", "run", "file"])
def test_synth_never_replaces_what_is_not_a_dataset(make_out, tmp_path, capsys) -> None:
    out = make_out(tmp_path)
    err = assert_refused(
        capsys, ["data", "synth", "--out", str(out), "--n", "5", "--size", "8"], tmp_path
    )
    assert str(out) in err


def test_synth_replaces_an_older_dataset_and_an_empty_folder(tmp_path, capsys) -> None:
    out = tmp_path / "d"
    out.mkdir()  # empty: fine
    assert main(["data", "synth", "--out", str(out), "--n", "5", "--size", "8"]) == 0
    assert main(["data", "synth", "--out", str(out), "--n", "10", "--size", "8"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (
        main(["data", "synth", "--out", str(out), "--n", "10", "--size", "8", "--overwrite"]) == 0
    )
    assert load_dataset(out).manifest["synth"]["n"] == 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]  # no temporaries left


@pytest.mark.parametrize(
    "args",
    [
        ["--n", "3"],
        ["--n", "-1"],
        ["--size", "12"],
        ["--size", "4096"],
        ["--seed", "-1"],
        ["--test-fraction", "1"],
        ["--test-fraction", "nan"],
    ],
    ids=lambda a: " ".join(a),
)
def test_synth_bad_arguments_are_one_line(args, tmp_path, capsys) -> None:
    (tmp_path / "beside.txt").write_text("keep\n")
    assert_refused(capsys, ["data", "synth", "--out", str(tmp_path / "d"), *args], tmp_path)


def test_pixels_are_pinned(tmp_path) -> None:
    """The pictures themselves: a refactor of the painter must not move a single pixel (bump
    SYNTH_VERSION and these hashes when a change to the pictures is meant)."""
    h = hashlib.sha256()
    for size in (8, 32, 64):
        for i in range(40):
            h.update(render_index(3, i, size)[0].tobytes())
    assert h.hexdigest() == "93e8c70b5e845470cb99c132d83f3960bf6d1bc63f758088a66c0e6adab9891d"
    ds = synthesize(25, 16, tmp_path / "d", seed=2, progress=False)
    assert ds.content_hash == "67aa5e38fb25597ee18873b8a36e5f4a43b6fec92e3fe3df23295d40f2528d2b"
