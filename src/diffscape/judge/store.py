"""The judge folder: ``judge.json`` plus the model, and loading it back without unpickling.

A judge folder holds

- ``judge.json``: format, kind (``svc`` or ``cnn``), classes (order = label indices), image size,
  accuracy on train / val / test, where validation came from, training settings, the dataset it
  was trained on; for a CNN also its architecture config and input normalisation;
- ``model.skops`` (SVC, loaded with a short list of trusted types) or ``model.safetensors`` (CNN).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import skops.io as sio
import torch
from safetensors.torch import load_file, save_file
from sklearn.pipeline import Pipeline
from sklearn.svm import SVC

from diffscape.core.atomic import publish_dir, tmp_dir_beside, write_json
from diffscape.core.layout import CNN_FILE, JUDGE_JSON, SVC_FILE, check_class_names, check_out
from diffscape.data.dataset import MAX_SIZE
from diffscape.data.memory import check_fits
from diffscape.judge.cnn import CNNConfig, CNNModel, SmallCNN
from diffscape.judge.data import JudgeError, resize_images
from diffscape.judge.svc import features, load_svc

FORMAT = "diffscape-judge"
FORMAT_VERSION = 1
MODEL_FILES = {"svc": SVC_FILE, "cnn": CNN_FILE}


@dataclass(frozen=True)
class Judge:
    """A loaded judge: what scoring needs, whatever its kind."""

    model: SVC | Pipeline | CNNModel
    classes: list[str]
    size: int
    info: dict[str, Any]  # the parsed judge.json

    @property
    def kind(self) -> str:
        return str(self.info["kind"])

    def predict(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, 3, H, W), any H = W -> int64 (N,) indices into ``classes``."""
        images = resize_images(images, self.size)
        if isinstance(self.model, CNNModel):
            return self.model.predict(images)
        if len(images) == 0:
            return np.empty(0, np.int64)
        return self.model.predict(features(images)).astype(np.int64)


