"""Judges: training (SVC grid, CNN), saving and loading without pickle, scoring sample folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import skops.io as sio
import torch
from PIL import Image
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.svm import SVC, SVR

from diffscape.atomic import tmp_dir_beside
from diffscape.cli import main
from diffscape.data.dataset import (
    Dataset,
    SplitWriter,
    write_manifest_and_publish,
)
from diffscape.data.synth import synthesize
from diffscape.errors import DiffscapeError
from diffscape.imagefolder import save_png
from diffscape.judge import CNNSettings, SVCSettings, load_judge, score, train_judge
from diffscape.judge.cnn import CNNConfig, SmallCNN, logits
from diffscape.judge.data import stratified_holdout
from diffscape.judge.score import confusion_matrix, variety_warning
from diffscape.judge.store import write_cnn_judge, write_svc_judge
from diffscape.judge.svc import features, format_grid, load_svc

# Small and short, so the whole file runs in well under a minute on two busy cores; the synth
# classes are easy enough that this still reaches 100% on their test split.
FAST_CNN = CNNSettings(widths=(16, 32, 64), convs_per_block=1, max_epochs=8, patience_epochs=3)
QUIET = {"progress": False, "log": lambda _: None}


@pytest.fixture(scope="session")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    """1500 procedural landscapes at 32 px: 1200 train, 300 test, five classes."""
    return synthesize(1500, 32, tmp_path_factory.mktemp("synth") / "ds", seed=0, progress=False)


@pytest.fixture(scope="session")
def cnn_judge(synth: Dataset, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("judges") / "cnn"
    return train_judge(synth, "cnn", out, seed=0, cnn=FAST_CNN, **QUIET)


def write_dataset(out: Path, classes: list[str], splits: dict[str, tuple]) -> Dataset:
    """A dataset folder from in-memory (images, labels) per split."""
    tmp = tmp_dir_beside(out)
    labels = {}
    for split, (images, ys) in splits.items():
        w = SplitWriter(tmp, split, images.shape[-1])
        for im, y in zip(images, ys, strict=True):
            w.add(im, int(y))
        w.finish()
        labels[split] = w.labels
    return write_manifest_and_publish(
        tmp,
        out,
        classes=classes,
        size=int(next(iter(splits.values()))[0].shape[-1]),
        split_labels=labels,
        source="test",
        resize="none",
        skipped=[],
    )


def write_samples(root: Path, images: np.ndarray, folders: list[str]) -> Path:
    for i, (im, folder) in enumerate(zip(images, folders, strict=True)):
        save_png(root / folder / f"{i}.png", im)
    return root


# ---------------------------------------------------------------------------------------------
# Training


def test_cnn_judge_is_accurate_on_synth_test(cnn_judge, synth: Dataset) -> None:
    assert cnn_judge.accuracy["test"] >= 0.95
    info = json.loads((cnn_judge.judge_dir / "judge.json").read_text())
    assert info["kind"] == "cnn" and info["classes"] == synth.classes and info["size"] == 32
    assert info["accuracy"] == cnn_judge.accuracy
    assert info["dataset"]["n"] == {"train": 1020, "val": 180, "test": 300}
    assert info["dataset"]["val_source"] == "15% of train held out"
    assert info["model"]["config"]["widths"] == [16, 32, 64]
    assert len(info["model"]["normalisation"]["mean"]) == 3
    assert 1 <= info["best_epoch"] <= info["epochs_run"] <= FAST_CNN.max_epochs
    assert (cnn_judge.judge_dir / "model.safetensors").is_file()


def test_svc_grid_returns_and_prints_the_table(synth: Dataset, tmp_path: Path) -> None:
    # gamma=0.1 is left out: it fits and predicts 5x slower than the others on this data.
    settings = SVCSettings(grid_C=(1.0, 10.0), grid_gamma=("scale", 0.001))
    result = train_judge(synth, "svc", tmp_path / "svc", grid=True, svc=settings, **QUIET)
    rows = result.grid
    assert [(r.C, r.gamma) for r in rows] == [
        (1.0, "scale"),
        (1.0, 0.001),
        (10.0, "scale"),
        (10.0, 0.001),
    ]
    for r in rows:
        assert 0 <= r.train <= 1 and 0 <= r.val <= 1 and 0 <= r.test <= 1
    best = max(rows, key=lambda r: r.val)  # the first of equals, as the grid keeps it
    info = json.loads((tmp_path / "svc" / "judge.json").read_text())
    assert info["selected"] == {"C": best.C, "gamma": best.gamma, "by": "val accuracy"}
    assert result.accuracy == {"train": best.train, "val": best.val, "test": best.test}
    assert len(info["grid"]) == 4
    table = format_grid(rows, best).splitlines()
    assert table[0].split() == ["C", "gamma", "train", "val", "test", "fit", "s"]
    assert len(table) == 5 and table[1].split()[:2] == ["1", "scale"]
    assert sum("<- best val" in line for line in table) == 1
    # The judge it saved predicts what the table says it scores.
    judge = load_judge(tmp_path / "svc")
    pred = judge.predict(np.asarray(synth.images("test")))
    assert float((pred == synth.labels("test")).mean()) == best.test


def test_val_split_is_used_when_present(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (30, 3, 8, 8), dtype=np.uint8)
    y = np.arange(30) % 3
    ds = write_dataset(
        tmp_path / "ds", ["a", "b", "c"], {"train": (x[:20], y[:20]), "val": (x[20:], y[20:])}
    )
    result = train_judge(ds, "svc", tmp_path / "j", **QUIET)
    assert result.info["dataset"]["val_source"] == "val split"
    assert result.info["dataset"]["n"] == {"train": 20, "val": 10}
    assert result.accuracy["test"] is None


def test_train_refuses_to_overwrite_a_folder_that_is_not_a_judge(tmp_path: Path) -> None:
    x = np.random.default_rng(0).integers(0, 256, (12, 3, 8, 8), dtype=np.uint8)
    ds = write_dataset(tmp_path / "ds", ["a", "b"], {"train": (x, np.arange(12) % 2)})
    (tmp_path / "j").mkdir()
    (tmp_path / "j" / "notes.txt").write_text("mine")
    with pytest.raises(DiffscapeError, match="not a diffscape folder"):
        train_judge(ds, "svc", tmp_path / "j", **QUIET)
    assert (tmp_path / "j" / "notes.txt").read_text() == "mine"
    train_judge(ds, "svc", tmp_path / "j2", **QUIET)
    train_judge(ds, "svc", tmp_path / "j2", **QUIET)  # an older judge is replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "j", "j2"]


def test_stratified_holdout_keeps_every_class() -> None:
    labels = np.array([0] * 20 + [1] * 3 + [2])
    keep, held = stratified_holdout(labels, 0.15, np.random.default_rng(0))
    assert sorted(np.concatenate([keep, held]).tolist()) == list(range(24))
    assert np.bincount(labels[held], minlength=3).tolist() == [
        3,
        1,
        0,
    ]  # a lone image stays in train


# ---------------------------------------------------------------------------------------------
# Saving and loading


def test_cnn_round_trip_gives_identical_outputs(tmp_path: Path) -> None:
    config = CNNConfig(num_classes=4, size=16, widths=(8, 16), convs_per_block=1)
    torch.manual_seed(0)
    net = SmallCNN(config).eval()
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    tmp_path.joinpath("j").mkdir()
    info = {"classes": ["a", "b", "c", "d"], "size": 16}
    write_cnn_judge(tmp_path / "j", net.state_dict(), config, mean, std, info)
    judge = load_judge(tmp_path / "j")
    x = np.random.default_rng(0).integers(0, 256, (20, 3, 16, 16), dtype=np.uint8)
    assert torch.equal(logits(judge.net, judge.mean, judge.std, x), logits(net, mean, std, x))
    assert judge.kind == "cnn" and judge.classes == ["a", "b", "c", "d"] and judge.size == 16


def test_trained_judges_reload_with_their_recorded_accuracy(cnn_judge, synth: Dataset) -> None:
    judge = load_judge(cnn_judge.judge_dir)
    x, y = np.asarray(synth.images("test")), np.asarray(synth.labels("test"))
    pred = judge.predict(x)
    assert pred.dtype == np.int64 and pred.shape == (300,)
    assert float((pred == y).mean()) == cnn_judge.accuracy["test"]
    # Another size is resized to the judge's (PIL bicubic): 64 px copies of 32 px images.
    big = np.repeat(np.repeat(x, 2, axis=2), 2, axis=3)
    assert float((judge.predict(big) == y).mean()) >= 0.9


def test_svc_round_trip_gives_identical_decisions(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (40, 3, 8, 8), dtype=np.uint8)
    y = np.arange(40) % 2
    model = SVC(C=10.0, gamma="scale").fit(features(x), y)
    tmp_path.joinpath("j").mkdir()
    write_svc_judge(tmp_path / "j", model, {"classes": ["a", "b"], "size": 8})
    judge = load_judge(tmp_path / "j")
    np.testing.assert_array_equal(
        judge.model.decision_function(features(x)), model.decision_function(features(x))
    )
    np.testing.assert_array_equal(judge.predict(x), model.predict(features(x)))


class Sneaky(ClassifierMixin, BaseEstimator):
    """Stands for any type a judge file should never hold."""

    def fit(self, x, y):
        return self


def test_skops_load_refuses_untrusted_types(tmp_path: Path) -> None:
    x, y = np.zeros((4, 2)), np.array([0, 1, 0, 1])
    sio.dump(make_pipeline(Sneaky()).fit(x, y), tmp_path / "sneaky.skops")
    with pytest.raises(DiffscapeError, match=r"test_judge\.Sneaky"):
        load_svc(tmp_path / "sneaky.skops")
    # skops trusts most scikit-learn types by itself; a judge still has to be an SVC.
    sio.dump(SVR().fit(x, y), tmp_path / "svr.skops")
    assert sio.get_untrusted_types(file=tmp_path / "svr.skops") == []
    with pytest.raises(DiffscapeError, match="holds SVR, not an SVC judge"):
        load_svc(tmp_path / "svr.skops")
    # Anything else outside the short list is refused before loading.
    sio.dump(KNeighborsClassifier(1).fit(x, y), tmp_path / "knn.skops")
    with pytest.raises(DiffscapeError, match="KDTree"):
        load_svc(tmp_path / "knn.skops")


# ---------------------------------------------------------------------------------------------
# Scoring


def test_score_counts_misplaced_images_exactly(cnn_judge, synth: Dataset, tmp_path: Path) -> None:
    judge = load_judge(cnn_judge.judge_dir)
    x, y = np.asarray(synth.images("test")), np.asarray(synth.labels("test"))
    right = np.flatnonzero(judge.predict(x) == y)[:100]  # images the judge is known to get right
    x, y = x[right], y[right]
    classes = synth.classes
    # Every fifth image goes into the next class's folder: the judge must disagree with exactly those.
    wrong = np.arange(len(y)) % 5 == 0
    requested = np.where(wrong, (y + 1) % 5, y)
    samples = write_samples(tmp_path / "samples", x, [classes[c] for c in requested])

    result = score(cnn_judge.judge_dir, samples)
    assert result["n"] == 100
    assert result["accuracy"] == pytest.approx(1 - wrong.mean())
    matrix = json.loads((samples / "confusion.json").read_text())
    assert matrix["classes"] == classes
    np.testing.assert_array_equal(matrix["matrix"], confusion_matrix(requested, y, 5))
    for c, name in enumerate(classes):
        mine = requested == c
        assert result["per_class"][name]["n"] == mine.sum()
        assert result["per_class"][name]["accuracy"] == pytest.approx((y[mine] == c).mean())
    assert result["real"]["accuracy"] == cnn_judge.accuracy["test"]
    assert result["real"]["source"].startswith("judge.json")
    assert json.loads((samples / "accuracy.json").read_text()) == json.loads(json.dumps(result))
    with Image.open(samples / "confusion.png") as im:
        assert im.format == "PNG" and min(im.size) > 200


def test_score_warns_when_samples_beat_real_accuracy(
    cnn_judge, synth: Dataset, tmp_path: Path
) -> None:
    x, y = np.asarray(synth.images("test"))[:50], np.asarray(synth.labels("test"))[:50]
    samples = write_samples(tmp_path / "samples", x, [synth.classes[c] for c in y])
    # "Real" images whose labels are all shifted by one class: the judge scores ~0% on them.
    shifted = write_dataset(tmp_path / "shifted", synth.classes, {"test": (x, (y + 1) % 5)})
    result = score(cnn_judge.judge_dir, samples, real=str(shifted.root), out=tmp_path / "out")
    assert result["accuracy"] >= 0.95
    assert result["real"]["accuracy"] <= 0.1 and result["real"]["n"] == 50
    assert "less varied" in result["warning"]
    assert (tmp_path / "out" / "confusion.png").is_file()
    assert not (samples / "accuracy.json").exists()

    assert variety_warning(0.80, 0.75) is None
    assert variety_warning(0.90, 0.75) is not None
    assert variety_warning(0.90, None) is None


def test_score_refuses_unknown_classes_by_name(cnn_judge, tmp_path: Path) -> None:
    im = np.zeros((3, 3, 32, 32), np.uint8)
    samples = write_samples(tmp_path / "s", im, ["Forest", "Volcano", "Lagoon"])
    with pytest.raises(DiffscapeError, match="Lagoon, Volcano"):
        score(cnn_judge.judge_dir, samples)
    loose = tmp_path / "loose"
    save_png(loose / "0.png", im[0])
    with pytest.raises(DiffscapeError, match="without a class folder"):
        score(cnn_judge.judge_dir, loose)


def test_score_works_for_any_number_of_classes(tmp_path: Path) -> None:
    """A 12-class judge whose predictions are known (a fixed random net), scored from a folder."""
    classes = [f"class{i:02d}" for i in range(12)]
    config = CNNConfig(num_classes=12, size=16, widths=(8,), convs_per_block=1)
    torch.manual_seed(1)
    net = SmallCNN(config).eval()
    tmp_path.joinpath("j").mkdir()
    mean, std = [0.5] * 3, [0.25] * 3
    write_cnn_judge(
        tmp_path / "j", net.state_dict(), config, mean, std, {"classes": classes, "size": 16}
    )
    x = np.random.default_rng(0).integers(0, 256, (60, 3, 16, 16), dtype=np.uint8)
    pred = load_judge(tmp_path / "j").predict(x)
    requested = np.arange(60) % 12
    samples = write_samples(tmp_path / "s", x, [classes[c] for c in requested])
    result = score(tmp_path / "j", samples)
    assert result["accuracy"] == pytest.approx((pred == requested).mean())
    assert result["real"] is None
    m = np.asarray(json.loads((samples / "confusion.json").read_text())["matrix"])
    assert m.shape == (12, 12) and m.sum() == 60 and (m.sum(1) == 5).all()


# ---------------------------------------------------------------------------------------------
# Command line


def test_cli_train_and_score(synth: Dataset, cnn_judge, tmp_path: Path, capsys) -> None:
    # The report's full grid (12 fits) on a 200-image slice of synth, to stay fast.
    x, y = np.asarray(synth.images("train")), np.asarray(synth.labels("train"))
    small = write_dataset(
        tmp_path / "small",
        synth.classes,
        {"train": (x[:160], y[:160]), "test": (x[160:200], y[160:200])},
    )
    args = [
        "judge",
        "train",
        str(small.root),
        "--kind",
        "svc",
        "--grid",
        "--out",
        str(tmp_path / "svc"),
    ]
    assert main(args + ["--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "<- best val" in out and "svc judge ->" in out
    assert (
        len([line for line in out.splitlines() if line.lstrip().startswith(("1 ", "10 ", "100 "))])
        == 12
    )
    assert json.loads((tmp_path / "svc" / "judge.json").read_text())["kind"] == "svc"

    x, y = np.asarray(synth.images("test"))[:20], np.asarray(synth.labels("test"))[:20]
    samples = write_samples(tmp_path / "samples", x, [synth.classes[c] for c in y])
    assert (
        main(
            [
                "judge",
                "score",
                str(cnn_judge.judge_dir),
                str(samples),
                "--real",
                f"{synth.root}:test",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "all samples" in out and "real test" in out
    assert {p.name for p in samples.iterdir() if p.is_file()} == {
        "accuracy.json",
        "confusion.json",
        "confusion.png",
    }

    bad = write_samples(tmp_path / "bad", x[:1], ["Volcano"])
    assert main(["judge", "score", str(cnn_judge.judge_dir), str(bad)]) == 2
    assert "Volcano" in capsys.readouterr().err


@pytest.mark.parametrize("sub", ["train", "score", "cas"])
def test_cli_help_has_examples(sub: str, capsys) -> None:
    with pytest.raises(SystemExit):
        main(["judge", sub, "--help"])
    out = capsys.readouterr().out
    assert "examples:" in out and f"diffscape judge {sub} " in out
