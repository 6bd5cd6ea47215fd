"""How judges are trained: the settings dataclasses and their bounds (the only place their
defaults are written; the CLI reads them from here). Light to import: no torch, no sklearn."""

from __future__ import annotations

import math
from dataclasses import dataclass

from diffscape.core.errors import DiffscapeError

VAL_FRACTION = 0.15  # share of each class held out for validation when there is no val split
MAX_BLOCKS = 8  # conv blocks; each halves the image, so 8 already needs 256 px
MAX_WIDTH = 4096  # channels of one block
MAX_CONVS = 8  # conv layers per block
MAX_CLASSES = 10_000  # outputs of a CNN judge
Gamma = float | str  # a number, or "scale" (1 / (n_features * X.var())) as in scikit-learn


class JudgeError(DiffscapeError, ValueError):
    """Data, settings or a judge file that a judge cannot be trained on, loaded from or scored
    with."""


@dataclass(frozen=True)
class CNNSettings:
    """How a CNN judge is built and trained (its architecture less what the data decides)."""

    widths: tuple[int, ...] = (32, 64, 128)  # channels per conv block; each block halves the size
    convs_per_block: int = 2  # 3x3 conv-BN-ReLU layers per block
    dropout: float = 0.2  # before the linear head
    max_epochs: int = 40  # upper bound; early stopping usually ends sooner
    patience_epochs: int = 6  # stop after this many epochs without a better validation score
    batch: int = 64  # images per optimizer step
    lr: float = 2e-3  # AdamW peak learning rate, cosine-decayed to 0 over max_epochs
    weight_decay: float = 0.05  # AdamW decoupled weight decay
    flip: bool = True  # random horizontal flips (never vertical: skies are up in landscapes)
    shift: float = 0.125  # random translation up to this fraction of the size (reflect-padded)
    jitter: float = 0.1  # brightness, contrast and saturation scaled by U(1 - j, 1 + j)

    def __post_init__(self) -> None:
        check_architecture(self.widths, self.convs_per_block, self.dropout)
        checks = {
            "epochs": (self.max_epochs, 1 <= self.max_epochs <= 10_000, "1 to 10000"),
            "patience": (self.patience_epochs, self.patience_epochs >= 1, "at least 1"),
            "batch": (self.batch, 2 <= self.batch <= 65_536, "2 to 65536"),
            "lr": (self.lr, math.isfinite(self.lr) and 0 < self.lr <= 10, "in (0, 10]"),
            "weight_decay": (self.weight_decay, 0 <= self.weight_decay < math.inf, ">= 0"),
            "shift": (self.shift, 0 <= self.shift < 0.5, "in [0, 0.5)"),
            "jitter": (self.jitter, 0 <= self.jitter < 1, "in [0, 1)"),
        }
        for name, (value, ok, bounds) in checks.items():
            if not ok:
                raise JudgeError(f"CNN {name} must be {bounds}, got {value!r}")


def check_architecture(widths: tuple[int, ...], convs: int, dropout: float) -> None:
    if not 1 <= len(widths) <= MAX_BLOCKS or not all(1 <= w <= MAX_WIDTH for w in widths):
        raise JudgeError(
            f"CNN widths must be 1 to {MAX_BLOCKS} blocks of 1 to {MAX_WIDTH} channels, "
            f"got {widths}"
        )
    if not 1 <= convs <= MAX_CONVS:
        raise JudgeError(f"CNN convs per block must be 1 to {MAX_CONVS}, got {convs}")
    if not 0 <= dropout < 1:
        raise JudgeError(f"CNN dropout must be in [0, 1), got {dropout}")


@dataclass(frozen=True)
class SVCSettings:
    C: float = 100.0  # RBF SVC regularisation; the report's best
    gamma: Gamma = 0.01  # RBF width on x/255 pixels; the report's best
    standardize: bool = False  # z-score each pixel first (see diffscape.judge.svc)
    grid_C: tuple[float, ...] = (1.0, 10.0, 100.0)  # the report's grid
    grid_gamma: tuple[Gamma, ...] = ("scale", 0.001, 0.01, 0.1)  # the report's grid

    def __post_init__(self) -> None:
        for c in (self.C, *self.grid_C):
            if not (isinstance(c, int | float) and math.isfinite(c) and c > 0):
                raise JudgeError(f"SVC C must be a positive number, got {c!r}")
        for g in (self.gamma, *self.grid_gamma):
            number = isinstance(g, int | float) and math.isfinite(g) and g > 0
            if g != "scale" and not number:
                raise JudgeError(f"SVC gamma must be a positive number or 'scale', got {g!r}")
        if not self.grid_C or not self.grid_gamma:
            raise JudgeError("the SVC grid needs at least one C and one gamma")
