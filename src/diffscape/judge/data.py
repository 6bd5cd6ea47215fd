"""Image arrays for the judges: resizing, validation hold-outs, class-name mapping.

Every judge consumes uint8 (N, 3, H, W) arrays, the dataset format's own layout, so datasets,
sample folders and callers' arrays all go through the same few helpers.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from diffscape.core.errors import DiffscapeError
from diffscape.core.layout import UNCONDITIONAL
from diffscape.data.dataset import Dataset
from diffscape.data.imagefolder import load_sample_folder, to_chw, to_pil
from diffscape.data.memory import check_fits


class JudgeError(DiffscapeError, ValueError):
    """Data or a judge file that a judge cannot be trained on, loaded from or scored with."""


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 (N, 3, H, W) -> uint8 (N, 3, size, size); a no-op (no copy) at the right size.
    Resampled as a sample folder read at ``size`` is (:func:`~diffscape.data.imagefolder.to_chw`).
    Every caller passes images of a dataset or a sample folder, so uint8 RGB in NCHW layout."""
    if images.shape[2:] == (size, size):
        return images
    out = np.empty((len(images), 3, size, size), np.uint8)
    for i, im in enumerate(images):
        out[i] = to_chw(to_pil(im), size)
    return out


def stratified_holdout(
    labels: np.ndarray, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(keep, held_out) index arrays; ``fraction`` of every class is held out (at least one image
    of each class with two or more), so that a small class still shows up in validation."""
    keep: list[np.ndarray] = []
    held: list[np.ndarray] = []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = int(round(fraction * len(idx)))
        k = min(max(k, 1), len(idx) - 1) if len(idx) >= 2 else 0
        held.append(idx[:k])
        keep.append(idx[k:])
    return np.sort(np.concatenate(keep)), np.sort(np.concatenate(held))


def accuracy(
    predict: Callable[[np.ndarray], np.ndarray], x: np.ndarray | None, y: np.ndarray | None
) -> float | None:
    """The share of the images ``x`` that ``predict`` labels ``y``; None when there are none."""
    return None if x is None or len(x) == 0 else float((predict(x) == y).mean())


@dataclass(frozen=True)
class Splits:
    """In-memory images (``x``) and labels (``y``) at the judge's size: train, val and, when the
    dataset has one, test, in that order; plus where validation came from."""

    x: dict[str, np.ndarray]
    y: dict[str, np.ndarray]
    val_source: str  # "val split" or "N% of train held out"


def load_splits(
    dataset: Dataset,
    size: int,
    val_fraction: float,
    rng: np.random.Generator,
    bytes_per_value: int = 0,  # what the judge adds per pixel value (the SVC's float copies)
) -> Splits:
    """Read a labelled dataset into memory at ``size``, once it is clear that it fits;
    validation is the dataset's val split, or a seeded stratified part of train when it has
    none."""
    if not dataset.labelled:
        raise JudgeError(f"{dataset.root} has no classes; a judge needs labelled images")
    if "train" not in dataset.splits:
        raise JudgeError(f"{dataset.root} has no train split")
    n = sum(dataset.count(s) for s in dataset.splits)
    per_image = 3 * (dataset.size**2 + size**2 * (1 + bytes_per_value))
    check_fits(
        n * per_image,
        f"a judge on {dataset.root} ({n} images at {size} px)",
        "use --size to train on smaller images, or a smaller dataset",
    )
    x: dict[str, np.ndarray] = {}
    y: dict[str, np.ndarray] = {}
    for split in dataset.splits:
        x[split] = resize_images(np.array(dataset.images(split)), size)  # read into memory
        y[split] = np.asarray(dataset.labels(split), np.int64)
        if (y[split] < 0).any():
            raise JudgeError(f"{dataset.root}:{split} has unlabelled images; a judge needs labels")
        if split == "train" and "val" not in dataset.splits:
            keep, held = stratified_holdout(y["train"], val_fraction, rng)
            x["val"], y["val"] = x["train"][held], y["train"][held]
            x["train"], y["train"] = x["train"][keep], y["train"][keep]
    held_out = f"{val_fraction:.0%} of train held out"
    return Splits(x, y, "val split" if "val" in dataset.splits else held_out)


def map_class_names(names: Sequence[str | None], classes: Sequence[str], what: str) -> np.ndarray:
    """Class names -> indices into ``classes``; names that are not there are refused, by name."""
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({str(n) for n in names if n not in index})
    if unknown:
        raise JudgeError(
            f"{what} has classes the judge does not know: {', '.join(unknown)} "
            f"(it knows: {', '.join(classes)}). Images must sit in <class>/ subfolders named "
            "after the judge's classes."
        )
    return np.asarray([index[n] for n in names], np.int64)  # type: ignore[index]


def load_requested(
    samples_dir: str | os.PathLike[str], classes: Sequence[str], size: int, use: str
) -> tuple[np.ndarray, np.ndarray]:
    """A sample folder's images at ``size`` and, for each, the index into ``classes`` of the
    class it was requested as (its folder); ``use`` names what needs them in an error."""
    samples = load_sample_folder(samples_dir, size=size)
    loose = sum(1 for c in samples.class_names if c in (None, UNCONDITIONAL))
    if loose:
        raise JudgeError(
            f"{samples_dir} has {loose} images without a class folder; {use} needs "
            "<class>/<i>.png (sample a conditional model with --per-class)"
        )
    return samples.images, map_class_names(samples.class_names, classes, str(samples_dir))
