"""The judge folder: ``judge.json`` plus the model, and loading it back without unpickling.

A judge folder holds

- ``judge.json``: format, kind (``svc`` or ``cnn``), classes (order = label indices), image size,
  accuracy on train / val / test, where validation came from, training settings, the dataset it
  was trained on; for a CNN also its architecture config and input normalisation;
- ``model.skops`` (SVC, loaded with a short list of trusted types) or ``model.safetensors`` (CNN).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from sklearn.pipeline import Pipeline
from sklearn.svm import SVC

from diffscape.atomic import publish_dir
from diffscape.errors import DiffscapeError
from diffscape.judge.cnn import CNNConfig, SmallCNN, predict
from diffscape.judge.data import check_images, resize_images
from diffscape.judge.svc import features, load_svc, save_svc

FORMAT = "diffscape-judge"
FORMAT_VERSION = 1
JUDGE_JSON = "judge.json"
SVC_FILE = "model.skops"
CNN_FILE = "model.safetensors"


class Judge(Protocol):
    """What scoring needs from a judge, whatever its kind."""

    kind: str
    classes: list[str]
    size: int
    info: dict[str, Any]  # the parsed judge.json

    def predict(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, 3, H, W), any H = W -> int64 (N,) indices into ``classes``."""
        ...


@dataclass(frozen=True)
class SVCJudge:
    model: SVC | Pipeline
    classes: list[str]
    size: int
    info: dict[str, Any]
    kind: str = "svc"

    def predict(self, images: np.ndarray) -> np.ndarray:
        images = resize_images(check_images(images), self.size)
        if len(images) == 0:
            return np.empty(0, np.int64)
        return self.model.predict(features(images)).astype(np.int64)


@dataclass(frozen=True)
class CNNJudge:
    net: SmallCNN
    mean: list[float]
    std: list[float]
    classes: list[str]
    size: int
    info: dict[str, Any]
    kind: str = "cnn"

    def predict(self, images: np.ndarray) -> np.ndarray:
        return predict(self.net, self.mean, self.std, resize_images(images, self.size))


def check_out(out: Path) -> None:
    """A judge may replace an older judge or an empty folder, never anything else."""
    if out.exists() and not (out / JUDGE_JSON).is_file() and any(out.iterdir()):
        raise DiffscapeError(f"{out} exists and is not a judge folder; choose another --out")


def publish(tmp: Path, out: Path) -> None:
    """Move a finished judge folder into place, replacing an old one only once this is complete."""
    if out.exists():
        check_out(out)
    publish_dir(tmp, out)


def write_svc_judge(tmp: Path, model: SVC | Pipeline, info: dict[str, Any]) -> None:
    save_svc(model, tmp / SVC_FILE)
    write_info(tmp, {**info, "kind": "svc", "model": {"file": SVC_FILE}})


def write_cnn_judge(
    tmp: Path,
    state: dict[str, torch.Tensor],
    config: CNNConfig,
    mean: list[float],
    std: list[float],
    info: dict[str, Any],
) -> None:
    save_file(state, str(tmp / CNN_FILE))
    model = {
        "file": CNN_FILE,
        "architecture": "SmallCNN",
        "config": config.to_dict(),
        # Input = (x / 255 - mean) / std per RGB channel, statistics of the training images.
        "normalisation": {"mean": mean, "std": std},
    }
    write_info(tmp, {**info, "kind": "cnn", "model": model})


def write_info(folder: Path, info: dict[str, Any]) -> None:
    info = {"format": FORMAT, "version": FORMAT_VERSION, **info}
    (folder / JUDGE_JSON).write_text(json.dumps(info, indent=2) + "\n")


def read_info(judge_dir: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(judge_dir) / JUDGE_JSON
    if not path.is_file():
        raise DiffscapeError(
            f"{judge_dir} is not a judge folder (no {JUDGE_JSON}); make one with "
            "`diffscape judge train DATASET --out JUDGE`"
        )
    info = json.loads(path.read_text())
    if info.get("format") != FORMAT or info.get("version") != FORMAT_VERSION:
        raise DiffscapeError(f"{path} is not a {FORMAT} v{FORMAT_VERSION} file; train it again")
    return info


def load_judge(judge_dir: str | os.PathLike[str]) -> SVCJudge | CNNJudge:
    """Open a judge folder; nothing in it is unpickled."""
    root = Path(judge_dir)
    info = read_info(root)
    classes, size = list(info["classes"]), int(info["size"])
    model_path = root / info["model"]["file"]
    if not model_path.is_file():
        raise DiffscapeError(f"{root} is incomplete: {model_path.name} is missing")
    if info["kind"] == "svc":
        return SVCJudge(load_svc(model_path), classes, size, info)
    if info["kind"] == "cnn":
        config = CNNConfig.from_dict(info["model"]["config"])
        net = SmallCNN(config)
        net.load_state_dict(load_file(str(model_path)))
        net.eval()
        norm = info["model"]["normalisation"]
        return CNNJudge(net, list(norm["mean"]), list(norm["std"]), classes, size, info)
    raise DiffscapeError(f"{root}/{JUDGE_JSON} has unknown kind {info['kind']!r}")
