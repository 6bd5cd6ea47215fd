"""The report's judge: an RBF support-vector classifier on raw pixels, and its (C, gamma) grid.

Features are the pixels scaled to [0, 1] (``x / 255``) and flattened, exactly as the report did;
its grid and best setting (C=100, gamma=0.01) are the defaults here. ``standardize=True`` z-scores
every pixel first (scikit-learn ``StandardScaler`` fitted on train). That changes the scale of the
squared distances the RBF kernel sees (roughly by 1 / pixel variance, about 15x for photos), so a
numeric gamma tuned without it means something else with it; ``gamma="scale"`` adapts to either.

Saved with skops (no pickle); loading accepts only the scikit-learn and numpy types listed in
:data:`TRUSTED_TYPES` and refuses any file that mentions another.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import skops.io as sio
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from diffscape.errors import DiffscapeError
from diffscape.judge.data import check_images

Gamma = float | str  # a number, or "scale" (1 / (n_features * X.var())) as in scikit-learn

# What a saved SVC judge may contain. skops already trusts most scikit-learn and numpy types by
# default; checking against our own short list as well means a judge file holding anything else
# (another estimator, a function, a custom class) is refused before it is loaded.
TRUSTED_TYPES = frozenset(
    {
        "sklearn.svm._classes.SVC",
        "sklearn.pipeline.Pipeline",
        "sklearn.preprocessing._data.StandardScaler",
        "numpy.ndarray",
        "numpy.dtype",
        "numpy.float64",
        "numpy.int64",
        "numpy.int32",
        "builtins.dict",
        "builtins.list",
        "builtins.tuple",
        "builtins.str",
        "builtins.int",
        "builtins.float",
        "builtins.bool",
    }
)


@dataclass(frozen=True)
class SVCSettings:
    C: float = 100.0  # RBF SVC regularisation; the report's best
    gamma: Gamma = 0.01  # RBF width on x/255 pixels; the report's best
    standardize: bool = False  # z-score each pixel before the SVC (see the module docstring)
    grid_C: tuple[float, ...] = (1.0, 10.0, 100.0)  # the report's grid
    grid_gamma: tuple[Gamma, ...] = ("scale", 0.001, 0.01, 0.1)  # the report's grid


def features(images: np.ndarray) -> np.ndarray:
    """uint8 (N, 3, H, W) -> float32 (N, 3*H*W) in [0, 1]."""
    images = check_images(images)
    return images.reshape(len(images), -1).astype(np.float32) / 255.0


def make_svc(C: float, gamma: Gamma, standardize: bool) -> SVC | Pipeline:
    svc = SVC(C=C, gamma=gamma, kernel="rbf")
    return make_pipeline(StandardScaler(), svc) if standardize else svc


def accuracy(model: SVC | Pipeline, x: np.ndarray | None, y: np.ndarray | None) -> float | None:
    if x is None or y is None or len(x) == 0:
        return None
    return float((model.predict(x) == y).mean())


@dataclass(frozen=True)
class GridRow:
    C: float
    gamma: Gamma
    train: float
    val: float
    test: float | None  # shown as in the report; never used for selection
    fit_seconds: float


def fit_grid(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    x_test: np.ndarray | None,
    y_test: np.ndarray | None,
    settings: SVCSettings,
    on_row: Callable[[GridRow], None] | None = None,
) -> tuple[SVC | Pipeline, list[GridRow], GridRow]:
    """Fit one SVC per (C, gamma) on train and pick the best validation accuracy (first wins
    ties, so the smaller C and the grid's earlier gamma). Inputs are :func:`features`."""
    best_model: SVC | Pipeline | None = None
    best_row: GridRow | None = None
    rows: list[GridRow] = []
    for C in settings.grid_C:
        for gamma in settings.grid_gamma:
            start = time.perf_counter()
            model = make_svc(C, gamma, settings.standardize).fit(x_train, y_train)
            seconds = time.perf_counter() - start
            row = GridRow(
                C=C,
                gamma=gamma,
                train=accuracy(model, x_train, y_train),  # type: ignore[arg-type]
                val=accuracy(model, x_val, y_val),  # type: ignore[arg-type]
                test=accuracy(model, x_test, y_test),
                fit_seconds=seconds,
            )
            rows.append(row)
            if on_row:
                on_row(row)
            if best_row is None or row.val > best_row.val:
                best_model, best_row = model, row
    assert best_model is not None and best_row is not None, "empty grid"
    return best_model, rows, best_row


def format_grid(rows: list[GridRow], best: GridRow | None = None) -> str:
    """The report's table: one row per (C, gamma) with train / val / test accuracy (%)."""
    lines = [f"{'C':>7} {'gamma':>7} {'train':>7} {'val':>7} {'test':>7} {'fit s':>6}"]
    for r in rows:
        test = f"{100 * r.test:6.1f}%" if r.test is not None else f"{'-':>7}"
        mark = "  <- best val" if best is not None and r == best else ""
        lines.append(
            f"{r.C:>7g} {str(r.gamma):>7} {100 * r.train:6.1f}% {100 * r.val:6.1f}% {test} "
            f"{r.fit_seconds:6.1f}{mark}"
        )
    return "\n".join(lines)


def save_svc(model: SVC | Pipeline, path: Path) -> None:
    sio.dump(model, path)


def load_svc(path: Path) -> SVC | Pipeline:
    """Load a skops file, refusing any type outside :data:`TRUSTED_TYPES` (never unpickles)."""
    untrusted = sio.get_untrusted_types(file=path)
    refused = sorted(set(untrusted) - TRUSTED_TYPES)
    if refused:
        raise DiffscapeError(
            f"{path} contains types a diffscape judge never holds: {', '.join(refused)}; "
            "refusing to load it. Train the judge again with `diffscape judge train`."
        )
    model = sio.load(path, trusted=list(untrusted))
    # skops trusts most scikit-learn types by default, so also check the shape of what loaded.
    steps = [s for _, s in model.steps] if isinstance(model, Pipeline) else [model]
    kinds = [type(s) for s in steps]
    if kinds not in ([SVC], [StandardScaler, SVC]):
        names = " + ".join(k.__name__ for k in kinds)
        raise DiffscapeError(f"{path} holds {names}, not an SVC judge")
    return model
