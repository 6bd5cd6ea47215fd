"""FID, KID and Inception Score computed from features (not images).

Features come from :mod:`diffscape.metrics.features`, so that real-set features can be cached and
one embedding pass serves every score. The math is torchmetrics' own where it exposes it
(``_compute_fid``, ``poly_mmd``); what is written here is only what its ``Metric`` classes do not
offer as functions: statistics from a feature matrix, and subset / split sampling driven by an
explicit ``torch.Generator`` instead of the global RNG (so a score depends only on its seed and
never moves the caller's random state).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torchmetrics.image.fid import _compute_fid
from torchmetrics.image.kid import maximum_mean_discrepancy, poly_kernel, poly_mmd

KID_SUBSETS = 100  # subsets drawn to get KID's mean and std (torchmetrics' default)
KID_MAX_SUBSET_SIZE = 1000  # images per subset, capped by n (torchmetrics' default size)
# Precompute KID's kernel matrices up to this many entries in all (8 bytes each: 200 MB).
KID_MAX_KERNEL_ENTRIES = 25_000_000
IS_SPLITS = 10  # groups the Inception Score is averaged over (Salimans et al. 2016)


def _generator(seed: int | torch.Generator) -> torch.Generator:
    if isinstance(seed, torch.Generator):
        return seed
    return torch.Generator().manual_seed(int(seed))


def fid_from_features(real: np.ndarray | torch.Tensor, fake: np.ndarray | torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (Heusel et al. 2017): each
    side's mean and unbiased covariance in float64, as torchmetrics' FID accumulates them, into
    its ``_compute_fid`` (sqrt of the eigenvalues of sigma1 @ sigma2)."""
    stats = []
    for features in (real, fake):
        f = torch.as_tensor(features).double()
        stats += [f.mean(dim=0), torch.cov(f.T)]
    return float(_compute_fid(*stats))


@dataclass(frozen=True)
class KID:
    mean: float
    std: float  # over subsets (population std, as torchmetrics reports it)
    subset_size: int
    subsets: int


