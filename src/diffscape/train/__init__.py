from diffscape.train.loop import NonFiniteLossError, TrainingInterrupted, train
from diffscape.train.setup import (
    build_model,
    make_accelerator,
    measure_train_speed,
    prepare_config,
    step_parts,
)
from diffscape.train.step import random_flip, train_step

__all__ = [
    "NonFiniteLossError",
    "TrainingInterrupted",
    "build_model",
    "make_accelerator",
    "measure_train_speed",
    "prepare_config",
    "random_flip",
    "step_parts",
    "train",
    "train_step",
]
