"""Generated images (or a second dataset split) against a real split: FID, KID, IS, per class.

``evaluate`` embeds both sides once (real features cached by the dataset's content hash), then
computes every score from features: FID at 2048 and at 64 features (``fid64``; with the fid64
setting on 150 vs 150 images, the seed report's), KID mean ± std, precision and recall
(Kynkäänniemi et al. 2019), the Inception Score when genuine logits exist, per-class FID/KID for
class-conditional samples, and optionally a bootstrap interval for FID. The memorisation check
(:mod:`.memorisation`) finds each generated image's nearest training image in Inception space
and in pixels. Images reach the network resized as ``resize`` says
(:class:`~diffscape.metrics.features.InceptionExtractor`).

Sample sizes: FID is biased upward at small n (and at n < 2048 its covariance is singular), so
the standard is 10k-50k generated images against the whole real split. On a CPU-only machine the
default drops to 1,000 generated images (Inception runs at a few images per second) and the
summary leads with KID, which is unbiased at any n.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffscape.core import layout
from diffscape.core.errors import DiffscapeError
from diffscape.data.dataset import SPLITS, Dataset, parse_dataset_spec
from diffscape.data.imagefolder import SampleSet, load_sample_folder
from diffscape.metrics import registry
from diffscape.metrics.features import (
    FEATURES_64,
    FEATURES_2048,
    LOGITS,
    InceptionExtractor,
    cache_dir,
    check_cache_dir,
    dataset_features,
    describe_plan,
    embed_images,
    is_cached,
    log,
)
from diffscape.metrics.memorisation import images_of, memorisation_record, near_copies, subset
from diffscape.metrics.scores import (
    IS_SPLITS,
    PRC_K,
    bootstrap_fid,
    fid_from_features,
    inception_score_from_logits,
    kid_from_features,
    precision_recall,
)
from diffscape.metrics.weights import resolve_inception_weights
from diffscape.settings.sections import EvaluateSettings

GPU_DEFAULT_N = 10_000  # generated images on a GPU machine: the usual FID-10k
CPU_DEFAULT_N = 1_000  # generated images without a GPU (about 4-5 min of Inception on 2 cores)
CPU_MEMORISATION_N = 500  # training images embedded for memorisation without a GPU (~1 min)
FID_FEATURES = 2048  # below this many images the 2048-d covariance is singular and FID biased
TRAIN = "train"  # the split a model learns from: what memorisation compares with

Side = SampleSet | tuple[Dataset, str]
Features = dict[str, np.ndarray]


def default_n(device: torch.device | str | None = None) -> tuple[int, str]:
    """(n generated images, why) for this machine."""
    if _device(device).type == "cpu":
        return CPU_DEFAULT_N, (
            f"no GPU: using n={CPU_DEFAULT_N:,} generated images (the standard is "
            f"{GPU_DEFAULT_N:,}; pass --n to change)"
        )
    return GPU_DEFAULT_N, f"using n={GPU_DEFAULT_N:,} generated images (pass --n to change)"


def _device(device: torch.device | str | None) -> torch.device:
    if device is not None:
        return torch.device(device)
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


def _split_spec(spec: str) -> tuple[Path, str | None]:
    head, sep, tail = spec.rpartition(":")
    return (Path(head), tail) if sep and tail in SPLITS else (Path(spec), None)


def fake_is_run(spec: str) -> bool:
    """Whether ``--fake`` names a training run (which open_fake samples: minutes of work)."""
    path, split = _split_spec(spec)
    return split is None and layout.is_run_dir(path) and not layout.is_dataset_dir(path)


def open_fake(spec: str, *, n: int, seed: int = 0) -> Side:
    """``--fake`` -> a sample folder's images, or a dataset split (``DIR:split``, default
    ``test``: the real-vs-real floor), or a training run sampled first into its
    ``samples/evaluate-n{n}-seed{seed}/`` (reused once finished; torch and diffusers are
    imported only then)."""
    path, split = _split_spec(spec)
    if layout.is_dataset_dir(path):
        return parse_dataset_spec(spec, default_split="test")
    if split is not None:
        raise DiffscapeError(f"{path} is not a prepared dataset, so {spec!r} names no split")
    if layout.is_run_dir(path):
        out_dir = path / layout.TRAIN_SAMPLES / layout.evaluate_samples_name(n, seed)
        if not layout.is_samples_dir(out_dir):
            from diffscape.sample import sample_to_folder

            sample_to_folder(path, out_dir, n=n, seed=seed)
        return load_sample_folder(out_dir)
    return load_sample_folder(path)


# ---- planning: which images, which network, what is cached -------------------------------------


def _subset(total: int, n: int | None, seed: int) -> np.ndarray | None:
    """Sorted random indices of n out of total (None: all), so that a class-ordered split is
    sampled evenly. Depends only on (total, n, seed): the same split subsampled alike on the
    real or the fake side is the same images, so its cached features are found either way."""
    if n is None or n >= total:
        return None
    return np.sort(np.random.default_rng(seed).choice(total, size=n, replace=False))


def _count(side: Side) -> int:
    return len(side.images) if isinstance(side, SampleSet) else side[0].count(side[1])


@dataclass(frozen=True)
class _Plan:
    """Which images of each side are scored (None: all of them)."""

    real_idx: np.ndarray | None
    fake_idx: np.ndarray | None
    real_total: int
    fake_total: int
    # memorisation's training images in Inception space (None: all), when it embeds the train
    # split itself (the real side is another split); else the real side's features serve
    train_idx: np.ndarray | None = None
    train_total: int = 0

    @property
    def n_real(self) -> int:
        return self.real_total if self.real_idx is None else len(self.real_idx)

    @property
    def n_fake(self) -> int:
        return self.fake_total if self.fake_idx is None else len(self.fake_idx)


def plan_images(real: Side, fake: Side, n: int, settings: EvaluateSettings) -> _Plan:
    """Which images are scored; refused here, before anything is embedded: fewer than 2 on a
    side, or a feature cache that could not take the features."""
    if settings.cache:
        check_cache_dir()
    real_total, fake_total = _count(real), _count(fake)
    ds, split = real
    embeds_train = settings.memorisation and split != TRAIN and TRAIN in ds.splits
    train_total = ds.count(TRAIN) if embeds_train else 0
    mem_n = settings.memorisation_n
    if mem_n is None and _device(settings.device).type == "cpu":
        mem_n = CPU_MEMORISATION_N
    plan = _Plan(
        real_idx=_subset(real_total, settings.n_real, settings.seed),
        fake_idx=_subset(fake_total, n, settings.seed),
        real_total=real_total,
        fake_total=fake_total,
        train_idx=_subset(train_total, mem_n, settings.seed) if train_total else None,
        train_total=train_total,
    )
    if min(plan.n_real, plan.n_fake) < 2:
        raise DiffscapeError(
            f"{plan.n_real} real and {plan.n_fake} generated images: FID and KID need at least "
            "2 on each side"
        )
    return plan


def resolve_extractor(
    settings: EvaluateSettings, say: Callable[[str], None] = log
) -> InceptionExtractor:
    """The standard FID Inception network, from the weights ``settings`` names (or found)."""
    weights = resolve_inception_weights(settings.inception_weights)
    say(
        f"Inception weights: {weights.path} (sha256 {weights.sha256[:12]}, {weights.source})"
        + ("" if weights.has_logits else "; no classifier layer, so no Inception Score")
    )
    return InceptionExtractor(weights, _device(settings.device), resize=settings.resize)


@dataclass(frozen=True)
class _Job:
    """One evaluation: what each of its steps reads."""

    real: tuple[Dataset, str]
    fake: Side
    s: EvaluateSettings
    plan: _Plan
    extractor: InceptionExtractor
    say: Callable[[str], None]
    progress: bool


def _side_cached(side: Side, idx: np.ndarray | None, ext: InceptionExtractor, use: bool) -> bool:
    if isinstance(side, SampleSet) or not use:
        return False
    ds, split = side
    return is_cached(
        ext, content_hash=ds.content_hash, split=split, indices=idx, n_total=_count(side)
    )


def _say_plan(job: _Job) -> None:
    """Say up front how many images will go through the network, and how long that takes:
    both sides and memorisation's training images, less what the cache holds."""
    plan, ext, s = job.plan, job.extractor, job.s
    n_train = plan.train_total if plan.train_idx is None else len(plan.train_idx)
    sides = [(job.real, plan.real_idx, plan.n_real), (job.fake, plan.fake_idx, plan.n_fake)]
    sides += [((job.real[0], TRAIN), plan.train_idx, n_train)] if plan.train_total else []
    to_embed = sum(0 if _side_cached(side, idx, ext, s.cache) else n for side, idx, n in sides)
    if to_embed:
        job.say(f"in all: {describe_plan(ext, to_embed, s.batch)}")
    else:
        job.say("all features are cached: nothing to embed")


