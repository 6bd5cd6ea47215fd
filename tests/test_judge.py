"""Judges: training (SVC grid, CNN), saving and loading without pickle, scoring sample folders."""

from __future__ import annotations

import io
import json
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import skops.io as sio
import torch
from fixtures_data import assert_refused
from PIL import Image
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.svm import SVC, SVR

from diffscape.cli import main
from diffscape.core.atomic import tmp_dir_beside
from diffscape.core.errors import DiffscapeError
from diffscape.data.dataset import Dataset, SplitWriter, write_manifest_and_publish
from diffscape.data.synth import synthesize
from diffscape.judge.cnn import CNNConfig, CNNModel, SmallCNN
from diffscape.judge.data import JudgeError, stratified_holdout
from diffscape.judge.score import confusion_matrix, score, variety_warning
from diffscape.judge.store import load_judge, write_judge
from diffscape.judge.svc import features, format_grid, load_svc
from diffscape.judge.train import train_judge
from diffscape.sample.folder import save_png_atomically as save_png
from diffscape.settings.engine import value_text
from diffscape.settings.sections import CNNSettings, SVCSettings

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
    with pytest.raises(DiffscapeError, match="--overwrite"):  # an older judge is kept ...
        train_judge(ds, "svc", tmp_path / "j2", **QUIET)
    train_judge(ds, "svc", tmp_path / "j2", **QUIET, overwrite=True)  # ... or replaced
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
    info = {"classes": ["a", "b", "c", "d"], "size": 16}
    write_judge(tmp_path / "j", CNNModel(net, mean, std), info)
    judge = load_judge(tmp_path / "j")
    x = np.random.default_rng(0).integers(0, 256, (20, 3, 16, 16), dtype=np.uint8)
    assert torch.equal(judge.model.logits(x), CNNModel(net, mean, std).logits(x))
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
    write_judge(tmp_path / "j", model, {"classes": ["a", "b"], "size": 8})
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
    mean, std = [0.5] * 3, [0.25] * 3
    write_judge(tmp_path / "j", CNNModel(net, mean, std), {"classes": classes, "size": 16})
    x = np.random.default_rng(0).integers(0, 256, (60, 3, 16, 16), dtype=np.uint8)
    pred = load_judge(tmp_path / "j").predict(x)
    requested = np.arange(60) % 12
    samples = write_samples(tmp_path / "s", x, [classes[c] for c in requested])
    result = score(tmp_path / "j", samples)
    assert result["accuracy"] == pytest.approx((pred == requested).mean())
    assert result["real"] is None
    m = np.asarray(json.loads((samples / "confusion.json").read_text())["matrix"])
    assert m.shape == (12, 12) and m.sum() == 60 and (m.sum(1) == 5).all()


def test_score_draws_class_names_as_written_and_writes_all_files_or_none(
    tmp_path: Path, monkeypatch
) -> None:
    import diffscape.judge.score as S

    classes = ["$x^$", "50$ and 60$", "$x_1$"]  # mathtext would fail on the first
    config = CNNConfig(num_classes=3, size=16, widths=(8,), convs_per_block=1)
    model = CNNModel(SmallCNN(config), [0.5] * 3, [0.25] * 3)
    write_judge(tmp_path / "j", model, {"classes": classes, "size": 16})
    x = np.random.default_rng(0).integers(0, 256, (6, 3, 16, 16), dtype=np.uint8)
    samples = write_samples(tmp_path / "s", x, [classes[i % 3] for i in range(6)])
    score(tmp_path / "j", samples, out=tmp_path / "out")
    assert Image.open(tmp_path / "out" / "confusion.png").size[0] > 100
    assert json.loads((tmp_path / "out" / "accuracy.json").read_text())["n"] == 6

    def broken(*args):
        raise RuntimeError("the plot failed")

    monkeypatch.setattr(S, "plot_confusion", broken)
    with pytest.raises(RuntimeError):
        score(tmp_path / "j", samples, out=tmp_path / "none")
    assert not (tmp_path / "none").exists() or not any((tmp_path / "none").iterdir())


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