def kid_subset_size(n_real: int, n_fake: int) -> int:
    """torchmetrics' 1000 images per subset, shrunk for small sets. Where the subsets would hold
    the whole of the smaller set, every subset of it is the same and the std over subsets says
    nothing of that side's sampling noise (with n_real == n_fake it is exactly 0), so take half
    of it instead. KID's mean is unbiased at any subset size."""
    n = min(n_real, n_fake)
    size = min(KID_MAX_SUBSET_SIZE, n)
    return max(2, n // 2) if size == n else size


def kid_from_features(
    real: np.ndarray | torch.Tensor,
    fake: np.ndarray | torch.Tensor,
    *,
    subsets: int = KID_SUBSETS,
    subset_size: int | None = None,
    seed: int | torch.Generator = 0,
    dtype: torch.dtype = torch.float64,
) -> KID:
    """Kernel Inception Distance (Bińkowski et al. 2018): unbiased MMD² with the cubic polynomial
    kernel, mean ± std over random subsets of ``subset_size`` (default :func:`kid_subset_size`).

    Draws the same permutations as torchmetrics' ``KernelInceptionDistance.compute`` (one
    ``randperm`` of the real set, then one of the fake set, per subset) but from ``seed`` rather
    than the global RNG, and accepts n below 1000 by shrinking the subsets. float64 by default:
    the MMD is a small difference of large kernel sums (float32 moved it by 4e-4 relative in a
    measured case).
    """
    f_real, f_fake = torch.as_tensor(real).to(dtype), torch.as_tensor(fake).to(dtype)
    n_real, n_fake = f_real.shape[0], f_fake.shape[0]
    size = kid_subset_size(n_real, n_fake) if subset_size is None else subset_size
    g = _generator(seed)
    # Subsets overlap, so when the three full kernel matrices fit in memory it is ~10x cheaper
    # to compute them once and index them (same numbers, same draws) than to recompute
    # torchmetrics' per-subset kernels.
    whole = n_real**2 + n_fake**2 + n_real * n_fake <= KID_MAX_KERNEL_ENTRIES
    if whole:
        k_rr, k_ff = poly_kernel(f_real, f_real), poly_kernel(f_fake, f_fake)
        k_rf = poly_kernel(f_real, f_fake)
    scores = []
    for _ in range(subsets):
        r = torch.randperm(n_real, generator=g)[:size]
        f = torch.randperm(n_fake, generator=g)[:size]
        if whole:
            scores.append(maximum_mean_discrepancy(k_rr[r][:, r], k_rf[r][:, f], k_ff[f][:, f]))
        else:
            scores.append(poly_mmd(f_real[r], f_fake[f]))
    s = torch.stack(scores)
    return KID(float(s.mean()), float(s.std(unbiased=False)), size, subsets)


def inception_score_from_logits(
    logits: np.ndarray | torch.Tensor, *, splits: int = IS_SPLITS, seed: int | torch.Generator = 0
) -> tuple[float, float]:
    """Inception Score (Salimans et al. 2016): exp(E KL(p(y|x) || p(y))), mean ± std over
    ``splits`` groups. The same steps as torchmetrics' ``InceptionScore.compute`` (on
    ``logits_unbiased``), with the shuffle drawn from ``seed`` instead of the global RNG.
    Only meaningful with a genuine classifier layer (see ``InceptionWeights.has_logits``)."""
    x = torch.as_tensor(logits).double()
    x = x[torch.randperm(x.shape[0], generator=_generator(seed))]
    prob, log_prob = x.softmax(dim=1), x.log_softmax(dim=1)
    scores = []
    for p, lp in zip(prob.chunk(splits, dim=0), log_prob.chunk(splits, dim=0), strict=True):
        mean_p = p.mean(dim=0, keepdim=True)
        scores.append((p * (lp - mean_p.log())).sum(dim=1).mean().exp())
    s = torch.stack(scores)
    return float(s.mean()), float(s.std()) if len(s) > 1 else float("nan")


@dataclass(frozen=True)
class Interval:
    low: float
    high: float
    std: float
    samples: int
    confidence: float


def bootstrap_fid(
    real: np.ndarray | torch.Tensor,
    fake: np.ndarray | torch.Tensor,
    *,
    samples: int,
    seed: int = 0,
    confidence: float = 0.95,
) -> Interval:
    """Percentile bootstrap of FID: both sets resampled with replacement ``samples`` times.
    Resampling repeats images, which biases each FID up a little; read the width, not the
    position. Costs one FID (a few seconds at 2048 features on a CPU) per sample."""
    f_real, f_fake = torch.as_tensor(real).double(), torch.as_tensor(fake).double()
    g = _generator(seed)
    values = []
    for _ in range(samples):
        r = f_real[torch.randint(0, f_real.shape[0], (f_real.shape[0],), generator=g)]
        f = f_fake[torch.randint(0, f_fake.shape[0], (f_fake.shape[0],), generator=g)]
        values.append(fid_from_features(r, f))
    v = np.asarray(values)
    alpha = (1.0 - confidence) / 2
    return Interval(
        low=float(np.quantile(v, alpha)),
        high=float(np.quantile(v, 1 - alpha)),
        std=float(v.std(ddof=1)) if samples > 1 else 0.0,
        samples=samples,
        confidence=confidence,
    )


PRC_K = 3  # neighbourhood size of Kynkäänniemi et al. 2019 (and torch-fidelity's default)
# Rows of one distance block: rows x n float32 entries kept at once (2**26 entries: 256 MB).
PRC_MAX_BLOCK_ENTRIES = 1 << 26


@dataclass(frozen=True)
class PrecisionRecall:
    precision: float  # share of generated images inside the real manifold (fidelity)
    recall: float  # share of real images inside the generated manifold (coverage)
    k: int


def precision_recall(
    real: np.ndarray | torch.Tensor,
    fake: np.ndarray | torch.Tensor,
    *,
    k: int = PRC_K,
    device: torch.device | str = "cpu",
) -> PrecisionRecall:
    """Improved precision and recall (Kynkäänniemi et al. 2019; each set's manifold is the union
    of balls reaching every feature's k-th nearest neighbour in its own set) by torch-fidelity's
    own row-block ``calculate_precision_recall_part``, no block over ``PRC_MAX_BLOCK_ENTRIES``."""
    from torch_fidelity.metric_prc import calculate_precision_recall_part

    f_real = torch.as_tensor(real).float().to(device)
    f_fake = torch.as_tensor(fake).float().to(device)
    n = max(len(f_real), len(f_fake))
    rows = max(1, min(n, PRC_MAX_BLOCK_ENTRIES // n))
    # torch-fidelity's convention: features_1 generated, features_2 real.
    p, r = calculate_precision_recall_part(f_fake, f_real, neighborhood=k, batch_size=rows)
    return PrecisionRecall(float(p), float(r), k)
