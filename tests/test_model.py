import pytest
import torch
from diffusers import UNet2DModel
from torch import nn

from diffscape import config
from diffscape.model import apply_activation, build_unet, load_unet

SMALL = ["model.channels=[16, 32]", "model.attention_resolutions=[16]"]


def _cfg(activation: str, conditional: bool = False):
    extra = ["model.conditional=true", "model.num_classes=3"] if conditional else []
    return config.resolve("tiny", SMALL + [f"model.activation={activation}"] + extra).model


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


def test_load_unet_restores_activation(tmp_path):
    torch.manual_seed(0)
    unet = build_unet(_cfg("gelu"))
    unet.save_pretrained(tmp_path / "m")
    loaded = load_unet(tmp_path / "m")
    plain = UNet2DModel.from_pretrained(tmp_path / "m")  # diffusers alone keeps SiLU here
    x, t = torch.randn(1, 3, 32, 32), torch.tensor([10])
    with torch.no_grad():
        assert torch.equal(unet(x, t).sample, loaded(x, t).sample)
        assert not torch.allclose(unet(x, t).sample, plain(x, t).sample)
        assert torch.equal(unet(x, t).sample, apply_activation(plain, "gelu")(x, t).sample)


def test_conditional_has_null_class_embedding():
    unet = build_unet(_cfg("silu", conditional=True))
    assert unet.class_embedding.num_embeddings == 4  # 3 classes + "no class"
    assert build_unet(_cfg("silu")).class_embedding is None