# ---- embedding ---------------------------------------------------------------------------------


def side_features(
    job: _Job, side: Side, idx: np.ndarray | None, desc: str
) -> tuple[Features, bool]:
    """Features of the chosen images of one side; a dataset split's through the cache.
    Returns (features, came_from_cache)."""
    kw = {"batch": job.s.batch, "desc": desc, "progress": job.progress, "say": job.say}
    if isinstance(side, SampleSet):
        return embed_images(subset(side.images, idx), job.extractor, **kw), False
    ds, split = side
    where = {"content_hash": ds.content_hash, "split": split, "indices": idx}
    return dataset_features(ds.images(split), job.extractor, use_cache=job.s.cache, **where, **kw)


# ---- scores ------------------------------------------------------------------------------------


def score_pair(real: Features, fake: Features, seed: int) -> dict[str, Any]:
    """n, FID (2048 and 64 features), KID and the registry's computed metrics of one pair of
    feature sets."""
    r, f = real[FEATURES_2048], fake[FEATURES_2048]
    out: dict[str, Any] = {"n_real": len(r), "n_fake": len(f)}
    if min(len(r), len(f)) < 2:
        return out | {"skipped": "fewer than 2 images on one side"}
    out["fid"] = fid_from_features(r, f)
    out["fid64"] = fid_from_features(real[FEATURES_64], fake[FEATURES_64])
    out["kid"] = asdict(kid_from_features(r, f, seed=seed))
    return out | registry.computed(real, fake)


