"""``score``: does each generated image look like the class it was requested as?

A judge (trained on real images) classifies every image of a sample folder; an image counts as
correct when the predicted class is the class subfolder it sits in. The judge's own accuracy on
real test images is reported beside it, because the generated accuracy only means something
relative to it: a judge that gets 70% of real photos right cannot vouch for more than that.
"""

from __future__ import annotations

import io
import os
from typing import Any

import numpy as np
from sklearn import metrics

from diffscape.core.atomic import write_bytes, write_json
from diffscape.core.layout import (
    ACCURACY_JSON,
    CONFUSION_JSON,
    CONFUSION_PNG,
    PNG_SOFTWARE,
    check_files_in,
)
from diffscape.data.dataset import parse_dataset_spec
from diffscape.judge.data import load_requested, map_class_names
from diffscape.judge.store import load_judge

OUTPUTS = {ACCURACY_JSON: "accuracy", CONFUSION_JSON: "confusion", CONFUSION_PNG: "image"}
VARIETY_MARGIN = 0.10  # warn when generated accuracy beats real accuracy by more than this


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """int64 (K, K): row = requested (true) class, column = predicted class."""
    labels = np.arange(num_classes)
    return metrics.confusion_matrix(y_true, y_pred, labels=labels).astype(np.int64)


def per_class_accuracy(matrix: np.ndarray, classes: list[str]) -> dict[str, dict[str, Any]]:
    """{class: {n, correct, accuracy}} for the classes with at least one image."""
    out: dict[str, dict[str, Any]] = {}
    for i, name in enumerate(classes):
        n = int(matrix[i].sum())
        if n:
            out[name] = {"n": n, "correct": int(matrix[i, i]), "accuracy": float(matrix[i, i] / n)}
    return out


def variety_warning(generated: float, real: float | None) -> str | None:
    if real is None or generated <= real + VARIETY_MARGIN:
        return None
    return (
        f"generated accuracy ({100 * generated:.1f}%) is more than {100 * VARIETY_MARGIN:.0f} "
        f"points above the judge's accuracy on real test images ({100 * real:.1f}%). This usually "
        "means the samples are less varied (more typical of their class) than real photos, not "
        "better than them; check diversity (FID/KID, per-class grids)."
    )


def real_accuracy(judge: Any, real: str | None) -> dict[str, Any] | None:
    """The judge's accuracy on real images: recomputed on ``real`` (``DATASET[:split]``, default
    split test) when given, else what judge.json recorded at training time."""
    if real is None:
        acc = judge.info.get("accuracy", {}).get("test")
        if acc is None:
            return None
        n = judge.info.get("dataset", {}).get("n", {}).get("test")
        return {"accuracy": acc, "n": n, "source": "judge.json (test split at training time)"}
    ds, split = parse_dataset_spec(real, default_split="test")
    y = map_class_names([ds.classes[i] for i in ds.labels(split)], judge.classes, f"{real}")
    pred = judge.predict(ds.read_images(split, copies=1.0))  # + the copy resized to the judge's
    accuracy = float(metrics.accuracy_score(y, pred))
    return {"accuracy": accuracy, "n": len(y), "source": f"{ds.root}:{split}"}


def score(
    judge_dir: str | os.PathLike[str],
    samples_dir: str | os.PathLike[str],
    real: str | None = None,
    out: str | os.PathLike[str] | None = None,
    *,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Classify every image of ``samples_dir`` (``<class>/<i>.png``) with the judge and compare
    with the class it was requested as. Writes accuracy.json, confusion.json and confusion.png
    into ``out`` (default ``samples_dir``), each new or, with ``overwrite``, replacing this
    program's own, and returns what accuracy.json holds."""
    out_dir = check_files_in(out if out is not None else samples_dir, OUTPUTS, overwrite=overwrite)
    judge = load_judge(judge_dir)
    images, y_true = load_requested(samples_dir, judge.classes, judge.size, "scoring")
    y_pred = judge.predict(images)
    matrix = confusion_matrix(y_true, y_pred, len(judge.classes))
    accuracy = float(metrics.accuracy_score(y_true, y_pred))
    real_acc = real_accuracy(judge, real)
    warning = variety_warning(accuracy, None if real_acc is None else real_acc["accuracy"])
    result: dict[str, Any] = {
        "judge": str(judge_dir),
        "judge_kind": judge.kind,
        "samples": str(samples_dir),
        "n": len(y_true),
        "accuracy": accuracy,
        "per_class": per_class_accuracy(matrix, judge.classes),
        "real": real_acc,
        "warning": warning,
    }
    confusion = {
        "classes": judge.classes,
        "rows": "requested class",
        "columns": "predicted class",
        "matrix": matrix.tolist(),
    }
    # The plot is drawn before any file is written: should drawing fail, no half-set is left.
    title = f"{judge.kind} judge: {100 * accuracy:.1f}% of {len(y_true)} samples"
    png = plot_confusion(matrix, judge.classes, title)
    write_json(out_dir / ACCURACY_JSON, result)
    write_json(out_dir / CONFUSION_JSON, confusion)
    write_bytes(out_dir / CONFUSION_PNG, png)
    return result


def plot_confusion(matrix: np.ndarray, classes: list[str], title: str) -> bytes:
    """The confusion plot as PNG bytes: counts in every cell, shaded by the row's fraction (so
    classes with fewer images read the same); requested classes down, predicted classes across.
    Class names are user text, drawn as written: a "$" starts no mathtext."""
    import matplotlib
    from matplotlib.figure import Figure  # no pyplot: no global figure state, no GUI backend

    k = len(classes)
    rows = matrix.sum(1, keepdims=True)
    frac = np.divide(matrix, rows, out=np.zeros(matrix.shape), where=rows > 0)
    side = 1.6 + 0.6 * k
    with matplotlib.rc_context({"text.parse_math": False}):
        fig = Figure(figsize=(side + 1, side))
        ax = fig.add_subplot()
        im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
        fig.colorbar(im, ax=ax, label="fraction of the row")
        ax.set_xticks(range(k), classes, rotation=45, ha="right")
        labels = [f"{c} ({int(n)})" for c, n in zip(classes, rows[:, 0], strict=True)]
        ax.set_yticks(range(k), labels)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("requested class (images)")
        ax.set_title(title)
        fontsize = max(5, 10 - k // 4)
        for (i, j), count in np.ndenumerate(matrix):
            color = "white" if frac[i, j] > 0.5 else "black"
            ax.text(j, i, str(count), ha="center", va="center", color=color, fontsize=fontsize)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, dpi=120, format="png", metadata={"Software": PNG_SOFTWARE})
    return buf.getvalue()


def format_score(result: dict[str, Any]) -> str:
    """The table the CLI prints."""
    lines = [f"{'class':<16} {'n':>6} {'accuracy':>9}"]
    for name, r in result["per_class"].items():
        lines.append(f"{name:<16} {r['n']:>6} {100 * r['accuracy']:8.1f}%")
    lines.append(f"{'all samples':<16} {result['n']:>6} {100 * result['accuracy']:8.1f}%")
    real = result["real"]
    if real is not None:
        n = "?" if real["n"] is None else real["n"]
        lines.append(f"{'real test':<16} {n:>6} {100 * real['accuracy']:8.1f}%  ({real['source']})")
    else:
        lines.append("real test: unknown (judge trained without a test split; pass --real)")
    if result["warning"]:
        lines.append(f"note: {result['warning']}")
    return "\n".join(lines)
