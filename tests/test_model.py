import json
import re

import pytest
import torch
from diffusers import UNet2DModel
from torch import nn

from diffscape.core.errors import DiffscapeError
from diffscape.data.memory import available_bytes
from diffscape.model import unet
from diffscape.model.unet import (
    ModelFolderError,
    ModelTooLarge,
    apply_activation,
    build_unet,
    count_parameters,
    estimate_memory_bytes,
    load_unet,
    parameter_count,
)
from diffscape.settings import presets

SMALL = ["model.channels=[16, 32]", "model.attention_resolutions=[16]"]


def _cfg(activation: str, conditional: bool = False):
    extra = ["model.conditional=true", "model.num_classes=3"] if conditional else []
    return presets.resolve("tiny", SMALL + [f"model.activation={activation}"] + extra).model


@pytest.mark.parametrize("act", ["relu", "gelu", "mish", "silu"])
def test_activation_reaches_every_nonlinearity(act, monkeypatch):
    unet = build_unet(_cfg(act, conditional=True))
    want = {"relu": nn.ReLU, "gelu": nn.GELU, "mish": nn.Mish, "silu": nn.SiLU}[act]
    acts = [
        (n, m)
        for n, m in unet.named_modules()
        if isinstance(m, nn.SiLU | nn.ReLU | nn.GELU | nn.Mish)
    ]
    assert acts and all(type(m) is want for _, m in acts)
    names = {n for n, _ in acts}
    # the two places diffusers' act_fn does not reach:
    assert "time_embedding.act" in names and "conv_act" in names
    # and nothing calls another activation functionally during a forward pass
    calls = []
    for name, m in acts:
        m.register_forward_hook(lambda mod, i, o, name=name: calls.append(name))
    if act != "silu":

        def boom(*a, **k):
            raise AssertionError("F.silu called")

        monkeypatch.setattr(torch.nn.functional, "silu", boom)
    x = torch.randn(2, 3, 32, 32)
    unet(x, torch.tensor([5, 500]), class_labels=torch.tensor([0, 3])).sample.sum()
    assert "time_embedding.act" in calls and "conv_act" in calls
    assert len(set(calls)) == len(acts)  # every activation module ran


# Kernel choice (oneDNN/ATen per ISA and shape) moves float outputs by ~1e-6 here; a wrong
# activation moves them by ~0.2 (outputs ~1). The tolerance sits far between the two.
TOL = 1e-4


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def test_load_unet_restores_activation(tmp_path):
    torch.manual_seed(0)
    unet = build_unet(_cfg("gelu"))
    unet.save_pretrained(tmp_path / "m")
    loaded = load_unet(tmp_path / "m")
    plain = UNet2DModel.from_pretrained(tmp_path / "m")  # diffusers alone keeps SiLU here
    x, t = torch.randn(1, 3, 32, 32), torch.tensor([10])
    with torch.no_grad():
        want = unet(x, t).sample
        assert _max_diff(want, loaded(x, t).sample) < TOL
        assert _max_diff(want, plain(x, t).sample) > 100 * TOL  # the bug this test targets
        assert _max_diff(want, apply_activation(plain, "gelu")(x, t).sample) < TOL


def test_conditional_has_null_class_embedding():
    unet = build_unet(_cfg("silu", conditional=True))
    assert unet.class_embedding.num_embeddings == 4  # 3 classes + "no class"
    assert build_unet(_cfg("silu")).class_embedding is None


def test_parameter_count_without_allocating_matches_built_network():
    cfg = _cfg("silu", conditional=True)
    assert parameter_count(cfg) == count_parameters(build_unet(cfg))


# within the config bounds (2048 wide, 16 blocks, 512 px) yet ~24e9 parameters
HUGE = [
    "model.channels=[2048, 2048]",
    "model.layers_per_block=16",
    "model.image_size=512",
    "model.attention_resolutions=[]",
]