def _side_classes(side: Side, indices: np.ndarray | None) -> list[str | None]:
    if isinstance(side, SampleSet):
        names = side.class_names
        return names if indices is None else [names[i] for i in indices]
    ds, split = side
    labels = np.asarray(ds.labels(split))
    labels = labels if indices is None else labels[indices]
    return [ds.classes[i] if i >= 0 else None for i in labels]


def per_class_scores(
    job: _Job, feats: tuple[Features, Features], warnings: list[str]
) -> dict[str, Any] | None:
    """FID/KID per class, for fake images whose class folder (or label) names a dataset class."""
    classes = job.real[0].classes
    fake_classes = _side_classes(job.fake, job.plan.fake_idx)
    present = {c for c in fake_classes if c is not None and c != layout.UNCONDITIONAL}
    if not classes or not present:
        return None
    unknown = sorted(present - set(classes))
    if unknown:
        warnings.append(
            f"class folders not in the dataset's classes, left out of per-class scores: "
            f"{', '.join(unknown)}"
        )
    real_arr = np.array(_side_classes(job.real, job.plan.real_idx), dtype=object)
    fake_arr = np.array(fake_classes, dtype=object)
    out: dict[str, Any] = {}
    for c in (c for c in classes if c in present):
        r, f = real_arr == c, fake_arr == c
        out[c] = score_pair(
            {k: v[r] for k, v in feats[0].items()},
            {k: v[f] for k, v in feats[1].items()},
            job.s.seed,
        )
    return out or None


