"""Checkpoints (:mod:`.save`, :mod:`.verify`, :mod:`.load`). ``RUN/checkpoints/step-N/`` holds

- ``model/`` and ``ema/``: diffusers ``UNet2DModel`` folders (``config.json`` + safetensors),
  loadable with ``UNet2DModel.from_pretrained``;
- ``optimizer.safetensors`` + ``optimizer.json``: AdamW tensors and its hyperparameters;
- ``rng.safetensors``: torch CPU/CUDA RNG states and every noise generator's state;
- ``state.json``: step, consecutive bad steps, numpy/python RNG states, versions;
- ``config.json``: the run's ``RunConfig``; ``run.json``: class names and the dataset's identity;
- ``COMPLETE``: written last, JSON listing every other file with its size and sha256. A folder
  without it is never read; one whose files do not match it is damaged and skipped.
"""

from diffscape.checkpoint.load import (
    TrainingState,
    latest_checkpoint,
    list_checkpoints,
    load_training_state,
    read_checkpoint_config,
    resolve_checkpoint,
)
from diffscape.checkpoint.save import prune_checkpoints, save_checkpoint
from diffscape.checkpoint.verify import CheckpointError, checkpoint_problem, write_marker

__all__ = [
    "CheckpointError",
    "TrainingState",
    "checkpoint_problem",
    "latest_checkpoint",
    "list_checkpoints",
    "load_training_state",
    "prune_checkpoints",
    "read_checkpoint_config",
    "resolve_checkpoint",
    "save_checkpoint",
    "write_marker",
]
