"""Memorisation: is a generated image a near-copy of a training image?

For every generated image, its nearest training image and the ratio of that distance to the
*typical* nearest-neighbour distance between training images (the median, over training images,
of the distance to their nearest other training image). A ratio near 1 is what a new image from
the same distribution gets; an exact copy gets 0. A generated image whose ratio is below
``threshold`` (default :data:`NEAR_COPY` = 0.5: twice as close to a training image as training
images are to each other) is flagged as a near-copy. Done in two spaces:

- Inception features (2048-d, the ones FID uses): exact copies and copies moved by a pixel or
  two; the training side is the features already embedded for FID (at most ``n_real`` images),
  so a copy of a training image outside that subset is not found here. Measured on the built-in
  32-px landscapes (200 training images): pixel noise of sigma 4/255 on a copy, upscaled to
  299 px, moves its features about as far as the typical training neighbour (ratio ~1.1), so
  Inception space does not see noisy copies; a 1-px shift gives a median ratio of 0.5;
- pixels: every training image, read from the memory-mapped split in blocks: exact and lightly
  noised copies (on the same landscapes, sigma 4/255: ratio 0.14, sigma 8: 0.27, sigma 16: 0.54).

Why 0.5: a fresh image of the training distribution has a ratio around 1 (test images of the
built-in landscapes against their training split: median 0.99 in pixels, 1.03 in Inception
space; lowest 1% above 0.6 in pixels, all above 0.74 in Inception space), a copy has 0 and a
lightly noised one (sigma <= 8/255) stays below 0.3 in pixels, so 0.5 separates them with room
on both sides. It is a setting (``evaluate.near_copy``). ``any_share`` counts an image flagged
in either space.

:func:`save_pairs_png` draws the closest pairs side by side (generated | training).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

NEAR_COPY = 0.5  # ratio below which a generated image counts as a near-copy
MAX_PAIRS = 8  # closest pairs kept in the record (and drawn)
MEDIAN_PROBE = 1000  # training images whose nearest-neighbour distance gives the typical one
BLOCK_ENTRIES = 1 << 24  # float32 entries of one block of rows read at once (64 MB)

Rows = Any  # a (N, ...) array-like indexable by slices: features, images, a memory map


def _block(rows: Rows, start: int, stop: int) -> torch.Tensor:
    """Rows ``start:stop`` as float32 (n, D), centred on 128 for pixels (smaller norms, so that
    cdist's matrix-product form loses less precision)."""
    x = np.asarray(rows[start:stop])
    t = torch.from_numpy(x.reshape(len(x), -1).astype(np.float32))
    return t - 128.0 if x.dtype == np.uint8 else t


def _block_rows(rows: Rows) -> int:
    dim = int(np.prod(rows.shape[1:]))
    return max(1, BLOCK_ENTRIES // max(1, dim))


def nearest(
    queries: Rows, refs: Rows, *, query_ids: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(distance, index into refs) of every query's nearest ref (Euclidean, float32).
    ``query_ids``: each query's own index among refs, excluded (a training image is not its own
    neighbour). Refs are read once, one block at a time; queries a block at a time."""
    nq, nr = len(queries), len(refs)
    best = torch.full((nq,), float("inf"))
    arg = torch.zeros(nq, dtype=torch.long)
    q_step, r_step = _block_rows(queries), _block_rows(refs)
    for r0 in range(0, nr, r_step):
        ref = _block(refs, r0, min(nr, r0 + r_step))
        for q0 in range(0, nq, q_step):
            q1 = min(nq, q0 + q_step)
            d = torch.cdist(_block(queries, q0, q1), ref)
            if query_ids is not None:
                own = torch.as_tensor(np.asarray(query_ids[q0:q1]), dtype=torch.long) - r0
                hit = (own >= 0) & (own < len(ref))
                d[torch.nonzero(hit).flatten(), own[hit]] = float("inf")
            dist, j = d.min(dim=1)
            better = dist < best[q0:q1]
            best[q0:q1] = torch.where(better, dist, best[q0:q1])
            arg[q0:q1] = torch.where(better, j + r0, arg[q0:q1])
    return best.numpy(), arg.numpy()


def typical_distance(train: Rows, seed: int = 0) -> float:
    """Median over training images (at most :data:`MEDIAN_PROBE`, a seeded subset) of the
    distance to their nearest other training image."""
    n = len(train)
    probe = np.arange(n)
    if n > MEDIAN_PROBE:
        probe = np.sort(np.random.default_rng(seed).choice(n, MEDIAN_PROBE, replace=False))
    d, _ = nearest(_Subset(train, probe), train, query_ids=probe)
    return float(np.median(d))


class _Subset:
    """Lazy ``rows[indices]`` over a memory-mapped array, read a slice at a time (sorted indices
    read sorted, which is kinder to a memory map)."""

    def __init__(self, rows: Rows, indices: np.ndarray) -> None:
        self.rows, self.indices = rows, np.asarray(indices, np.int64)
        self.shape = (len(self.indices), *rows.shape[1:])

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, s: slice) -> np.ndarray:
        return np.asarray(self.rows[self.indices[s]])


def subset(rows: Rows, indices: np.ndarray | None) -> Rows:
    """``rows[indices]`` read lazily (all rows when None)."""
    return rows if indices is None else _Subset(rows, indices)


def near_copies(
    fake: Rows,
    train: Rows,
    *,
    threshold: float = NEAR_COPY,
    fake_ids: np.ndarray | None = None,
    train_ids: np.ndarray | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Each fake row's nearest train row, its distance ratio to the typical train-to-train
    nearest distance, and the share below ``threshold``. ``fake_ids`` / ``train_ids``: the rows'
    indices in their whole image arrays, recorded in ``pairs`` (default: positions). ``flags``
    (a boolean array per fake row) is for :func:`memorisation_record`, not for JSON."""
    typical = typical_distance(train, seed)
    dist, j = nearest(fake, train)
    # typical 0: most training images have an exact duplicate, so only exact copies count
    ratio = dist / max(typical, 1e-12)
    fake_ids = np.arange(len(fake)) if fake_ids is None else np.asarray(fake_ids)
    train_ids = np.arange(len(train)) if train_ids is None else np.asarray(train_ids)
    order = np.argsort(ratio, kind="stable")[:MAX_PAIRS]
    return {
        "share": float(np.mean(ratio < threshold)),
        "threshold": threshold,
        "median_ratio": float(np.median(ratio)),
        "n_fake": len(fake),
        "n_train": len(train),
        "train_nn_median": typical,
        "pairs": [[int(fake_ids[i]), int(train_ids[j[i]]), float(ratio[i])] for i in order],
        "flags": ratio < threshold,  # per generated image: popped by memorisation_record
    }


def memorisation_record(
    inception: dict[str, Any], pixel: dict[str, Any] | None, train_source: str, why: str = ""
) -> dict[str, Any]:
    """metrics.json's ``memorisation``: the Inception check (:func:`near_copies`), plus the
    pixel one's numbers and the share flagged in either space."""
    flags = inception.pop("flags")
    if pixel:
        flags = flags | pixel.pop("flags")
    out = {**inception, "space": "inception", "train_source": train_source}
    for key in ("share", "median_ratio", "n_train", "train_nn_median"):
        out[f"pixel_{key}"] = pixel[key] if pixel else None
    out |= {"pixel_pairs": pixel["pairs"] if pixel else [], "any_share": float(np.mean(flags))}
    if pixel is None:
        out["pixel_unavailable"] = why
    return out


# ---- the picture ---------------------------------------------------------------------------------

CELL = 96  # pixels per drawn image (nearest-neighbour upscaling keeps small images sharp)
LABEL = 14  # pixels of one line of text under each pair
TITLE = 64  # pixels left of the pairs for the row titles


def images_of(side: Any) -> np.ndarray:
    """uint8 (N, 3, H, W) of a SampleSet, a (Dataset, split) pair or a Dataset (its train
    split)."""
    if isinstance(side, tuple):
        return side[0].images(side[1])
    return side.images("train") if callable(side.images) else side.images


def _cell(image_chw: np.ndarray) -> Any:
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(np.asarray(image_chw).transpose(1, 2, 0)))
    return img.resize((CELL, CELL), Image.Resampling.NEAREST)


def _pairs(rec: Mapping[str, Any]) -> list[tuple[int, int, float, str]]:
    """(fake index, train index, ratio, "inc" | "px"), closest first, each pair once."""
    found = [(int(f), int(t), float(r), "inc") for f, t, r in rec.get("pairs") or []]
    found += [(int(f), int(t), float(r), "px") for f, t, r in rec.get("pixel_pairs") or []]
    closest: dict[tuple[int, int], tuple[int, int, float, str]] = {}
    for pair in sorted(found, key=lambda p: p[2]):
        closest.setdefault(pair[:2], pair)
    return list(closest.values())


def save_pairs_png(
    fake: Any, train: Any, result: Mapping[str, Any], path: str | os.PathLike[str]
) -> Path | None:
    """Draw the closest (generated above, training below) pairs, one per column, labelled with
    their distance ratio; written atomically. ``fake``: the fake side given to ``evaluate`` (a
    SampleSet or a (Dataset, split) pair); ``train``: the Dataset (its train split);
    ``result``: evaluate()'s dict. The Inception and pixel pairs are merged (closest first, each
    pair once). Returns None (writes nothing) when there is no record or no pair."""
    from PIL import Image, ImageDraw

    rec = result.get("memorisation")
    pairs = _pairs(rec or {})[:MAX_PAIRS]
    if not pairs:
        return None
    fakes, trains = images_of(fake), images_of(train)
    threshold = float(rec.get("threshold", NEAR_COPY))
    # One column per pair (generated above, nearest training image below, the ratio under
    # them), so that the sheet is as wide as a sample grid rather than a tall strip.
    pad, col_w = 4, CELL + 4
    sheet = Image.new("RGB", (TITLE + pad + col_w * len(pairs), 2 * CELL + 3 * pad + 2 * LABEL),
                      "white")  # fmt: skip
    draw = ImageDraw.Draw(sheet)
    draw.text((pad, pad + CELL // 2), "generated", fill="black")
    draw.text((pad, 2 * pad + CELL + CELL // 2), "training", fill="black")
    for c, (fi, ti, ratio, where) in enumerate(pairs):
        x = TITLE + pad + c * col_w
        sheet.paste(_cell(fakes[int(fi)]), (x, pad))
        sheet.paste(_cell(trains[int(ti)]), (x, 2 * pad + CELL))
        near = ratio < threshold
        y = 2 * CELL + 2 * pad + 1
        draw.text((x, y), f"{where} r={ratio:.2f}{' COPY' if near else ''}",
                  fill="red" if near else "black")  # fmt: skip
        draw.text((x, y + LABEL), f"#{fi} | #{ti}", fill="black")
    from diffscape.data.imagefolder import save_image

    return save_image(sheet, path)
