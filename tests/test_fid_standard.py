"""Standard FID preprocessing: diffscape's default features are torch-fidelity's own.

Published FIDs (TensorFlow's original code, pytorch-fid's TF port, torch-fidelity) resize to
299 px with TensorFlow 1's bilinear resize; torchmetrics >= 1.8 resizes with torch's antialiased
bilinear instead, which gives other features. Here diffscape's extractor (resize="tf1", the
default) is compared with torch-fidelity's ``FeatureExtractorInceptionV3`` loaded from the same
weights file, on small images where the resize matters, and the torch variant is shown to
differ (so the comparison has power). A dozen images through three networks: ~1 min on 2 cores.
"""

from __future__ import annotations

import pytest
import torch

from diffscape.metrics.features import InceptionExtractor, cache_keys
from diffscape.metrics.scores import fid_from_features

TOLERANCE = 1e-4  # max abs difference on 2048-d features (values ~0-3, mean ~0.2)


@pytest.fixture(scope="module")
def ours(inception_weights):
    return {r: InceptionExtractor(inception_weights, resize=r) for r in ("tf1", "torch")}


@pytest.fixture(scope="module")
def fidelity(inception_weights):
    """torch-fidelity's own extractor, from the same (converted) weights file."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    with torch.random.fork_rng(devices=[]):
        net = FeatureExtractorInceptionV3(
            "inception-v3-compat",
            ["64", "2048"],
            feature_extractor_weights_path=str(inception_weights.path),
        )

    @torch.no_grad()
    def embed(x: torch.Tensor) -> dict[str, torch.Tensor]:
        f64, f2048 = net(x)
        return {"64": f64, "2048": f2048}

    return embed


def images(n: int, size: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    low = torch.randint(0, 256, (n, 3, size // 4, size // 4), generator=g).float()
    smooth = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear")
    noise = torch.randint(-20, 21, (n, 3, size, size), generator=g)
    return (smooth + noise).clamp(0, 255).to(torch.uint8)  # structure and fine detail


@pytest.mark.parametrize("size", [32, 64])
def test_default_features_equal_torch_fidelity(ours, fidelity, size):
    x = images(4, size, seed=size)
    want = fidelity(x)
    got = ours["tf1"](x)
    for layer in ("2048", "64"):
        diff = (got[layer] - want[layer]).abs().max().item()
        assert diff < TOLERANCE, (layer, diff)
    # the torchmetrics-default resize gives measurably other features: the test has power
    other = ours["torch"](x)["2048"]
    assert (other - want["2048"]).abs().max().item() > 100 * TOLERANCE
    assert (other - want["2048"]).abs().mean().item() > 10 * TOLERANCE


def test_fid_between_the_two_resizes_is_not_zero(ours):
    """The same images, two preprocessings: a FID well above float noise, so FIDs computed
    with one must never be compared with (or cached as) the other."""
    x = images(8, 32, seed=7)
    a, b = ours["tf1"](x)["2048"], ours["torch"](x)["2048"]
    assert fid_from_features(a, a) == pytest.approx(0, abs=1e-3)
    assert fid_from_features(a, b) > 1.0


def test_resize_is_recorded_and_keys_the_cache(ours):
    where = {"content_hash": "h", "split": "train", "indices": None, "n_total": 3}
    tf1 = cache_keys(ours["tf1"], **where)["2048"]
    torch_keys = cache_keys(ours["torch"], **where)["2048"]
    assert tf1 != torch_keys
    assert "interpolate_bilinear_2d_like_tensorflow1x" in tf1["preprocessing"]
    # the torch variant keeps the words older diffscape wrote: their cached features still match
    assert torch_keys["preprocessing"].endswith(
        "NoTrainInceptionV3: uint8 -> bilinear antialias resize to 299x299 -> (x - 128) / 128"
    )
    assert ours["tf1"].resize == "tf1" and ours["torch"].resize == "torch"
