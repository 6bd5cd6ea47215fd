"""Memorisation check: planted copies of training images among generated ones are flagged (in
pixels and in feature space), fresh images are not, the share is the planted fraction; the
closest-pairs picture. A tiny stand-in feature extractor keeps it fast (the real network's
features are compared with torch-fidelity's in tests/test_fid_standard.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from test_metrics_evaluate import TinyExtractor

from diffscape.core import layout
from diffscape.core.atomic import tmp_dir_beside
from diffscape.data.dataset import SplitWriter, write_manifest_and_publish
from diffscape.data.imagefolder import load_sample_folder
from diffscape.metrics import evaluate as E
from diffscape.metrics import memorisation as M
from diffscape.sample.folder import save_png_atomically as save_png
from diffscape.settings.sections import EvaluateSettings

SIZE = 16


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    monkeypatch.setenv("DIFFSCAPE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def smooth_images(n: int, seed: int, size: int = SIZE) -> np.ndarray:
    """Varied images with structure: a random 4x4 colour field, upsampled bilinearly."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 4, 4, generator=g) * 255
    up = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear")
    return up.round().clamp(0, 255).to(torch.uint8).numpy()


def noised(images: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(images + rng.normal(0, sigma, images.shape), 0, 255).astype(np.uint8)


def make_dataset(root, train: np.ndarray, test: np.ndarray):
    tmp = tmp_dir_beside(root)
    labels = {}
    for split, imgs in (("train", train), ("test", test)):
        w = SplitWriter(tmp, split, SIZE)
        for img in imgs:
            w.add(img, 0)
        w.finish()
        labels[split] = w.labels
    return write_manifest_and_publish(
        tmp, root, classes=["scene"], size=SIZE, split_labels=labels, source="test",
        resize="none", skipped=[],
    )  # fmt: skip


def planted(train: np.ndarray, n_fresh: int, copies: list[int], noisy: list[int]):
    """Generated images: fresh ones, then exact copies and lightly noised copies of train[i]."""
    fresh = smooth_images(n_fresh, seed=99)
    parts = [fresh, train[copies], noised(train[noisy], 4, seed=5)]
    return np.concatenate(parts), copies + noisy


# ---- the maths on arrays -------------------------------------------------------------------------


def test_nearest_finds_each_copy_and_excludes_self():
    train = smooth_images(50, seed=0)
    d, j = M.nearest(train[[3, 7]], train)
    assert list(j) == [3, 7] and d.max() < 1e-2
    d, j = M.nearest(train[[3, 7]], train, query_ids=np.array([3, 7]))
    assert j[0] != 3 and j[1] != 7 and d.min() > 1


def test_nearest_blocks_give_the_same_answer(monkeypatch):
    train, fake = smooth_images(40, seed=0), smooth_images(9, seed=1)
    probe = np.array([0, 5, 39])
    whole = M.nearest(fake, train)
    whole_self = M.nearest(train[probe], train, query_ids=probe)
    monkeypatch.setattr(M, "BLOCK_ENTRIES", 3 * SIZE * SIZE * 4)  # 4 rows per block
    for got, want in ((M.nearest(fake, train), whole), (
        M.nearest(train[probe], train, query_ids=probe), whole_self
    )):  # fmt: skip
        np.testing.assert_allclose(got[0], want[0], rtol=1e-4)
        np.testing.assert_array_equal(got[1], want[1])
    assert (whole_self[1] != probe).all()


@pytest.mark.parametrize("space", ["pixels", "features"])
def test_planted_copies_are_flagged_and_fresh_images_are_not(space):
    train = smooth_images(120, seed=0)
    fake, sources = planted(train, n_fresh=30, copies=[4, 50, 77], noisy=[10, 90, 119])
    if space == "features":
        ext = TinyExtractor(dim=32)
        train, fake = ext(torch.from_numpy(train))["2048"], ext(torch.from_numpy(fake))["2048"]
    r = M.near_copies(fake, train, threshold=M.NEAR_COPY)
    assert r["share"] == pytest.approx(6 / 36)  # exactly the planted fraction
    assert r["n_fake"] == 36 and r["n_train"] == 120
    assert 0.5 < r["median_ratio"] < 2  # fresh images sit at the typical distance
    flagged = {p[0]: p for p in r["pairs"] if p[2] < M.NEAR_COPY}
    assert sorted(flagged) == list(range(30, 36))
    assert [flagged[30 + i][1] for i in range(6)] == sources  # each copy finds its original
    assert [p[2] for p in r["pairs"]] == sorted(p[2] for p in r["pairs"])  # closest first
    assert len(r["pairs"]) == M.MAX_PAIRS


def test_fresh_images_of_the_same_distribution_are_not_copies():
    train, fresh = smooth_images(200, seed=0), smooth_images(50, seed=1)
    r = M.near_copies(fresh, train)
    assert r["share"] == 0.0 and 0.7 < r["median_ratio"] < 1.5


def test_duplicated_training_set_flags_only_exact_copies():
    base = smooth_images(10, seed=0)
    train = np.concatenate([base, base])  # every training image has a twin: typical distance 0
    r = M.near_copies(np.concatenate([base[:2], smooth_images(3, seed=1)]), train)
    assert r["train_nn_median"] == 0 and r["share"] == pytest.approx(2 / 5)
    assert list(r.pop("flags")) == [True, True, False, False, False]
    json.dumps(r, allow_nan=False)  # finite numbers only


# ---- through evaluate() --------------------------------------------------------------------------


def fake_folder(root, images: np.ndarray):
    for i, img in enumerate(images):
        save_png(root / "scene" / layout.sample_name(i), img)
    return load_sample_folder(root)


@pytest.mark.parametrize("real_split", ["train", "test"])
def test_evaluate_records_memorisation_with_global_indices(tmp_path, real_split):
    train = smooth_images(60, seed=0)
    ds = make_dataset(tmp_path / "ds", train, smooth_images(20, seed=3))
    fake_imgs, sources = planted(train, n_fresh=14, copies=[2, 33], noisy=[41, 59])
    fake = fake_folder(tmp_path / "s", fake_imgs)
    s = EvaluateSettings(n=18, per_class=False, near_copy=0.5)
    r = E.evaluate((ds, real_split), fake, s, extractor=TinyExtractor(dim=32), progress=False)
    m = r["memorisation"]
    assert m["train_source"] == ("real-features" if real_split == "train" else "train-split")
    assert m["n_fake"] == 18 and m["n_train"] == 60 and m["pixel_n_train"] == 60
    assert m["share"] == m["pixel_share"] == m["any_share"] == pytest.approx(4 / 18)
    for key in ("pairs", "pixel_pairs"):
        copies = sorted((f, t) for f, t, ratio in m[key] if ratio < 0.5)
        assert copies == list(zip(range(14, 18), sources, strict=True))
    text = E.format_summary(r)
    assert "22.2% near-copies of training images" in text and "pixels 22.2%" in text
    json.dumps(r, allow_nan=False)


def test_evaluate_subsets_map_back_to_the_whole_arrays(tmp_path):
    train = smooth_images(40, seed=0)
    ds = make_dataset(tmp_path / "ds", train, smooth_images(8, seed=3))
    fake_imgs, sources = planted(train, n_fresh=20, copies=[5, 6, 7], noisy=[])
    fake = fake_folder(tmp_path / "s", fake_imgs)
    s = EvaluateSettings(n=12, n_real=30, per_class=False, seed=1)
    r = E.evaluate((ds, "train"), fake, s, extractor=TinyExtractor(dim=32), progress=False)
    m = r["memorisation"]
    assert m["n_fake"] == 12 and m["n_train"] == 30 and m["pixel_n_train"] == 40
    for f, t, ratio in m["pixel_pairs"]:  # indices into the whole arrays: pixels agree
        d = np.abs(fake_imgs[f].astype(int) - train[t].astype(int)).sum()
        assert (d == 0) == (ratio < 1e-3)
        if f >= 20:
            assert t == sources[f - 20]


def test_other_image_size_skips_the_pixel_check_and_says_why(tmp_path):
    ds = make_dataset(tmp_path / "ds", smooth_images(10, seed=0), smooth_images(4, seed=1))
    fake = fake_folder(tmp_path / "s", smooth_images(5, seed=2, size=8))
    r = E.evaluate(
        (ds, "train"), fake, EvaluateSettings(n=5, per_class=False),
        extractor=TinyExtractor(), progress=False,
    )  # fmt: skip
    m = r["memorisation"]
    assert m["pixel_share"] is None and "differ" in m["pixel_unavailable"]
    assert m["share"] is not None
    assert "pixels: generated images" in E.format_summary(r)


def test_memorisation_off_records_nothing(tmp_path):
    ds = make_dataset(tmp_path / "ds", smooth_images(10, seed=0), smooth_images(4, seed=1))
    fake = fake_folder(tmp_path / "s", smooth_images(5, seed=2))
    s = EvaluateSettings(n=5, per_class=False, memorisation=False)
    r = E.evaluate((ds, "train"), fake, s, extractor=TinyExtractor(), progress=False)
    assert "memorisation" not in r
    assert "copies" not in E.format_summary(r)


@pytest.mark.parametrize("value", [0, -1, 11, float("nan"), True, "zero"])
def test_near_copy_out_of_range_is_refused(value):
    with pytest.raises(E.DiffscapeError, match="near_copy"):
        EvaluateSettings(near_copy=value)


# ---- the picture ---------------------------------------------------------------------------------


def test_save_pairs_png_draws_the_closest_pairs(tmp_path):
    train = smooth_images(60, seed=0)
    ds = make_dataset(tmp_path / "ds", train, smooth_images(8, seed=3))
    fake_imgs, _ = planted(train, n_fresh=10, copies=[2, 3], noisy=[4])
    fake = fake_folder(tmp_path / "s", fake_imgs)
    s = EvaluateSettings(n=13, per_class=False)
    r = E.evaluate((ds, "train"), fake, s, extractor=TinyExtractor(dim=32), progress=False)
    path = M.save_pairs_png(fake, ds, r, tmp_path / layout.PAIRS_PNG)
    assert path == tmp_path / layout.PAIRS_PNG
    with Image.open(path) as img:
        assert img.format == "PNG"
        w, h = img.size
        rgb = np.asarray(img.convert("RGB"))
    assert w > M.MAX_PAIRS * M.CELL and h >= 2 * M.CELL
    # the first column is an exact copy: its two cells are the same pixels
    first = r["memorisation"]["pairs"][0]
    assert first[2] < 1e-3
    pad, x = 4, M.TITLE + 4
    above = rgb[pad : pad + M.CELL, x : x + M.CELL]
    below = rgb[2 * pad + M.CELL : 2 * pad + 2 * M.CELL, x : x + M.CELL]
    np.testing.assert_array_equal(above, below)
    second = rgb[pad : pad + M.CELL, x + M.CELL + 4 : x + 2 * M.CELL + 4]
    assert np.abs(second.astype(int) - above.astype(int)).mean() > 1  # another image
    merged = M._pairs(r["memorisation"])
    assert len({p[:2] for p in merged}) == len(merged)  # each pair once, closest first
    assert [p[2] for p in merged] == sorted(p[2] for p in merged)
    assert {p[3] for p in merged} == {"inc", "px"}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_save_pairs_png_without_a_record_writes_nothing(tmp_path):
    imgs = smooth_images(2, seed=0)
    assert M.save_pairs_png(imgs, imgs, {"memorisation": None}, tmp_path / "x.png") is None
    assert M.save_pairs_png(imgs, imgs, {"fid": 3.0}, tmp_path / "x.png") is None
    assert not (tmp_path / "x.png").exists()
