"""The report's judge: an RBF support-vector classifier on raw pixels, and its (C, gamma) grid.

Features are the pixels scaled to [0, 1] (``x / 255``) and flattened, exactly as the report did;
its grid and best setting (C=100, gamma=0.01) are the defaults here. ``standardize=True`` z-scores
every pixel first (scikit-learn ``StandardScaler`` fitted on train). That changes the scale of the
squared distances the RBF kernel sees (roughly by 1 / pixel variance, about 15x for photos), so a
numeric gamma tuned without it means something else with it; ``gamma="scale"`` adapts to either.

Saved with skops (no pickle); loading accepts only the scikit-learn and numpy types listed in
:data:`TRUSTED_TYPES` and refuses any file that mentions another. Before skops reads anything,
the file's ``schema.json`` is inspected: only the node kinds that saving an SVC produces are
accepted (skops would otherwise call a trusted type such as ``numpy.ndarray`` with arguments
from the file, e.g. ``numpy.ndarray((10**11,))``), and each array must hold exactly the bytes its
header promises, so loading allocates no more than the file's size.
"""

from __future__ import annotations

import json
import math
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import skops.io as sio
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from diffscape.core.layout import SKOPS_SCHEMA
from diffscape.data.memory import check_fits
from diffscape.judge.data import JudgeError, Splits, accuracy
from diffscape.settings.sections import Gamma, SVCSettings

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
# The skops node kinds an SVC judge is saved as; others (ConstructorFromReduceNode, which calls
# a type with arguments from the file, FunctionNode, MethodNode, ...) are refused unread.
SKOPS_LOADERS = frozenset(
    {"DictNode", "ListNode", "TupleNode", "JsonNode", "TypeNode", "NdArrayNode", "DTypeNode"}
    | {"ObjectNode"}
)
MAX_SCHEMA_BYTES = 64 << 20  # an SVC judge's schema.json is a few kB


def features(images: np.ndarray) -> np.ndarray:
    """uint8 (N, 3, H, W) -> float32 (N, 3*H*W) in [0, 1]."""
    return images.reshape(len(images), -1).astype(np.float32) / 255.0


@dataclass(frozen=True)
class GridRow:
    C: float
    gamma: Gamma
    train: float
    val: float
    test: float | None  # shown as in the report; never used for selection
    fit_seconds: float


def fit_grid(
    data: Splits, settings: SVCSettings, on_row: Callable[[GridRow], None] | None = None
) -> tuple[SVC | Pipeline, list[GridRow], GridRow]:
    """Fit one SVC per (C, gamma) on train and pick the best validation accuracy (first wins
    ties, so the smaller C and the grid's earlier gamma)."""
    x = {split: features(images) for split, images in data.x.items()}
    best_model: SVC | Pipeline | None = None
    best_row: GridRow | None = None
    rows: list[GridRow] = []
    for C in settings.grid_C:
        for gamma in settings.grid_gamma:
            start = time.perf_counter()
            model = SVC(C=C, gamma=gamma, kernel="rbf")
            if settings.standardize:
                model = make_pipeline(StandardScaler(), model)
            model.fit(x["train"], data.y["train"])
            seconds = time.perf_counter() - start
            acc = {split: accuracy(model.predict, x[split], data.y[split]) for split in x}
            row = GridRow(C, gamma, acc["train"], acc["val"], acc.get("test"), seconds)
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


def load_svc(path: Path) -> SVC | Pipeline:
    """Load a skops file, refusing any type outside :data:`TRUSTED_TYPES` (never unpickles) and
    any file that would make skops construct or allocate more than it holds."""
    check_skops_file(path)
    untrusted = sio.get_untrusted_types(file=path)
    refused = sorted(set(untrusted) - TRUSTED_TYPES)
    if refused:
        raise JudgeError(
            f"{path} contains types a diffscape judge never holds: {', '.join(refused)}; "
            "refusing to load it. Train the judge again with `diffscape judge train`."
        )
    try:
        model = sio.load(path, trusted=list(untrusted))
    except Exception as e:  # a hostile or damaged file can fail in many ways inside skops
        raise JudgeError(
            f"{path} cannot be loaded ({type(e).__name__}: {e}); train the judge again"
        ) from None
    # skops trusts most scikit-learn types by default, so also check the shape of what loaded.
    steps = [s for _, s in model.steps] if isinstance(model, Pipeline) else [model]
    kinds = [type(s) for s in steps]
    if kinds not in ([SVC], [StandardScaler, SVC]):
        names = " + ".join(k.__name__ for k in kinds)
        raise JudgeError(f"{path} holds {names}, not an SVC judge")
    return model


def check_skops_file(path: Path) -> None:
    """Inspect a skops file without loading it: a zip whose members fit in memory, a schema
    made only of :data:`SKOPS_LOADERS` nodes, and arrays that hold what their headers say."""
    again = "train the judge again with `diffscape judge train`"
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, ValueError):
        raise JudgeError(f"{path} is not a skops file (a pickle, or damaged?); {again}") from None
    with zf:
        members = {i.filename: i for i in zf.infolist()}
        check_fits(
            2 * sum(i.file_size for i in members.values()),
            f"loading {path}",
            "this judge is larger than this machine's memory",
        )
        info = members.get(SKOPS_SCHEMA)
        if info is None or info.file_size > MAX_SCHEMA_BYTES:
            raise JudgeError(f"{path} has no usable {SKOPS_SCHEMA}; {again}")
        try:
            schema = json.loads(zf.read(info))
        except (ValueError, RecursionError, zipfile.BadZipFile) as e:
            raise JudgeError(f"{path}: {SKOPS_SCHEMA} is damaged ({e}); {again}") from None
        for node in _schema_nodes(schema):
            loader = node["__loader__"]
            if loader not in SKOPS_LOADERS:
                what = f"{node.get('__module__')}.{node.get('__class__')}"
                raise JudgeError(f"{path} holds a {loader} ({what}), which no judge does; {again}")
            if loader == "NdArrayNode":
                _check_array(zf, members, node, path)


def _schema_nodes(schema: Any) -> Iterator[dict[str, Any]]:
    """Every dict with a ``__loader__`` in a skops schema (iteratively: no recursion limit)."""
    stack = [schema]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if "__loader__" in item:
                yield item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _check_array(
    zf: zipfile.ZipFile, members: dict[str, zipfile.ZipInfo], node: dict[str, Any], path: Path
) -> None:
    """An array node must name an .npy member whose data is exactly what its header says."""
    name = node.get("file")
    if node.get("type") != "numpy" or not isinstance(name, str) or name not in members:
        raise JudgeError(f"{path} has an array that is not a stored .npy member; train it again")
    try:
        with zf.open(members[name]) as f:
            if np.lib.format.read_magic(f) != (1, 0):  # np.save writes 1.0 for such arrays
                raise ValueError("not .npy version 1.0")
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            header = f.tell()
    except (ValueError, SyntaxError, OSError, zipfile.BadZipFile) as e:
        raise JudgeError(f"{path}: array {name} is damaged ({e}); train it again") from None
    promised = math.prod(shape) * dtype.itemsize
    if dtype.hasobject or promised != members[name].file_size - header:
        raise JudgeError(
            f"{path}: array {name} claims {dtype} {shape} ({promised} bytes) but holds "
            f"{members[name].file_size - header} bytes; refusing to load it, train it again"
        )
