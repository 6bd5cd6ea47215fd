"""Every file and folder name diffscape writes, what kind a folder is, and the rules for --out.

The files on disk are a contract between commands (train writes what sample reads, sweeps write
what the report reads); this module is that contract written down. Other modules import the
names from here instead of spelling string literals.

Kinds of folder, each recognised by its marker file::

    dataset   manifest.json + <split>_images.npy / <split>_labels.npy
    run       run.json + config.json, metrics.jsonl, samples/step-N.png, checkpoints/step-N/
    samples   samples.json + <class>/<index>.png, grid.png (+ metrics.json, accuracy.json)
    judge     judge.json + the classifier's files
    sweep     sweep.json + one run folder per training run, _data/, _judge/, _floor/
    demo      demo.json + data/, judge/, run/, report.html, summary.json
    report    report.json + report.html, results.csv (``diffscape report --out DIR``)
    export    diffscape_config.json + unet/, scheduler/, classes.json (``diffscape export``)
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from diffscape.errors import DiffscapeError

Kind = Literal["dataset", "run", "samples", "judge", "sweep", "demo", "report", "export"]

# ---- dataset -------------------------------------------------------------------------------------
MANIFEST = "manifest.json"


def images_file(split: str) -> str:
    return f"{split}_images.npy"


def labels_file(split: str) -> str:
    return f"{split}_labels.npy"


# ---- run -----------------------------------------------------------------------------------------
RUN_JSON = "run.json"  # class names and the dataset's identity (the run's marker)
CONFIG_JSON = "config.json"  # the frozen RunConfig
METRICS_JSONL = "metrics.jsonl"  # one line per logged step
TRAIN_JSON = "train.json"  # a finished train stage of a study (diffscape.results)
TRAIN_SAMPLES = "samples"  # step-N.png grids while training
CHECKPOINTS = "checkpoints"
TENSORBOARD = "tensorboard"
LOCK = ".lock"  # held (flock) while a process writes into the folder


def train_grid_name(step: int) -> str:
    return f"step-{step:07d}.png"


# ---- checkpoint ----------------------------------------------------------------------------------
COMPLETE = "COMPLETE"  # written last; lists every file with its size and sha256
MODEL_DIR = "model"  # diffusers UNet2DModel folder
EMA_DIR = "ema"
UNET_WEIGHTS = "diffusion_pytorch_model.safetensors"  # diffusers' name, in MODEL_DIR/EMA_DIR
OPTIMIZER_TENSORS = "optimizer.safetensors"
OPTIMIZER_JSON = "optimizer.json"
RNG_TENSORS = "rng.safetensors"
STATE_JSON = "state.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoint_name(step: int) -> str:
    return f"step-{step:07d}"


def checkpoint_step(name: str) -> int | None:
    m = _STEP_DIR.match(name)
    return int(m.group(1)) if m else None


# ---- samples -------------------------------------------------------------------------------------
SAMPLES_JSON = "samples.json"  # how the images were made (the folder's marker)
GRID_PNG = "grid.png"
UNCONDITIONAL = "unconditional"  # the class folder of an unconditional model's images
EVAL_JSON = "metrics.json"  # diffscape evaluate
PAIRS_PNG = "closest-pairs.png"  # beside metrics.json: memorisation's closest pairs
ACCURACY_JSON = "accuracy.json"  # diffscape judge score
CONFUSION_PNG = "confusion.png"
CONFUSION_JSON = "confusion.json"  # diffscape judge score
CAS_JSON = "cas.json"  # diffscape judge cas
RESULT_JSON = "result.json"  # a sweep row's outcome, written last


def sample_name(index: int) -> str:
    return f"{index:05d}.png"


# ---- export (a folder plain diffusers loads) ------------------------------------------------------
EXPORT_CONFIG = "diffscape_config.json"  # the run's RunConfig (the folder's marker)
EXPORT_UNET = "unet"  # UNet2DModel.from_pretrained
EXPORT_SCHEDULER = "scheduler"  # DDPMScheduler.from_pretrained, with the model's betas
EXPORT_CLASSES = "classes.json"  # class names and the "no class" index

# ---- judge ---------------------------------------------------------------------------------------
JUDGE_JSON = "judge.json"
SVC_FILE = "model.skops"  # an SVC judge's model (skops, never unpickled)
CNN_FILE = "model.safetensors"  # a CNN judge's weights

# ---- sweep, demo, report -------------------------------------------------------------------------
SWEEP_JSON = "sweep.json"
SWEEP_DATA = "_data"
SWEEP_JUDGE = "_judge"
SWEEP_FLOOR = "_floor"
SWEEP_LOG = "sweep.log"
SWEEP_JUDGE_ALSO = "_judge-{kind}"  # a study's further judges ([judge] also = ["svc"])
ACCURACY_ALSO_JSON = "accuracy-{kind}.json"  # their accuracy, beside accuracy.json
DEMO_JSON = "demo.json"
SUMMARY_JSON = "summary.json"
REPORT_HTML = "report.html"
REPORT_JSON = "report.json"
RESULTS_CSV = "results.csv"
FLOOR_JSON = "floor.json"

MARKERS: dict[str, str] = {
    "dataset": MANIFEST,
    "run": RUN_JSON,
    "samples": SAMPLES_JSON,
    "judge": JUDGE_JSON,
    "sweep": SWEEP_JSON,
    "demo": DEMO_JSON,
    "report": REPORT_JSON,
    "export": EXPORT_CONFIG,
}


def kind_of(path: str | os.PathLike[str]) -> str | None:
    """The kind of folder ``path`` is, by its marker file; None for anything else."""
    p = Path(path)
    for kind, marker in MARKERS.items():
        if (p / marker).is_file():
            return kind
    return None


def is_dataset_dir(path: str | os.PathLike[str]) -> bool:
    return (Path(path) / MANIFEST).is_file()


def is_run_dir(path: str | os.PathLike[str]) -> bool:
    """A training run: run.json, or (runs from before run.json) config.json + checkpoints/."""
    p = Path(path)
    return (p / RUN_JSON).is_file() or ((p / CONFIG_JSON).is_file() and (p / CHECKPOINTS).is_dir())


def is_checkpoint_dir(path: str | os.PathLike[str]) -> bool:
    return (Path(path) / COMPLETE).is_file()


def is_samples_dir(path: str | os.PathLike[str]) -> bool:
    return (Path(path) / SAMPLES_JSON).is_file()


def is_judge_dir(path: str | os.PathLike[str]) -> bool:
    return (Path(path) / JUDGE_JSON).is_file()


def is_sweep_dir(path: str | os.PathLike[str]) -> bool:
    return (Path(path) / SWEEP_JSON).is_file()


def is_demo_dir(path: str | os.PathLike[str]) -> bool:
    """demo.json, or (demos from before it) summary.json beside a run/ folder."""
    p = Path(path)
    return (p / DEMO_JSON).is_file() or ((p / SUMMARY_JSON).is_file() and (p / "run").is_dir())


_PREDICATES = {
    "dataset": is_dataset_dir,
    "run": is_run_dir,
    "samples": is_samples_dir,
    "judge": is_judge_dir,
    "sweep": is_sweep_dir,
    "demo": is_demo_dir,
    "report": lambda p: (Path(p) / REPORT_JSON).is_file(),
    "export": lambda p: (Path(p) / EXPORT_CONFIG).is_file(),
}


def is_kind(path: str | os.PathLike[str], kind: str) -> bool:
    return _PREDICATES[kind](path)


class OutError(DiffscapeError):
    """--out names something this command may not replace."""


def _is_empty_dir(p: Path) -> bool:
    """Empty but for the lock, the leftovers of killed writers (clean_stale_tmp's) and a sweep
    worker's log (opened before the run it logs is made)."""
    from diffscape.atomic import stale_tmp

    ignored = {LOCK, SWEEP_LOG, *(c.name for c in stale_tmp(p))}
    return p.is_dir() and not any(c for c in p.iterdir() if c.name not in ignored)


def check_out(out: str | os.PathLike[str], kind: str, *, what: str = "--out") -> Path:
    """The one rule for every command that writes a folder: ``out`` may be new, an empty folder,
    or a folder of the same ``kind`` (recognised by its marker); anything else is refused with
    one line naming it. Returns ``out`` as a Path."""
    p = Path(out)
    if p.is_symlink() and not p.exists():
        raise OutError(f"{what} {p} is a broken symbolic link; pick another folder")
    if not p.exists():
        return p
    if not p.is_dir():
        raise OutError(f"{what} {p} is a file, not a folder; pick another path")
    if _is_empty_dir(p) or is_kind(p, kind):
        return p
    found = kind_of(p)
    what_it_is = f"a {found} folder" if found else "not empty and not a diffscape folder"
    raise OutError(
        f"{what} {p} is {what_it_is}; a {kind} is written only into a new or empty folder or "
        f"over an older {kind}. Pick another folder (nothing was changed)"
    )


# ---- names that come from files ------------------------------------------------------------------
_BAD_CHARS = re.compile(r"[\x00-\x1f\x7f/\\]")
_DRIVE = re.compile(r"^[A-Za-z]:")  # "C:" or "C:x" means a drive on Windows
MAX_NAME_BYTES = 200


def safe_component(name: object, what: str = "name") -> str:
    """``name`` if it is usable as exactly one path component (a class folder, a run name...);
    otherwise a DiffscapeError. Names read from files (manifests, zips, samples.json, sweep
    files) go through this before any path is built from them."""
    if not isinstance(name, str):
        raise DiffscapeError(f"{what} {name!r} is not a string")
    bad = (
        not name
        or name.startswith(".")  # ".", "..", and names of locks and temporaries
        or _BAD_CHARS.search(name) is not None
        or name != name.strip()
        or len(name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES
        or _DRIVE.match(name) is not None
    )
    if bad:
        raise DiffscapeError(
            f"{what} {name!r} cannot be used as a folder name (it must be one path component: "
            "no '/', '\\', leading '.', drive letter, control characters or surrounding "
            f"spaces, at most {MAX_NAME_BYTES} bytes); rename it"
        )
    return name


def check_class_names(
    classes: object,
    where: object,
    *,
    error: type[DiffscapeError] = DiffscapeError,
    hint: str = "",
    allow_empty: bool = True,
) -> list[str]:
    """A list of distinct class names read from ``where`` (a manifest, judge.json...), each a
    safe path component; otherwise ``error`` naming the file (``hint`` says what to do)."""
    if (
        not isinstance(classes, list)
        or (not classes and not allow_empty)
        or len(set(map(str, classes))) != len(classes)
    ):
        raise error(f"{where}: classes must be a list of distinct names; {hint}")
    for name in classes:
        try:
            safe_component(name, "class name")
        except DiffscapeError as e:
            raise error(f"{where}: {e}") from None
    return classes
