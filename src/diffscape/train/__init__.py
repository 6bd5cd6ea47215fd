from diffscape.train.logger import pace_note
from diffscape.train.loop import NonFiniteLossError, TrainingInterrupted, train
from diffscape.train.setup import (
    build_model,
    make_accelerator,
    measure_train_speed,
    prepare_config,
    resolve_precision,
    step_generator,
    step_parts,
)
from diffscape.train.step import lr_at, random_flip, train_step

__all__ = [
    "NonFiniteLossError",
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