def _more_scores(job: _Job, real: Features, fake: Features) -> dict[str, Any]:
    """The FID bootstrap interval, the Inception Score and precision and recall (each when asked
    for and possible), and FID on the 64-d features with its sizes (``fid64_n``: real,
    generated): of every scored image, or with ``fid64`` of seeded subsets of fid64_n images
    per side (the seed report's yardstick, 150 vs 150)."""
    s, extractor = job.s, job.extractor
    out: dict[str, Any] = {"fid_bootstrap": None, "fid_interval": None}
    r, f = real[FEATURES_2048], fake[FEATURES_2048]
    if s.bootstrap > 0:
        job.say(f"bootstrap: {s.bootstrap} FID resamples (a few seconds each on a CPU)")
        b = bootstrap_fid(r, f, samples=s.bootstrap, seed=s.seed)
        out["fid_bootstrap"] = asdict(b)
        out["fid_interval"] = {"low": b.low, "high": b.high, "n_boot": b.samples}
    if extractor.has_logits:
        mean, std = inception_score_from_logits(fake[LOGITS], seed=s.seed)
        out["inception_score"] = {"mean": mean, "std": std, "splits": IS_SPLITS}
    else:
        out["inception_score"] = None
        out["inception_score_unavailable"] = extractor.logits_reason or "no logits"
    out |= {"precision": None, "recall": None, "prc_k": PRC_K}
    if s.precision_recall and min(len(r), len(f)) > PRC_K:
        dev = extractor.device if extractor.device.type == "cuda" else "cpu"
        pr = precision_recall(r, f, k=PRC_K, device=dev)
        out |= {"precision": pr.precision, "recall": pr.recall}
    r, f = real[FEATURES_64], fake[FEATURES_64]
    if s.fid64:
        r_idx, f_idx = _subset(len(r), s.fid64_n, s.seed), _subset(len(f), s.fid64_n, s.seed + 1)
        r, f = (r if r_idx is None else r[r_idx]), (f if f_idx is None else f[f_idx])
    return out | {"fid64": fid_from_features(r, f), "fid64_n": [len(r), len(f)]}


def _memorisation(job: _Job, feats: tuple[Features, Features]) -> dict[str, Any]:
    """Each generated image's nearest training image: in Inception space (the real side's
    features when it is the train split, else the train split's: ``plan.train_idx``, a seeded
    subset on a CPU) and in pixels (every training image)."""
    (ds, split), plan, s = job.real, job.plan, job.s
    n_train = ds.count(TRAIN) if TRAIN in ds.splits else 0
    if n_train < 2:
        why = "the dataset has fewer than 2 training images (no train split?)"
        return {"memorisation": None, "memorisation_unavailable": why}
    if split == TRAIN:
        train_feats, train_idx, source = feats[0], plan.real_idx, "real-features"
    else:
        train_idx = plan.train_idx
        train_feats, _ = side_features(job, (ds, TRAIN), train_idx, "train")
        source = "train-split"
    all_train = np.arange(n_train)
    fake_ids = np.arange(plan.fake_total) if plan.fake_idx is None else plan.fake_idx
    kw = {"threshold": s.near_copy, "fake_ids": fake_ids, "seed": s.seed}
    inception = near_copies(
        feats[1][FEATURES_2048], train_feats[FEATURES_2048],
        train_ids=all_train if train_idx is None else train_idx, **kw,
    )  # fmt: skip
    fake_px, train_px = subset(images_of(job.fake), plan.fake_idx), ds.images(TRAIN)
    pixel, why = None, ""
    if fake_px.shape[1:] != train_px.shape[1:]:
        why = (
            f"generated images {fake_px.shape[1:]} and training images {train_px.shape[1:]} differ"
        )
    else:
        job.say(f"memorisation: nearest of {n_train} training images, in pixels")
        pixel = near_copies(fake_px, train_px, train_ids=all_train, **kw)
    return {"memorisation": memorisation_record(inception, pixel, source, why)}


def _small_n_warning(plan: _Plan) -> str | None:
    if min(plan.n_real, plan.n_fake) >= FID_FEATURES:
        return None
    return (
        f"n < {FID_FEATURES} (real {plan.n_real}, fake {plan.n_fake}): FID at 2048 features "
        "is biased upward and its covariance singular, so FIDs are only comparable at equal "
        f"n; lead with KID (unbiased). The standard is >= {GPU_DEFAULT_N:,} generated images "
        "against the whole real split."
    )


