"""Classification Accuracy Score (Ravuri & Vinyals, "Classification Accuracy Score for
Conditional Generative Models", NeurIPS 2019).

Train a classifier on generated images only (labelled by the class they were requested as) and
measure it on real test images. It rewards samples that are both right for their class and as
varied as the real data, which a judge trained on real images cannot see: a model that draws one
perfect forest per class fools a judge but teaches a classifier little. The same CNN trained on
an equal number of real training images (the same count per class) is the ceiling to read it by;
chance is 1 / classes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from diffscape.core.atomic import write_json
from diffscape.core.layout import CAS_JSON, check_files_in
from diffscape.data.dataset import Dataset, parse_dataset_spec
from diffscape.judge.cnn import fit_cnn
from diffscape.judge.data import JudgeError, load_requested, stratified_holdout
from diffscape.judge.score import confusion_matrix, per_class_accuracy
from diffscape.settings.sections import JUDGE_VAL_FRACTION, CNNSettings


def matched_real_subset(
    y_real: np.ndarray, counts: np.ndarray, classes: list[str], rng: np.random.Generator
) -> tuple[np.ndarray, list[str]]:
    """Indices of a seeded random subset of real images with ``counts[c]`` images of class c
    (all of them when there are fewer), plus a note for each class that fell short."""
    chosen: list[np.ndarray] = []
    short: list[str] = []
    for c, want in enumerate(counts):
        idx = np.flatnonzero(y_real == c)
        if len(idx) < want:
            short.append(f"{classes[c]}: {len(idx)} real images for {want} generated")
        chosen.append(rng.permutation(idx)[: int(want)])
    return np.sort(np.concatenate(chosen)), short


def _open(dataset: Dataset | str) -> tuple[Dataset, str]:
    """The real dataset and the held-out split CAS is scored on (default test)."""
    if isinstance(dataset, Dataset):
        ds, split = dataset, "test"
        ds.count(split)  # a clear error when there is no test split
    else:
        ds, split = parse_dataset_spec(str(dataset), default_split="test")
    if split == "train":
        raise JudgeError("CAS scores on real held-out images; pass DATASET:test (or :val)")
    return ds, split


def _train_and_test(
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    classes: list[str],
    name: str,
    settings: CNNSettings,
    seed: int,
    val_fraction: float,
    progress: bool,
) -> dict[str, Any]:
    """Train the CNN on ``train``, early-stopped on a held-out part of it; score on ``test``."""
    (x, y), (x_test, y_test) = train, test
    keep, held = stratified_holdout(y, val_fraction, np.random.default_rng(seed))
    # The same seed for both sources, so the two CNNs differ only in their training images.
    gen = torch.Generator().manual_seed(seed)
    trained = fit_cnn(
        (x[keep], y[keep]), (x[held], y[held]), len(classes), settings, gen, progress, f"cas {name}"
    )
    matrix = confusion_matrix(y_test, trained.predict(x_test), len(classes))
    return {
        "accuracy": float(np.trace(matrix) / max(1, len(y_test))),
        "per_class": per_class_accuracy(matrix, classes),
        "confusion": matrix.tolist(),
        "n_train": int(len(keep)),
        "n_val": int(len(held)),
        "best_epoch": trained.best_epoch,
    }


def cas(
    samples_dir: str | os.PathLike[str],
    dataset: Dataset | str,
    *,
    out: str | os.PathLike[str] | None = None,
    seed: int = 0,
    val_fraction: float = JUDGE_VAL_FRACTION,
    settings: CNNSettings | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    overwrite: bool = False,
) -> dict[str, Any]:
    """CAS of ``samples_dir`` against ``dataset`` (``DIR`` or ``DIR:split``; scored on the test
    split by default, the real baseline drawn from train). Early stopping uses ``val_fraction`` of
    each training set (generated or real), never the test images. Writes cas.json into ``out``
    (default ``samples_dir``: a new file, or ours with ``overwrite``) and returns what it holds."""
    out_dir = check_files_in(out or samples_dir, {CAS_JSON: "cas"}, overwrite=overwrite)
    settings = settings or CNNSettings()
    if not 0 < val_fraction < 1:
        raise JudgeError(f"--val-fraction must be in (0, 1), got {val_fraction}")
    ds, split = _open(dataset)
    classes = ds.classes
    x_gen, y_gen = load_requested(samples_dir, classes, ds.size, "CAS")
    test = ds.read_images(split, copies=0.0), np.asarray(ds.labels(split), np.int64)

    y_train_all = np.asarray(ds.labels("train"), np.int64)
    counts = np.bincount(y_gen, minlength=len(classes))
    real_idx, short = matched_real_subset(y_train_all, counts, classes, np.random.default_rng(seed))
    x_real = np.asarray(ds.images("train")[real_idx])  # only these rows of the memory map
    log(
        f"CAS: {len(y_gen)} generated vs {len(real_idx)} real training images, "
        f"scored on {len(test[1])} real {split} images ({len(classes)} classes, chance "
        f"{100 / len(classes):.0f}%)"
    )

    def run(x: np.ndarray, y: np.ndarray, name: str) -> dict[str, Any]:
        return _train_and_test((x, y), test, classes, name, settings, seed, val_fraction, progress)

    generated = run(x_gen, y_gen, "generated")
    real = run(x_real, y_train_all[real_idx], "real")
    result: dict[str, Any] = {
        "samples": str(samples_dir),
        "dataset": str(ds.root),
        "test_split": split,
        "classes": classes,
        "n_test": len(test[1]),
        "cas": generated["accuracy"],
        "real_baseline": real["accuracy"],
        "ratio": generated["accuracy"] / real["accuracy"] if real["accuracy"] else None,
        "chance": 1 / len(classes),
        "generated": generated,
        "real": real,
        "real_shortfall": short,
        "seed": seed,
        "val_fraction": val_fraction,
        "settings": settings.to_dict(),
    }
    write_json(out_dir / CAS_JSON, result)
    return result


def format_cas(result: dict[str, Any]) -> str:
    lines = [f"{'class':<16} {'generated':>10} {'real':>8}"]
    gen, real = result["generated"]["per_class"], result["real"]["per_class"]
    for name in result["classes"]:
        if name in real or name in gen:
            g = gen.get(name, {}).get("accuracy")
            r = real.get(name, {}).get("accuracy")
            lines.append(f"{name:<16} {_pct(g):>10} {_pct(r):>8}")
    lines.append(
        f"{'all (CAS)':<16} {_pct(result['cas']):>10} {_pct(result['real_baseline']):>8}"
        f"   on {result['n_test']} real {result['test_split']} images; chance "
        f"{_pct(result['chance'])}"
    )
    lines.append(
        f"trained on {result['generated']['n_train']} + {result['generated']['n_val']} (val) "
        f"generated vs {result['real']['n_train']} + {result['real']['n_val']} (val) real images"
    )
    return "\n".join(lines)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"
