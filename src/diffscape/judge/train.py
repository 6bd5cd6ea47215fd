"""``train_judge``: fit an SVC (optionally over the report's grid) or a small CNN on a dataset and
write a judge folder (see :mod:`diffscape.judge.store`).

Model selection uses validation images only: the dataset's val split, or a seeded stratified part
of train held out when there is none. The test split is scored at the end (and, for the SVC grid,
on every row, to print the report's table) but never chooses anything.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from sklearn.pipeline import Pipeline
from sklearn.svm import SVC

from diffscape.core.layout import check_out
from diffscape.data.dataset import MAX_SIZE, SPLITS, Dataset, load_dataset
from diffscape.judge.cnn import TrainedCNN, fit_cnn
from diffscape.judge.data import JudgeError, Splits, accuracy, load_splits
from diffscape.judge.store import write_judge
from diffscape.judge.svc import GridRow, fit_grid
from diffscape.settings.sections import JUDGE_VAL_FRACTION, CNNSettings, SVCSettings

Kind = Literal["svc", "cnn"]


@dataclass(frozen=True)
class JudgeResult:
    judge_dir: Path
    kind: Kind
    accuracy: dict[str, float | None]  # train / val / test
    grid: list[GridRow] | None  # the SVC grid, one row per (C, gamma); None otherwise
    info: dict[str, Any]  # what was written to judge.json


def train_judge(
    dataset: Dataset | str | os.PathLike[str],
    kind: Kind,
    out: str | os.PathLike[str],
    *,
    grid: bool = False,
    seed: int = 0,
    size: int | None = None,
    val_fraction: float = JUDGE_VAL_FRACTION,
    svc: SVCSettings | None = None,
    cnn: CNNSettings | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    overwrite: bool = False,
) -> JudgeResult:
    """Train a judge of ``kind`` on ``dataset`` (resized to ``size``, default its own) into ``out``.

    ``grid`` (SVC only) searches ``svc.grid_C`` x ``svc.grid_gamma`` and keeps the best validation
    accuracy; without it the SVC uses ``svc.C`` and ``svc.gamma``. ``seed`` fixes the validation
    hold-out, the CNN's initialisation, data order and augmentation. Without a val split,
    ``val_fraction`` of each class of train is held out for validation.
    """
    ds = dataset if isinstance(dataset, Dataset) else load_dataset(dataset)
    size = size or ds.size
    svc, cnn = svc or SVCSettings(), cnn or CNNSettings()
    _check_options(kind, grid, val_fraction, size, cnn)
    out = check_out(out, "judge", overwrite=overwrite)  # before training, not after
    # The SVC works on float32 features, which scikit-learn copies to float64: 12 bytes a value.
    extra = 12 if kind == "svc" else 0
    data = load_splits(ds, size, val_fraction, np.random.default_rng(seed), extra)
    _check_trainable(ds, data)
    n = {split: len(y) for split, y in data.y.items()}
    log(
        f"judge {kind}: {ds.num_classes} classes at {size} px; train {n['train']}, "
        f"val {n['val']} ({data.val_source}), test {n.get('test', 0)}"
    )
    info: dict[str, Any] = {
        "classes": ds.classes,
        "size": size,
        "seed": seed,
        "dataset": {
            "path": str(ds.root),
            "content_hash": ds.content_hash,
            "size": ds.size,
            "n": n,
            "val_source": data.val_source,
        },
        "settings": (svc if kind == "svc" else cnn).to_dict(),
    }
    start = time.perf_counter()
    if kind == "svc":
        model, accuracy, rows = _train_svc(data, svc, grid, info, log)
    else:
        model, accuracy, rows = *_train_cnn(data, cnn, seed, info, progress), None
    info["train_seconds"] = round(time.perf_counter() - start, 1)
    info["accuracy"] = accuracy
    write_judge(out, model, info, overwrite)
    return JudgeResult(out, kind, accuracy, rows, info)


def _check_options(kind: str, grid: bool, val_fraction: float, size: int, cnn: CNNSettings) -> None:
    """The options that no settings model checks, each refused in one line before any work."""
    if grid and kind != "svc":
        raise JudgeError("--grid searches the SVC's (C, gamma); it applies to --kind svc only")
    if not 0 < val_fraction < 1:
        raise JudgeError(f"--val-fraction must be in (0, 1), got {val_fraction}")
    if kind == "cnn" and size < 2 ** len(cnn.widths):
        raise JudgeError(
            f"a {len(cnn.widths)}-block CNN halves the image {len(cnn.widths)} times; "
            f"use --size {2 ** len(cnn.widths)} or more (got {size})"
        )
    if not 1 <= size <= MAX_SIZE:
        raise JudgeError(f"--size must be 1 to {MAX_SIZE} pixels, got {size}")


def _check_trainable(ds: Dataset, data: Splits) -> None:
    """Two classes to tell apart and something to validate on, or one line saying so."""
    present = np.unique(data.y["train"])
    if len(present) < 2:
        names = ", ".join(ds.classes[c] for c in present) or "none"
        raise JudgeError(
            f"{ds.root}: the training images are of {len(present)} class ({names}); a judge "
            "tells classes apart, so it needs images of at least two"
        )
    if len(data.y["val"]) == 0:
        raise JudgeError(
            f"{ds.root}: no image can be held out for validation (every class has one "
            "training image); add images or a val split"
        )


def _train_svc(
    data: Splits,
    settings: SVCSettings,
    grid: bool,
    info: dict[str, Any],
    log: Callable[[str], None],
) -> tuple[SVC | Pipeline, dict[str, float | None], list[GridRow] | None]:
    if not grid:
        settings = settings.with_changes(grid_C=(settings.C,), grid_gamma=(settings.gamma,))

    def on_row(r: GridRow) -> None:
        test = "-" if r.test is None else f"{100 * r.test:.1f}%"
        log(
            f"  C={r.C:g} gamma={r.gamma}: train {100 * r.train:.1f}%, val {100 * r.val:.1f}%, "
            f"test {test} ({r.fit_seconds:.1f} s)"
        )

    model, rows, best = fit_grid(data, settings, on_row)
    info["selected"] = {"C": best.C, "gamma": best.gamma, "by": "val accuracy"}
    if grid:
        info["grid"] = [asdict(r) for r in rows]
    return model, {"train": best.train, "val": best.val, "test": best.test}, rows if grid else None


def _train_cnn(
    data: Splits, settings: CNNSettings, seed: int, info: dict[str, Any], progress: bool
) -> tuple[TrainedCNN, dict[str, float | None]]:
    x, y = data.x, data.y
    gen = torch.Generator().manual_seed(seed)
    train, val = (x["train"], y["train"]), (x["val"], y["val"])
    trained = fit_cnn(train, val, len(info["classes"]), settings, gen, progress, "judge cnn")
    info["best_epoch"] = trained.best_epoch
    info["epochs_run"] = len(trained.history)
    info["history"] = trained.history
    return trained, {s: accuracy(trained.predict, x.get(s), y.get(s)) for s in SPLITS}