def _sides_record(job: _Job, fake_name: str, cached: tuple[bool, bool]) -> dict[str, Any]:
    real_ds, real_split = job.real
    fake = job.fake
    return {
        "real": {
            "dataset": str(real_ds.root),
            "split": real_split,
            "content_hash": real_ds.content_hash,
            "n_available": job.plan.real_total,
            "features_from_cache": cached[0],
        },
        "fake": {
            "source": fake_name if isinstance(fake, SampleSet) else f"{fake[0].root}:{fake[1]}",
            "kind": "samples" if isinstance(fake, SampleSet) else "dataset",
            "n_available": job.plan.fake_total,
            "features_from_cache": cached[1],
        },
    }


# ---- the whole evaluation ----------------------------------------------------------------------


def evaluate(
    real: tuple[Dataset, str],
    fake: Side,
    settings: EvaluateSettings | None = None,
    *,
    extractor: InceptionExtractor | None = None,
    fake_name: str = "sample folder",
    progress: bool = True,
    say: Callable[[str], None] = log,
) -> dict[str, Any]:
    """Score ``fake`` against the real split; returns the metrics (``metrics.json``'s content).

    Writes and prints nothing (``say`` gets progress lines): see :func:`format_summary`.
    ``extractor``: a network built once and shared by several calls, or a stand-in (tests); None
    builds the FID Inception network from ``settings``. ``fake_name``: what the record calls a
    sample folder (the CLI's ``--fake``).
    """
    t0 = time.perf_counter()
    s = settings or EvaluateSettings()
    notes: list[str] = []
    n = s.n
    if n is None:
        n, why = default_n(_device(s.device) if extractor is None else extractor.device)
        notes.append(why)
        say(why)
    plan = plan_images(real, fake, n, s)
    if plan.fake_total < n:
        notes.append(f"only {plan.fake_total} generated images available (asked for n={n})")
        say(notes[-1])
    extractor = extractor or resolve_extractor(s, say)
    resize = getattr(extractor, "resize", None)  # an InceptionExtractor's, not a stand-in's
    if resize not in (None, s.resize):
        raise ValueError(f"the network resizes with {resize!r}, the settings say {s.resize!r}")
    job = _Job(real, fake, s, plan, extractor, say, progress)
    _say_plan(job)
    real_feats, real_cached = side_features(job, real, plan.real_idx, "real")
    fake_feats, fake_cached = side_features(job, fake, plan.fake_idx, "fake")

    small_n = _small_n_warning(plan)
    warnings = [small_n] if small_n else []
    feats = (real_feats, fake_feats)
    result = {
        **_sides_record(job, fake_name, (real_cached, fake_cached)),
        **score_pair(real_feats, fake_feats, s.seed),
        "lead": "kid" if small_n else "fid",
        "resize": resize,
        **_more_scores(job, real_feats, fake_feats),
    }
    if s.memorisation:
        result |= _memorisation(job, feats)
    if s.per_class:
        result["per_class"] = per_class_scores(job, feats, warnings)
    result |= {"warnings": warnings, "notes": notes}
    return result | _provenance(extractor, s.seed, t0)


def _provenance(extractor: InceptionExtractor, seed: int, t0: float) -> dict:
    """What the scores were made with: the network, seed, device, versions, cache, time."""
    weights = getattr(extractor, "weights", None)  # an InceptionExtractor's, not a stand-in's
    return {
        "weights": weights.to_json() if weights is not None else None,
        "features": extractor.identity(),
        "seed": seed,
        "device": str(extractor.device),
        "versions": versions(),
        "cache_dir": str(cache_dir()),
        "seconds": round(time.perf_counter() - t0, 1),
    }


# ---- summary -------------------------------------------------------------------------------