# ---------------------------------------------------------------------------------------------
# Hostile and careless input: one line, exit 2, nothing written

JUDGE_CLASSES = ["a", "b", "c"]


def small_svc_judge(root: Path) -> Path:
    x = np.random.default_rng(0).integers(0, 256, (30, 3, 8, 8), dtype=np.uint8)
    model = SVC(C=10.0, gamma="scale").fit(features(x), np.arange(30) % 3)
    write_judge(root, model, {"classes": JUDGE_CLASSES, "size": 8})
    return root


def small_cnn_judge(root: Path) -> Path:
    config = CNNConfig(num_classes=3, size=8, widths=(8,), convs_per_block=1)
    torch.manual_seed(0)
    model = CNNModel(SmallCNN(config), [0.5] * 3, [0.25] * 3)
    write_judge(root, model, {"classes": JUDGE_CLASSES, "size": 8})
    return root


def _info(**changes):
    """Change judge.json: keys are dotted paths (model.config.widths)."""

    def edit(judge: Path) -> None:
        info = json.loads((judge / "judge.json").read_text())
        for key, value in changes.items():
            *parents, last = key.split(".")
            target = info
            for part in parents:
                target = target[part]
            target[last] = value
        (judge / "judge.json").write_text(json.dumps(info))

    return edit


def _replace(name: str, data) -> object:
    def edit(judge: Path) -> None:
        path = judge / name
        path.write_bytes(data(path.read_bytes()) if callable(data) else data)

    return edit


def _skops_members(change) -> object:
    """Rewrite model.skops (a zip) with its members changed by ``change`` (a hand-made file)."""

    def edit(judge: Path) -> None:
        path = judge / "model.skops"
        with zipfile.ZipFile(path) as zin:
            members = {i.filename: zin.read(i) for i in zin.infolist()}
        change(members)
        with zipfile.ZipFile(path, "w") as zout:
            for name, data in members.items():
                zout.writestr(name, data)

    return edit


def _skops_schema(change) -> object:
    """Rewrite model.skops with its schema.json changed by ``change(schema, members)``."""

    def change_members(members: dict) -> None:
        schema = json.loads(members["schema.json"])
        change(schema, members)
        members["schema.json"] = json.dumps(schema).encode()

    return _skops_members(change_members)


def _json_node(value, node_id: int) -> dict:
    return {
        "__class__": type(value).__name__,
        "__module__": "builtins",
        "__loader__": "JsonNode",
        "content": json.dumps(value),
        "is_json": True,
        "__id__": node_id,
    }


def _ndarray_call(schema: dict, members: dict) -> None:
    """numpy.ndarray((10**11,)): every type in it is one skops trusts; loading it allocates
    745 GiB."""
    shape = {
        "__class__": "tuple",
        "__module__": "builtins",
        "__loader__": "TupleNode",
        "content": [_json_node(10**11, 9001)],
        "__id__": 9002,
    }
    attrs = schema["content"]
    attrs["content"]["evil"] = {
        "__class__": "ndarray",
        "__module__": "numpy",
        "__loader__": "ConstructorFromReduceNode",
        "content": shape,
        "__id__": 9003,
    }
    # skops pairs each key with a type from key_types (zip): one more, or the key is dropped.
    key_types = attrs["key_types"]["content"]
    key_types.append(dict(key_types[0], __id__=9004))


def _npy_header_bomb(schema: dict, members: dict) -> None:
    """An array member whose header promises (10**11,) float64 (745 GiB) and holds 16 bytes."""
    name = next(n for n in members if n.endswith(".npy"))
    header = io.BytesIO()
    spec = {"descr": "<f8", "fortran_order": False, "shape": (10**11,)}
    np.lib.format.write_array_header_1_0(header, spec)
    members[name] = header.getvalue() + b"\0" * 16


def _pickle_of_state(judge: Path) -> None:
    """A torch pickle (what torch.save writes) where the safetensors file belongs."""
    path = judge / "model.safetensors"
    state = SmallCNN(CNNConfig(num_classes=3, size=8, widths=(8,), convs_per_block=1))
    torch.save(state.state_dict(), path)


