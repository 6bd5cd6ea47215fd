"""Training: ``train()`` (:mod:`.loop`) over ``train_step()`` (:mod:`.step`, the one copy of the
step), set up by :mod:`.setup`, logged by :mod:`.logger`, resumed and saved by :mod:`.resume`."""

from diffscape.train.logger import TrainLogger, pace_note
from diffscape.train.loop import NonFiniteLossError, TrainingInterrupted, TrainOutcome, train
from diffscape.train.setup import (
    build_model,
    make_accelerator,
    measure_train_speed,
    prepare_config,
    resolve_precision,
    step_generator,
    step_parts,
)
from diffscape.train.step import StepParts, StepResult, lr_at, random_flip, train_step

__all__ = [
    "NonFiniteLossError",
    "StepParts",
    "StepResult",
    "TrainLogger",
    "TrainOutcome",
    "TrainingInterrupted",
    "build_model",
    "lr_at",
    "make_accelerator",
    "measure_train_speed",
    "pace_note",
    "prepare_config",
    "random_flip",
    "resolve_precision",
    "step_generator",
    "step_parts",
    "train",
    "train_step",
]