def _score_lines(r: dict[str, Any]) -> list[str]:
    """Every registered metric evaluate() gave (the lead one first) with the images it was
    measured on; then what the bootstrap, the copies check and the Inception Score add."""
    recs = registry.records(r)
    metrics = [m for m in registry.METRICS if m.source == registry.EVALUATE]
    metrics = [m for m in metrics if m.value(recs) is not None]
    metrics.sort(key=lambda m: m.key != r.get("lead"))
    lines = []
    for m in metrics:
        n = " / ".join(map(str, m.sizes_of(recs)))
        lines.append(f"{m.label:<11} {m.shown(recs)}" + (f"   (n {n})" if n else ""))
    if r.get("fid_bootstrap"):
        b = r["fid_bootstrap"]
        lines.append(
            f"{'':<11} FID's {b['confidence']:.0%} bootstrap interval {b['low']:.2f} - "
            f"{b['high']:.2f} ({b['samples']} resamples)"
        )
    lines += _copies_lines(r)
    s = r.get("inception_score")
    is_text = f"{s['mean']:.2f} ± {s['std']:.2f}" if s else "unavailable: "
    return [*lines, f"{'IS':<11} {is_text}{'' if s else r.get('inception_score_unavailable')}"]


def _copies_lines(r: dict[str, Any]) -> list[str]:
    """The memorisation check, in pixels as well as in Inception space (when computed)."""
    m = r.get("memorisation")
    if not m:
        why = r.get("memorisation_unavailable")
        return [f"{'copies':<11} unavailable: {why}"] if why else []
    px = (
        f"pixels {m['pixel_share']:.1%} (median ratio {m['pixel_median_ratio']:.2f}, "
        f"{m['pixel_n_train']:,} training images)"
        if m.get("pixel_share") is not None
        else f"pixels: {m.get('pixel_unavailable', 'not computed')}"
    )
    return [
        f"{'copies':<11} {m['share']:.1%} near-copies of training images (ratio < "
        f"{m['threshold']:g}; Inception over {m['n_train']:,} training images, median ratio "
        f"{m['median_ratio']:.2f}); {px}"
    ]


def _per_class_lines(r: dict[str, Any]) -> list[str]:
    """A line per class: its image counts and every registered metric it has."""
    per_class, recs = r.get("per_class"), registry.records(r)
    if not per_class:
        return []
    metrics = [m for m in registry.METRICS if m.source == registry.EVALUATE]
    cols = [(m.label, [m.of_class(c) for c in per_class]) for m in metrics]
    cols = [(label, col) for label, col in cols if any(x.value(recs) is not None for x in col)]
    width = max(8, *(len(c) for c in per_class))
    head = f"{'class':<{width}}  {'n_real':>6} {'n_fake':>6}"
    lines = [head + "".join(f"  {label:>17}" for label, _ in cols)]
    for i, (c, s) in enumerate(per_class.items()):
        cells = "".join(f"  {col[i].shown(recs):>17}" for _, col in cols)
        lines.append(f"{c:<{width}}  {s['n_real']:>6} {s['n_fake']:>6}{cells}")
    return lines


def format_summary(r: dict[str, Any], path: str | os.PathLike[str] | None = None) -> str:
    """One screen: the lead metric first, the sample sizes, warnings, per class, provenance."""
    lines = [
        f"real  {r['real']['dataset']}:{r['real']['split']}  n={r['n_real']}",
        f"fake  {r['fake']['source']}  n={r['n_fake']}",
    ]
    lines += [f"! {w}" for w in r["warnings"]]
    lines += _score_lines(r)
    lines += _per_class_lines(r)
    w = r.get("weights")
    ident = (
        f"weights sha256 {w['sha256'][:12]} ({w['source']})" if w else "custom feature extractor"
    )
    v = r["versions"]
    resize = {"tf1": "TF1 resize", "torch": "torch antialiased resize"}.get(r.get("resize"), "")
    ident += f", {resize}" if resize else ""
    lines.append(
        f"{ident}; torch {v['torch']}, torchmetrics {v['torchmetrics']}, "
        f"torch-fidelity {v['torch-fidelity']}; {r['seconds']} s"
    )
    if path:
        lines.append(f"wrote {path}")
    return "\n".join(lines)
