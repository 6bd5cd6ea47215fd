"""Generated images (or a second dataset split) against a real split: FID, KID, IS, per class.

``evaluate`` embeds both sides once (real features cached by the dataset's content hash), then
computes every score from features: FID at 2048 and at 64 features, KID mean ± std, the Inception
Score when genuine logits exist, per-class FID/KID for class-conditional samples, and optionally
a bootstrap interval for FID. It writes ``metrics.json`` and prints a one-screen summary.

Sample sizes: FID is biased upward at small n (and at n < 2048 its covariance is singular), so
the standard is 10k-50k generated images against the whole real split. On a CPU-only machine the
default drops to 1,000 generated images (Inception runs at a few images per second) and the
summary leads with KID, which is unbiased at any n.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffscape.data.dataset import MANIFEST, SPLITS, Dataset, parse_dataset_spec
from diffscape.errors import DiffscapeError
from diffscape.imagefolder import UNCONDITIONAL, SampleSet, load_sample_folder
from diffscape.metrics.features import (
    FEATURES_64,
    FEATURES_2048,
    LOGITS,
    FeatureExtractor,
    InceptionExtractor,
    cache_dir,
    cache_key,
    dataset_features,
    describe_plan,
    embed_images,
    has_cached,
    indices_digest,
    log,
)
from diffscape.metrics.scores import (
    IS_SPLITS,
    bootstrap_fid,
    fid_from_features,
    inception_score_from_logits,
    kid_from_features,
)
from diffscape.metrics.weights import resolve_inception_weights

GPU_DEFAULT_N = 10_000  # generated images on a GPU machine: the usual FID-10k
CPU_DEFAULT_N = 1_000  # generated images without a GPU (about 4-5 min of Inception on 2 cores)
FID_FEATURES = 2048  # below this many images the 2048-d covariance is singular and FID biased
METRICS_JSON = "metrics.json"

Side = SampleSet | tuple[Dataset, str]


def default_n(device: torch.device | str | None = None) -> tuple[int, str]:
    """(n generated images, why) for this machine."""
    dev = torch.device(device) if device is not None else _default_device()
    if dev.type == "cpu":
        return CPU_DEFAULT_N, (
            f"no GPU: using n={CPU_DEFAULT_N:,} generated images (the standard is "
            f"{GPU_DEFAULT_N:,}; pass --n to change)"
        )
    return GPU_DEFAULT_N, f"using n={GPU_DEFAULT_N:,} generated images (pass --n to change)"


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def versions() -> dict[str, str]:
    out = {}
    for dist in ("diffscape", "torch", "torchmetrics", "torch-fidelity", "numpy", "scipy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


# ---- what the --fake argument names ------------------------------------------------------------


def is_run_dir(path: Path) -> bool:
    return (path / "config.json").is_file() and (path / "checkpoints").is_dir()


def open_fake(spec: str, *, n: int, seed: int = 0) -> Side:
    """``--fake`` -> a sample folder's images, or a dataset split (``DIR:split``, default
    ``test``: the real-vs-real floor), or a training run sampled first.

    Run folders (``config.json`` + ``checkpoints/``) are sampled through
    ``diffscape.sample.sample_to_folder(run_dir, out_dir, n=n, seed=seed)`` into
    ``RUN/samples/evaluate-n{n}-seed{seed}/``, imported only here so that evaluation works
    without the sampling code.
    """
    head, sep, tail = spec.rpartition(":")
    path, split = (Path(head), tail) if sep and tail in SPLITS else (Path(spec), None)
    if (path / MANIFEST).is_file():
        return parse_dataset_spec(spec, default_split="test")
    if split is not None:
        raise DiffscapeError(f"{path} is not a prepared dataset, so {spec!r} names no split")
    if is_run_dir(path):
        try:
            from diffscape.sample import sample_to_folder  # type: ignore[attr-defined]
        except ImportError as e:
            raise DiffscapeError(
                f"{path} is a training run; this diffscape cannot sample it here ({e}). Run "
                f"`diffscape sample {path} --out SAMPLES` first, then `--fake SAMPLES`."
            ) from None
        out_dir = path / "samples" / f"evaluate-n{n}-seed{seed}"
        sample_to_folder(path, out_dir, n=n, seed=seed)
        return load_sample_folder(out_dir)
    return load_sample_folder(path)


# ---- evaluation --------------------------------------------------------------------------------


def _subset(total: int, n: int | None, seed: int) -> np.ndarray | None:
    """Sorted random indices of n out of total (None: all), so that a class-ordered split is
    sampled evenly. Depends only on (total, n, seed): the same split subsampled alike on the
    real or the fake side is the same images, so its cached features are found either way."""
    if n is None or n >= total:
        return None
    return np.sort(np.random.default_rng(seed).choice(total, size=n, replace=False))


def _side_classes(side: Side, indices: np.ndarray | None) -> list[str | None]:
    if isinstance(side, SampleSet):
        names = side.class_names
        return names if indices is None else [names[i] for i in indices]
    ds, split = side
    labels = np.asarray(ds.labels(split))
    labels = labels if indices is None else labels[indices]
    return [ds.classes[i] if i >= 0 else None for i in labels]


def _describe(side: Side, name: str | None) -> str:
    if isinstance(side, SampleSet):
        if name:
            return name
        parents = {
            p.parent.parent if c else p.parent
            for p, c in zip(side.paths, side.class_names, strict=True)
        }
        return str(parents.pop()) if len(parents) == 1 else "sample folder"
    ds, split = side
    return f"{ds.root}:{split}"


def _scores(
    real: dict[str, np.ndarray],
    fake: dict[str, np.ndarray],
    seed: int,
) -> dict[str, Any]:
    n_r, n_f = len(real[FEATURES_2048]), len(fake[FEATURES_2048])
    out: dict[str, Any] = {"n_real": n_r, "n_fake": n_f}
    if min(n_r, n_f) < 2:
        out["skipped"] = "fewer than 2 images on one side"
        return out
    out["fid"] = fid_from_features(real[FEATURES_2048], fake[FEATURES_2048])
    out["fid_64"] = (
        fid_from_features(real[FEATURES_64], fake[FEATURES_64])
        if FEATURES_64 in real and FEATURES_64 in fake
        else None
    )
    out["kid"] = kid_from_features(real[FEATURES_2048], fake[FEATURES_2048], seed=seed).to_json()
    return out


def evaluate(
    real: tuple[Dataset, str],
    fake: Side,
    *,
    n: int | None = None,
    n_real: int | None = None,
    per_class: bool = True,
    bootstrap: int = 0,
    seed: int = 0,
    batch: int = 32,
    inception_weights: str | os.PathLike[str] | None = None,
    extractor: FeatureExtractor | None = None,
    device: str | torch.device | None = None,
    out: str | os.PathLike[str] | None = METRICS_JSON,
    fake_name: str | None = None,
    use_cache: bool = True,
    progress: bool = True,
    print_summary: bool = True,
    say: Callable[[str], None] = log,
) -> dict[str, Any]:
    """Score ``fake`` against the real split; returns (and writes to ``out``) the metrics.

    n: generated images used (a seeded random subset when there are more); None: 10,000 on a
    GPU, 1,000 without one. n_real: real images (None: the whole split). per_class: FID/KID per
    class for class folders named like the dataset's classes. bootstrap: FID resamples for an
    interval (0: none). extractor: a feature network other than the standard Inception (tests).
    """
    t0 = time.perf_counter()
    real_ds, real_split = real
    dev = torch.device(device) if device is not None else _default_device()
    notes: list[str] = []
    warnings: list[str] = []
    if n is None:
        n, why = default_n(dev)
        notes.append(why)
        say(why)
    if n < 2:
        raise DiffscapeError(f"--n {n}: FID and KID need at least 2 generated images")

    fake_total = len(fake.images) if isinstance(fake, SampleSet) else fake[0].count(fake[1])
    real_total = real_ds.count(real_split)
    fake_idx = _subset(fake_total, n, seed)
    real_idx = _subset(real_total, n_real, seed)
    n_fake_used = fake_total if fake_idx is None else len(fake_idx)
    n_real_used = real_total if real_idx is None else len(real_idx)
    if min(n_real_used, n_fake_used) < 2:
        raise DiffscapeError(
            f"{n_real_used} real and {n_fake_used} generated images: FID and KID need at least "
            "2 on each side"
        )
    if fake_total < n:
        msg = f"only {fake_total} generated images available (asked for n={n})"
        notes.append(msg)
        say(msg)

    if extractor is None:
        weights = resolve_inception_weights(inception_weights)
        say(
            f"Inception weights: {weights.path} (sha256 {weights.sha256[:12]}, {weights.source})"
            + ("" if weights.has_logits else "; no classifier layer, so no Inception Score")
        )
        extractor = InceptionExtractor(weights, dev)
    else:
        weights = getattr(extractor, "weights", None)  # an InceptionExtractor built by the caller

    # Say up front how many images will go through the network, and how long that takes.
    def cached(ds: Dataset, split: str, idx: np.ndarray | None) -> bool:
        ident = extractor.identity()
        return use_cache and all(
            has_cached(
                cache_key(
                    content_hash=ds.content_hash,
                    split=split,
                    images=indices_digest(idx, ds.count(split)),
                    layer=layer,
                    extractor=ident,
                )
            )
            for layer in extractor.layers
        )

    to_embed = (0 if cached(real_ds, real_split, real_idx) else n_real_used) + (
        n_fake_used if isinstance(fake, SampleSet) or not cached(*fake, fake_idx) else 0
    )
    if to_embed:
        say(f"in all: {describe_plan(extractor, to_embed, batch)}")
    else:
        say("all features are cached: nothing to embed")

    real_feats, real_cached = dataset_features(
        real_ds.images(real_split),
        extractor,
        content_hash=real_ds.content_hash,
        split=real_split,
        indices=real_idx,
        batch=batch,
        use_cache=use_cache,
        desc="real",
        progress=progress,
        say=say,
    )
    if isinstance(fake, SampleSet):
        imgs = fake.images if fake_idx is None else fake.images[fake_idx]
        fake_feats = embed_images(
            imgs, extractor, batch=batch, desc="fake", progress=progress, say=say
        )
        fake_cached = False
    else:
        fake_feats, fake_cached = dataset_features(
            fake[0].images(fake[1]),
            extractor,
            content_hash=fake[0].content_hash,
            split=fake[1],
            indices=fake_idx,
            batch=batch,
            use_cache=use_cache,
            desc="fake",
            progress=progress,
            say=say,
        )

    small_n = min(n_real_used, n_fake_used) < FID_FEATURES
    if small_n:
        warnings.append(
            f"n < {FID_FEATURES} (real {n_real_used}, fake {n_fake_used}): FID at 2048 features "
            "is biased upward and its covariance singular, so FIDs are only comparable at equal "
            f"n; lead with KID (unbiased). The standard is >= {GPU_DEFAULT_N:,} generated images "
            "against the whole real split."
        )

    result: dict[str, Any] = {
        "real": {
            "dataset": str(real_ds.root),
            "split": real_split,
            "content_hash": real_ds.content_hash,
            "n_available": real_total,
            "features_from_cache": real_cached,
        },
        "fake": {
            "source": _describe(fake, fake_name),
            "kind": "samples" if isinstance(fake, SampleSet) else "dataset",
            "n_available": fake_total,
            "features_from_cache": fake_cached,
        },
        **_scores(real_feats, fake_feats, seed),
    }
    result["lead"] = "kid" if small_n else "fid"
    if bootstrap > 0:
        say(f"bootstrap: {bootstrap} FID resamples (a few seconds each on a CPU)")
        result["fid_bootstrap"] = bootstrap_fid(
            real_feats[FEATURES_2048], fake_feats[FEATURES_2048], samples=bootstrap, seed=seed
        ).to_json()
    else:
        result["fid_bootstrap"] = None

    if extractor.has_logits and LOGITS in fake_feats:
        mean, std = inception_score_from_logits(fake_feats[LOGITS], seed=seed)
        result["inception_score"] = {"mean": mean, "std": std, "splits": IS_SPLITS}
    else:
        result["inception_score"] = None
        result["inception_score_unavailable"] = extractor.logits_reason or "no logits"

    if per_class:
        result["per_class"] = _per_class(
            real, fake, real_idx, fake_idx, real_feats, fake_feats, seed, warnings
        )
    result["warnings"] = warnings
    result["notes"] = notes
    result["weights"] = weights.to_json() if weights is not None else None
    result["features"] = extractor.identity()
    result["seed"] = seed
    result["device"] = str(dev)
    result["versions"] = versions()
    result["cache_dir"] = str(cache_dir())
    result["seconds"] = round(time.perf_counter() - t0, 1)

    if out is not None:
        write_json(Path(out), result)
        result_path = str(out)
    else:
        result_path = None
    if print_summary:
        print(format_summary(result, result_path))
    return result


def _per_class(
    real: tuple[Dataset, str],
    fake: Side,
    real_idx: np.ndarray | None,
    fake_idx: np.ndarray | None,
    real_feats: dict[str, np.ndarray],
    fake_feats: dict[str, np.ndarray],
    seed: int,
    warnings: list[str],
) -> dict[str, Any] | None:
    """FID/KID per class, for fake images whose class folder (or label) names a dataset class."""
    classes = real[0].classes
    fake_classes = _side_classes(fake, fake_idx)
    present = {c for c in fake_classes if c is not None and c != UNCONDITIONAL}
    if not classes or not present:
        return None
    unknown = sorted(present - set(classes))
    if unknown:
        warnings.append(
            f"class folders not in the dataset's classes, left out of per-class scores: "
            f"{', '.join(unknown)}"
        )
    real_classes = np.array(_side_classes(real, real_idx), dtype=object)
    fake_arr = np.array(fake_classes, dtype=object)
    out: dict[str, Any] = {}
    for c in classes:
        if c not in present:
            continue
        r, f = real_classes == c, fake_arr == c
        out[c] = _scores(
            {k: v[r] for k, v in real_feats.items()},
            {k: v[f] for k, v in fake_feats.items()},
            seed,
        )
    return out or None


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    os.chmod(tmp, 0o644)  # mkstemp makes 0600; other readers may share it
    os.replace(tmp, path)


# ---- summary -------------------------------------------------------------------------------


def _kid_text(kid: dict[str, Any] | None) -> str:
    return "-" if not kid else f"{kid['mean']:.4f} ± {kid['std']:.4f}"


def _num(x: float | None, fmt: str = ".2f") -> str:
    return "-" if x is None else format(x, fmt)


def format_summary(r: dict[str, Any], path: str | None = None) -> str:
    """One screen: the lead metric first, the sample sizes, warnings, per class, provenance."""
    lines = [
        f"real  {r['real']['dataset']}:{r['real']['split']}  n={r['n_real']}",
        f"fake  {r['fake']['source']}  n={r['n_fake']}",
    ]
    lines += [f"! {w}" for w in r["warnings"]]
    kid = r.get("kid")
    kid_line = (
        f"KID     {_kid_text(kid)}   ({kid['subsets']} subsets of {kid['subset_size']})"
        if kid
        else "KID     -"
    )
    fid_line = f"FID     {_num(r.get('fid'))}"
    if r.get("fid_bootstrap"):
        b = r["fid_bootstrap"]
        fid_line += (
            f"   [{b['confidence']:.0%} bootstrap {b['low']:.2f} - {b['high']:.2f}, "
            f"{b['samples']} resamples]"
        )
    fid64_line = f"FID-64  {_num(r.get('fid_64'))}"
    main = (
        [kid_line, fid_line, fid64_line] if r["lead"] == "kid" else [fid_line, fid64_line, kid_line]
    )
    lines += main
    if r.get("inception_score"):
        s = r["inception_score"]
        lines.append(f"IS      {s['mean']:.2f} ± {s['std']:.2f}")
    else:
        lines.append(f"IS      unavailable: {r.get('inception_score_unavailable')}")
    per_class = r.get("per_class")
    if per_class:
        width = max(8, *(len(c) for c in per_class))
        lines.append(
            f"{'class':<{width}}  {'n_real':>6} {'n_fake':>6}  {'KID':>17}  {'FID':>8}  {'FID-64':>7}"
        )
        for c, s in per_class.items():
            lines.append(
                f"{c:<{width}}  {s['n_real']:>6} {s['n_fake']:>6}  {_kid_text(s.get('kid')):>17}  "
                f"{_num(s.get('fid')):>8}  {_num(s.get('fid_64')):>7}"
            )
    w = r.get("weights")
    ident = (
        f"weights sha256 {w['sha256'][:12]} ({w['source']})" if w else "custom feature extractor"
    )
    v = r["versions"]
    lines.append(
        f"{ident}; torch {v['torch']}, torchmetrics {v['torchmetrics']}, "
        f"torch-fidelity {v['torch-fidelity']}; {r['seconds']} s"
    )
    if path:
        lines.append(f"wrote {path}")
    return "\n".join(lines)
