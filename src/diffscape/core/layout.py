"""Every file and folder name diffscape writes, what kind a folder is, and the rules for --out.

The files on disk are a contract between commands (train writes what sample reads, sweeps write
what the report reads); this module is that contract written down.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import os
import re
import stat
from pathlib import Path
from typing import Literal

from diffscape.core.errors import DiffscapeError

Kind = Literal["dataset", "run", "samples", "judge", "sweep", "demo", "report", "export"]

# ---- dataset -------------------------------------------------------------------------------------
MANIFEST = "manifest.json"


def images_file(split: str) -> str:
    return f"{split}_images.npy"


def labels_file(split: str) -> str:
    return f"{split}_labels.npy"


def raw_images_file(split: str) -> str:
    """A split's images as written, before their count is known (a temporary folder's only)."""
    return f"{split}_images.raw"


# ---- run -----------------------------------------------------------------------------------------
RUN_JSON = "run.json"  # class names and the dataset's identity (the run's marker)
CONFIG_JSON = "config.json"  # the frozen RunConfig
METRICS_JSONL = "metrics.jsonl"  # one line per logged step
TRAIN_JSON = "train.json"  # a finished train stage of a study (diffscape.study.results)
TRAIN_SAMPLES = "samples"  # step-N.png grids while training; a study's samplings, samples/<name>/
CHECKPOINTS = "checkpoints"
TENSORBOARD = "tensorboard"
LOCK = ".lock"  # held (flock) while a process writes into the folder


def train_grid_name(step: int) -> str:
    return f"step-{step:07d}.png"


TRAIN_GRID_PNG = "step-*.png"  # train_grid_name's pattern


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
PARTIAL_JSON = "partial.json"  # in a samples folder being made: the settings of its images


def sample_name(index: int) -> str:
    return f"{index:05d}.png"


def evaluate_samples_name(n: int, seed: int) -> str:
    """RUN/samples/<this>: what ``diffscape evaluate --fake RUN`` samples first."""
    return f"evaluate-n{n}-seed{seed}"


def partial_dir_name(name: str) -> str:
    """The hidden folder beside samples folder ``name`` where its images are made."""
    return f".{name}{TMP_INFIX}partial"


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
SWEEP_LOGS = "_logs"  # the jobs' files and logs, a folder per training (submitit's names)

SWEEP_JUDGE_ALSO = "_judge-{kind}"  # a study's further judges ([judge] also = ["svc"])
ACCURACY_ALSO_JSON = "accuracy-{kind}.json"  # their accuracy, beside accuracy.json
DEMO_JSON = "demo.json"
DEMO_DATA = "data"  # the demo's folders: its dataset, judge and training run
DEMO_JUDGE = "judge"
DEMO_RUN = "run"
DEMO_SAMPLING = "final"  # DEMO_RUN/samples/<this>: the demo's samples
SUMMARY_JSON = "summary.json"
REPORT_HTML = "report.html"
REPORT_JSON = "report.json"
RESULTS_CSV = "results.csv"
FLOOR_JSON = "floor.json"

# ---- caches (diffscape.metrics.features) and other programs' names we read ---------------------
CACHE_HOME = ".cache"  # in $HOME when $XDG_CACHE_HOME is not set (the XDG default)
CACHE_DIR = "diffscape"  # in CACHE_HOME
FEATURE_CACHE = "features"  # in CACHE_DIR: real-image Inception features, a .json beside each


def feature_cache_name(digest: str, layer: str) -> str:
    return f"{digest}-{layer}.npy"


TORCH_HUB_CHECKPOINTS = "checkpoints"  # torch.hub's folder of downloaded weights
SKOPS_SCHEMA = "schema.json"  # inside a skops file (a zip): its table of objects

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


def is_kind(path: str | os.PathLike[str], kind: str) -> bool:
    """Whether ``path`` is a folder of ``kind``: it holds its marker file."""
    return (Path(path) / MARKERS[kind]).is_file()


def kind_of(path: str | os.PathLike[str]) -> str | None:
    """The kind of folder ``path`` is, by its marker file; None for anything else."""
    return next((kind for kind, marker in MARKERS.items() if (Path(path) / marker).is_file()), None)


is_dataset_dir = functools.partial(is_kind, kind="dataset")
is_run_dir = functools.partial(is_kind, kind="run")
is_samples_dir = functools.partial(is_kind, kind="samples")
is_judge_dir = functools.partial(is_kind, kind="judge")
is_sweep_dir = functools.partial(is_kind, kind="sweep")
is_demo_dir = functools.partial(is_kind, kind="demo")


class OutError(DiffscapeError):
    """--out names something this command may not replace."""


# ---- the one rule for every output path ----------------------------------------------------------
# (check_out) Folders of these kinds are replaced whole with --overwrite; runs, sweeps and demos
# are continued in place (train resumes, a sweep or demo redoes what is missing), never replaced.
REPLACED: frozenset[str] = frozenset({"dataset", "samples", "judge", "export", "report"})
TMP_MARKER = ".diffscape-tmp"  # inside every temporary folder (diffscape.core.atomic)
TMP_INFIX = ".diffscape-tmp-"  # in every temporary's name: ".<name>.diffscape-tmp-<pid>"
SAMPLE_PNG = "[0-9][0-9][0-9][0-9][0-9]*.png"  # sample_name's pattern
# What a folder of each replaced kind may hold (relative paths, fnmatch patterns): anything else
# is something a person put there, and the folder is then not replaced even with --overwrite.
OWN_CONTENT: dict[str, tuple[str, ...]] = {
    "dataset": (MANIFEST, images_file("*"), labels_file("*")),
    "judge": (JUDGE_JSON, SVC_FILE, CNN_FILE),
    "export": (EXPORT_CONFIG, EXPORT_CLASSES, f"{EXPORT_UNET}/*", f"{EXPORT_SCHEDULER}/*"),
    "samples": (
        SAMPLES_JSON,
        GRID_PNG,
        EVAL_JSON,
        PAIRS_PNG,
        ACCURACY_JSON,
        CONFUSION_JSON,
        CONFUSION_PNG,
        CAS_JSON,
        RESULT_JSON,
        ACCURACY_ALSO_JSON.format(kind="*"),
        f"*/{SAMPLE_PNG}",
    ),  # fmt: skip
    "report": (REPORT_JSON, REPORT_HTML, RESULTS_CSV),
}
PNG_SOFTWARE = "diffscape"  # "Software" (PNG text chunk, EXIF tag) of the pictures it writes
HTML_GENERATOR = '<meta name="generator" content="diffscape">'


def _json_keys(path: Path, keys: set[str]) -> bool:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and keys <= data.keys()


def _image_is_ours(path: Path) -> bool:
    try:
        from PIL import Image

        with Image.open(path) as im:
            software = im.info.get("Software") or im.getexif().get(0x0131) or ""
    except Exception:  # noqa: BLE001 - anything unreadable is not ours
        return False
    return str(software).startswith(PNG_SOFTWARE)


def _head(path: Path, n: int = 4096) -> str:
    try:
        with open(path, "rb") as f:
            return f.read(n).decode("utf-8", "replace")
    except OSError:
        return ""


# Files that a command writes on their own (not inside a folder of its kind), each recognised by
# its content, since a file has no room for a marker file: JSON by its keys, a picture by its
# "Software" tag, the report page by its generator tag, results.csv by its header.
OWN_FILE = {
    "metrics": lambda p: _json_keys(p, {"features", "versions"}),
    "accuracy": lambda p: _json_keys(p, {"judge_kind", "per_class", "accuracy"}),
    "confusion": lambda p: _json_keys(p, {"rows", "columns", "matrix"}),
    "cas": lambda p: _json_keys(p, {"cas", "real_baseline"}),
    "image": _image_is_ours,
    "html": lambda p: HTML_GENERATOR in _head(p),
    "csv": lambda p: _head(p, 64).startswith("name,"),
}


def is_our_temporary(p: Path) -> bool:
    """A temporary this program made: its name has TMP_INFIX and, for a folder, the marker file
    inside (a person's ".x.tmp-123" is never one)."""
    if TMP_INFIX not in p.name or not p.name.startswith("."):
        return False
    return (p / TMP_MARKER).is_file() if p.is_dir() and not p.is_symlink() else True


def _ours_in_passing(p: Path) -> bool:
    """A lock, a temporary's marker, or one of this program's temporaries."""
    return p.name in (LOCK, TMP_MARKER) or is_our_temporary(p)


def foreign_entries(p: Path, kind: str) -> list[str]:
    """Paths below folder ``p`` (relative; the first 20 or so) that OWN_CONTENT[kind] does not
    list: files a person put there, and links (this program writes none)."""
    patterns = OWN_CONTENT.get(kind, ())
    found = []
    for root, dirs, files in os.walk(p):
        rel_root = Path(root).relative_to(p)
        for d in list(dirs):
            here = Path(root) / d
            if here.is_symlink() or is_our_temporary(here):
                dirs.remove(d)  # a link is not walked: reported below; a temporary is ours
                if here.is_symlink():
                    found.append((rel_root / d).as_posix())
        for name in files:
            rel = (rel_root / name).as_posix()
            if _ours_in_passing(Path(root) / name):
                continue
            if Path(root, name).is_symlink() or not any(
                fnmatch.fnmatchcase(rel, pat) for pat in patterns
            ):
                found.append(rel)
        if len(found) > 20:
            break
    return sorted(found)


def _refuse(p: Path, why: str, todo: str) -> OutError:
    return OutError(f"--out {p} {why}; {todo} (nothing was changed)")


def check_out(out: str | os.PathLike[str], kind: str, *, overwrite: bool = False) -> Path:
    """The one rule for every output path (docs/architecture.md, "Rules that hold everywhere");
    ``kind`` is a folder kind (MARKERS) or a file kind (OWN_FILE). Returns the path to write:
    a symbolic link's target."""
    p = Path(out)
    if p.is_symlink():
        if not p.exists():
            raise _refuse(p, "is a broken symbolic link", "pick another path")
        p = Path(os.path.realpath(p))
    if not p.exists():
        return p
    if kind in OWN_FILE:
        return _check_file(p, kind, overwrite)
    if not p.is_dir():
        raise _refuse(p, "is a file, not a folder", "pick another path")
    if all(_ours_in_passing(c) for c in p.iterdir()):  # anything else at its top is someone's
        return p
    if is_kind(p, kind):
        if kind not in REPLACED:
            return p
        if not overwrite:
            raise _refuse(p, f"already holds a {kind}", "add --overwrite to replace it")
        others = foreign_entries(p, kind)
        if others:
            raise _refuse(
                p, f"holds {others[0]}, which diffscape did not write",
                "move it out of the folder first, or pick another folder",
            )  # fmt: skip
        return p
    found = kind_of(p)
    what_it_is = f"is a {found} folder" if found else "is not empty and not a diffscape folder"
    raise _refuse(p, what_it_is, f"a {kind} goes into a new or empty folder; pick another")


def _check_file(p: Path, kind: str, overwrite: bool) -> Path:
    mode = p.stat().st_mode
    if stat.S_ISDIR(mode):
        names = {"metrics": EVAL_JSON, "html": REPORT_HTML, "csv": RESULTS_CSV, "image": GRID_PNG}
        example = names.get(kind, f"{kind}.json")
        raise _refuse(p, "is a folder", f"give a file name, such as {p}/{example}")
    if not stat.S_ISREG(mode) or not OWN_FILE[kind](p):
        raise _refuse(p, "exists and was not written by diffscape", "pick another name or move it")
    if not overwrite:
        raise _refuse(p, "exists (diffscape wrote it)", "add --overwrite to replace it")
    return p


def check_files_in(
    folder: str | os.PathLike[str], files: dict[str, str], *, overwrite: bool
) -> Path:
    """check_out for a command that writes a few ``files`` ({name: file kind}) into ``folder``
    (a folder of anyone's, e.g. a samples folder): the folder is followed if it is a link and
    must be a folder; each file is new, or one of this program's replaced with ``overwrite``."""
    p = Path(folder)
    if p.is_symlink():
        p = Path(os.path.realpath(p))
    if p.exists() and not p.is_dir():
        raise _refuse(p, "is a file, not a folder", "pick another path")
    for name, kind in files.items():
        check_out(p / name, kind, overwrite=overwrite)
    return p


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