def test_too_large_model_is_refused_in_one_line(monkeypatch):
    monkeypatch.setattr(unet, "available_bytes", lambda: 8 * 2**30)
    huge = presets.resolve("tiny", HUGE).model
    with pytest.raises(ModelTooLarge) as err:
        build_unet(huge)
    msg = str(err.value)
    assert "\n" not in msg
    assert re.fullmatch(
        r"model of [\d,]+ parameters needs about [\d.]+ GiB \(training, batch 1\), this machine "
        r"has 8\.0 GiB available; use smaller model\.channels.*",
        msg,
    )
    assert estimate_memory_bytes(huge, training=True) > estimate_memory_bytes(huge) > 8 * 2**30
    build_unet(_cfg("silu"))  # a tiny one fits in the same 8 GiB


def test_available_memory_is_read():
    have = available_bytes()
    assert have is not None and have > 2**20


def _huge_but_in_bounds(saved):
    saved.update(block_out_channels=[2048, 2048], layers_per_block=16)


def _edit(key, value):
    return lambda d: d.update({key: value})


@pytest.mark.parametrize(
    "edit, message",
    [
        (_edit("num_class_embeds", 10**9), "num_classes"),
        (_edit("block_out_channels", [10**6, 10**6]), "channels"),
        (_edit("sample_size", 4096), "image_size"),
        (_edit("time_embedding_type", "fourier"), "not what diffscape builds"),
        (_edit("block_out_channels", [16]), "does not describe a diffscape UNet"),
        (_huge_but_in_bounds, "GiB available"),
        (lambda d: d.clear() or d.update({"x": 1}), "does not describe a diffscape UNet"),
    ],
)
def test_hostile_model_folder_fails_before_allocating(tmp_path, monkeypatch, edit, message):
    build_unet(_cfg("silu")).save_pretrained(tmp_path / "m")
    file = tmp_path / "m" / "config.json"
    saved = json.loads(file.read_text())
    edit(saved)
    file.write_text(json.dumps(saved))
    monkeypatch.setattr(unet, "available_bytes", lambda: 8 * 2**30)

    def never(*a, **k):
        raise AssertionError("from_pretrained reached")

    monkeypatch.setattr(UNet2DModel, "from_pretrained", never)
    with pytest.raises(DiffscapeError, match=message) as err:
        load_unet(tmp_path / "m")
    assert "\n" not in str(err.value)


def test_pickle_or_garbage_weights_are_refused(tmp_path):
    folder = tmp_path / "m"
    build_unet(_cfg("silu")).save_pretrained(folder)
    weights = folder / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(b"\x00" * 100)
    with pytest.raises(ModelFolderError, match="cannot load the weights") as err:
        load_unet(folder)
    assert "\n" not in str(err.value)
    weights.unlink()
    torch.save({"w": torch.zeros(1)}, folder / "diffusion_pytorch_model.bin")
    with pytest.raises(ModelFolderError, match="only loads safetensors"):
        load_unet(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ModelFolderError, match="not valid JSON"):
        load_unet(folder)


def test_model_folder_must_match_its_checkpoint(tmp_path):
    ckpt = tmp_path / "step-0000001"
    ckpt.mkdir()
    run_cfg = presets.resolve("tiny", SMALL)
    (ckpt / "config.json").write_text(run_cfg.to_json())
    (ckpt / "COMPLETE").write_text("complete\n")
    other = presets.resolve("tiny", ["model.channels=[16, 48]", "model.attention_resolutions=[16]"])
    build_unet(other.model).save_pretrained(ckpt / "model")
    with pytest.raises(ModelFolderError, match=r"disagrees with .*config\.json \(block_out_chan"):
        load_unet(ckpt / "model")
    build_unet(run_cfg.model).save_pretrained(ckpt / "model")
    assert count_parameters(load_unet(ckpt / "model")) == parameter_count(run_cfg.model)