def write_judge(
    out: Path, model: SVC | Pipeline | CNNModel, info: dict[str, Any], overwrite: bool = False
) -> None:
    """The judge folder ``out``: the model's file, then judge.json (``info`` with the kind and what
    loading needs), built beside it and moved into place once complete; an old judge is replaced
    only with ``overwrite``, and only if the rule still allows it (it may have changed while
    training)."""
    kind = "cnn" if isinstance(model, CNNModel) else "svc"
    described: dict[str, Any] = {"file": MODEL_FILES[kind]}
    tmp = tmp_dir_beside(out)
    try:
        if isinstance(model, CNNModel):
            state = {k: v.detach().contiguous() for k, v in model.net.state_dict().items()}
            save_file(state, str(tmp / CNN_FILE))
            described["architecture"] = "SmallCNN"
            described["config"] = asdict(model.net.config)
            # Input = (x / 255 - mean) / std per RGB channel, statistics of the training images.
            described["normalisation"] = {"mean": model.mean, "std": model.std}
        else:
            sio.dump(model, tmp / SVC_FILE)
        head = {"format": FORMAT, "version": FORMAT_VERSION}
        write_json(tmp / JUDGE_JSON, {**head, **info, "kind": kind, "model": described})
        publish_dir(tmp, check_out(out, "judge", overwrite=overwrite))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_info(judge_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """judge.json, checked field by field (it names files and sizes that loading relies on)."""
    path = Path(judge_dir) / JUDGE_JSON
    if not path.is_file():
        raise JudgeError(
            f"{judge_dir} is not a judge folder (no {JUDGE_JSON}); make one with "
            "`diffscape judge train DATASET --out JUDGE`"
        )
    again = "train the judge again"
    try:
        info = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise JudgeError(f"{path} is not valid JSON ({e}); {again}") from None
    header = (info.get("format"), info.get("version")) if isinstance(info, dict) else None
    if header != (FORMAT, FORMAT_VERSION):
        raise JudgeError(f"{path} is not a {FORMAT} v{FORMAT_VERSION} file; {again}")
    kind, classes, size, model = (info.get(k) for k in ("kind", "classes", "size", "model"))
    if kind not in MODEL_FILES:
        raise JudgeError(f"{path} has unknown kind {kind!r}; {again}")
    check_class_names(classes, path, error=JudgeError, hint=again, allow_empty=False)
    if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= MAX_SIZE:
        raise JudgeError(f"{path}: size must be 1 to {MAX_SIZE} pixels, got {size!r}; {again}")
    if not isinstance(model, dict) or model.get("file") != MODEL_FILES[kind]:
        raise JudgeError(f"{path}: a {kind} judge's model file is {MODEL_FILES[kind]}; {again}")
    return info


def load_judge(judge_dir: str | os.PathLike[str]) -> Judge:
    """Open a judge folder; nothing in it is unpickled, and nothing larger than its files is
    allocated. JudgeError (one line) for anything that is not a judge written by diffscape."""
    root = Path(judge_dir)
    info = read_info(root)
    classes, size = list(info["classes"]), int(info["size"])
    model_path = root / info["model"]["file"]
    if not model_path.is_file():
        raise JudgeError(f"{root} is incomplete: {model_path.name} is missing")
    if info["kind"] == "cnn":
        return Judge(_load_cnn(info, model_path), classes, size, info)
    model = load_svc(model_path)
    # The SVC must take this judge's images and predict indices into its classes.
    svc = model[-1] if isinstance(model, Pipeline) else model
    labels, k = np.asarray(getattr(svc, "classes_", [])), len(classes)
    if (
        getattr(model, "n_features_in_", None) != 3 * size * size
        or labels.dtype.kind not in "iu"
        or not (len(labels) >= 2 and labels.min() >= 0 and labels.max() < k)
    ):
        raise JudgeError(
            f"{model_path} does not fit its judge.json ({k} classes at {size} px); train it again"
        )
    return Judge(model, classes, size, info)


def _load_cnn(info: dict[str, Any], path: Path) -> CNNModel:
    """The network and its input normalisation; the architecture is checked against judge.json
    and the weights file's size before anything is allocated."""
    try:
        c, norm = info["model"]["config"], info["model"]["normalisation"]
        config = CNNConfig(
            int(c["num_classes"]),
            int(c["size"]),
            tuple(int(w) for w in c["widths"]),
            int(c["convs_per_block"]),
            float(c["dropout"]),
        )
        mean, std = [float(m) for m in norm["mean"]], [float(s) for s in norm["std"]]
    except (KeyError, TypeError, ValueError) as e:  # ValueError: JudgeError, ConfigError too
        raise JudgeError(
            f"{path.parent / JUDGE_JSON}: {type(e).__name__}: {e}; train the judge again"
        ) from None
    if (config.num_classes, config.size) != (len(info["classes"]), info["size"]) or not (
        len(mean) == len(std) == 3 and all(math.isfinite(x) for x in mean + std) and min(std) > 0
    ):
        raise JudgeError(f"{path.parent / JUDGE_JSON} contradicts itself; train the judge again")
    with torch.device("meta"):  # the state dict's numbers (BatchNorm's too), allocating nothing
        n_params = sum(t.numel() for t in SmallCNN(config).state_dict().values())
    if 4 * n_params > path.stat().st_size:
        raise JudgeError(
            f"{path} holds {path.stat().st_size} bytes, less than the {n_params} "
            "float32 weights judge.json describes; train the judge again"
        )
    check_fits(3 * path.stat().st_size, f"loading {path}", "free memory, or train a smaller judge")
    net = SmallCNN(config)
    try:
        net.load_state_dict(load_file(str(path)))
    except Exception as e:  # safetensors and torch raise several types for a bad file
        first_line = (str(e).strip().splitlines() or [""])[0][:200]
        raise JudgeError(
            f"{path} is not this judge's weights ({type(e).__name__}: {first_line}); "
            "train the judge again"
        ) from None
    return CNNModel(net.eval(), mean, std)