JUDGE_DAMAGE = {  # name: (judge kind, damage, what the line says)
    "judge.json not JSON": ("svc", _replace("judge.json", b'{"format": '), "not valid JSON"),
    "judge.json a list": ("svc", _replace("judge.json", b"[]"), "not a diffscape-judge"),
    "class ../../../X": ("svc", _info(classes=["a", "../../../X", "c"]), "class name"),
    "model file ../..": ("cnn", _info(**{"model.file": "../../../etc/passwd"}), "model file is"),
    "kind evil": ("svc", _info(kind="evil"), "unknown kind"),
    "size 10**6": ("cnn", _info(size=10**6), "size must be"),
    "svc: pickle": ("svc", _replace("model.skops", pickle.dumps(SVC())), "not a skops file"),
    "svc: garbage": ("svc", _replace("model.skops", os.urandom(4000)), "not a skops file"),
    "svc: empty": ("svc", _replace("model.skops", b""), "not a skops file"),
    "svc: ndarray((10**11,))": ("svc", _skops_schema(_ndarray_call), "ConstructorFromReduceNode"),
    "svc: .npy header 745 GiB": ("svc", _skops_schema(_npy_header_bomb), "claims float64"),
    "svc: schema garbage": (
        "svc",
        _skops_members(lambda m: m.update({"schema.json": b"{"})),
        "schema.json is damaged",
    ),
    "svc: other image size": ("svc", _info(size=16), "does not fit its judge.json"),
    "svc: fewer classes": ("svc", _info(classes=["a", "b"]), "does not fit its judge.json"),
    "cnn: torch pickle": ("cnn", _pickle_of_state, "not this judge's weights"),
    "cnn: garbage": (
        "cnn",
        _replace("model.safetensors", lambda b: os.urandom(len(b))),
        "not this",
    ),
    "cnn: truncated": (
        "cnn",
        _replace("model.safetensors", lambda b: b[: len(b) // 2]),
        "less than",
    ),
    "cnn: widths 10**6": ("cnn", _info(**{"model.config.widths": [10**6]}), "cnn.widths"),
    "cnn: 3 x 4096 wide": ("cnn", _info(**{"model.config.widths": [4096] * 3}), "less than"),
    "cnn: 7 classes": ("cnn", _info(**{"model.config.num_classes": 7}), "contradicts itself"),
    "cnn: std 0": ("cnn", _info(**{"model.normalisation.std": [0, 1, 1]}), "contradicts itself"),
    "cnn: config missing": ("cnn", _info(**{"model.config": {}}), "num_classes"),
}


@pytest.mark.parametrize("name", list(JUDGE_DAMAGE))
def test_damaged_or_hostile_judge_is_one_line(name: str, tmp_path: Path, capsys) -> None:
    kind, damage, message = JUDGE_DAMAGE[name]
    judge = (small_svc_judge if kind == "svc" else small_cnn_judge)(tmp_path / "judge")
    images = np.random.default_rng(1).integers(0, 256, (6, 3, 8, 8), dtype=np.uint8)
    samples = write_samples(tmp_path / "samples", images, JUDGE_CLASSES * 2)
    assert main(["judge", "score", str(judge), str(samples)]) == 0  # intact, it works
    for p in samples.glob("*.*"):
        p.unlink()
    damage(judge)
    err = assert_refused(capsys, ["judge", "score", str(judge), str(samples)], tmp_path)
    assert message in err
    with pytest.raises(JudgeError):
        load_judge(judge)


def tiny_dataset(root: Path, labels: list[int], classes: list[str] = JUDGE_CLASSES) -> Dataset:
    x = np.random.default_rng(0).integers(0, 256, (len(labels), 3, 8, 8), dtype=np.uint8)
    return write_dataset(root, classes, {"train": (x, np.asarray(labels))})


@pytest.mark.parametrize(
    "labels, kind, message",
    [
        ([0] * 12, "svc", "at least two"),
        ([1] * 12, "cnn", "at least two"),
        ([0, 1, 2], "svc", "held out for validation"),
        ([0, 1], "cnn", "held out for validation"),
    ],
    ids=["one class svc", "one class cnn", "one image each svc", "one image each cnn"],
)
def test_untrainable_data_is_one_line(labels, kind: str, message: str, tmp_path: Path, capsys):
    ds = tiny_dataset(tmp_path / "ds", labels)
    argv = ["judge", "train", str(ds.root), "--kind", kind, "--out", str(tmp_path / "j")]
    assert message in assert_refused(capsys, argv + ["--no-progress"], tmp_path)


@pytest.mark.parametrize(
    "args",
    [
        ["--epochs", "0"],
        ["--patience", "0"],
        ["--batch", "1"],
        ["--lr", "nan"],
        ["--lr", "-1"],
        ["--widths", "0"],
        ["--widths", "1000000"],
        ["--widths", "a,b"],
        ["--val-fraction", "0"],
        ["--val-fraction", "1.5"],
        ["--kind", "svc", "--gamma", "-1"],
        ["--kind", "svc", "--gamma", "nan"],
        ["--kind", "svc", "--C", "inf"],
        ["--kind", "svc", "--C", "0"],
        ["--size", "100000"],
        ["--grid"],
    ],
    ids=lambda a: " ".join(a),
)
def test_bad_train_arguments_are_one_line(args: list[str], tmp_path: Path, capsys) -> None:
    ds = tiny_dataset(tmp_path / "ds", [0, 1, 2] * 4)
    argv = ["judge", "train", str(ds.root), "--out", str(tmp_path / "j"), "--no-progress"]
    assert_refused(capsys, argv + args, tmp_path)


def _a_run(tmp_path: Path) -> Path:
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "run.json").write_text("{}\n")
    return tmp_path / "run"


@pytest.mark.parametrize(
    "make_out, message",
    [
        (lambda tmp: tmp / "ds", "is a dataset folder"),
        (_a_run, "is a run folder"),
        (lambda tmp: tmp / "ds" / "manifest.json", "is a file"),
    ],
    ids=["dataset", "run", "file"],
)
def test_train_out_follows_the_out_rule(make_out, message: str, tmp_path: Path, capsys) -> None:
    ds = tiny_dataset(tmp_path / "ds", [0, 1, 2] * 4)
    argv = ["judge", "train", str(ds.root), "--kind", "svc", "--out", str(make_out(tmp_path))]
    assert message in assert_refused(capsys, argv, tmp_path)


@pytest.mark.parametrize("kind", ["svc", "cnn"])
def test_train_refuses_data_that_would_not_fit_in_memory(
    kind: str, tmp_path: Path, capsys, monkeypatch
) -> None:
    import diffscape.data.memory

    ds = tiny_dataset(tmp_path / "ds", [0, 1, 2] * 4)
    monkeypatch.setattr(diffscape.data.memory, "available_bytes", lambda: 1_000)
    argv = ["judge", "train", str(ds.root), "--kind", kind, "--out", str(tmp_path / "j")]
    err = assert_refused(capsys, argv + ["--no-progress"], tmp_path)
    assert "needs about" in err and "--size" in err


def test_memory_estimate_lets_what_fits_through(tmp_path: Path, monkeypatch) -> None:
    import diffscape.data.memory

    ds = tiny_dataset(tmp_path / "ds", [0, 1, 2] * 4)
    # 12 images x 3 x 8 x 8 x (1 + 1 + 12) bytes = 32 kB for an SVC; 1 MB is plenty.
    monkeypatch.setattr(diffscape.data.memory, "available_bytes", lambda: 1_000_000)
    assert train_judge(ds, "svc", tmp_path / "j", **QUIET).kind == "svc"


def test_settings_defaults_are_the_clis(capsys) -> None:
    """The CLI's flags and defaults are generated from the settings, not written twice."""
    with pytest.raises(SystemExit):
        main(["judge", "train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for cls, renamed in ((CNNSettings, {"max_epochs": "epochs", "patience_epochs": "patience"}),
                         (SVCSettings, {})):  # fmt: skip
        for name, value in cls().to_dict().items():
            flag = "--" + renamed.get(name, name).replace("_", "-")
            assert flag in text and f"default: {value_text(value)}" in text, name
