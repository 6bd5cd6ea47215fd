import inspect
import typing

import pytest
import torch
from diffusers import DDPMScheduler

from diffscape.core.errors import DiffscapeError
from diffscape.model import diffusion
from diffscape.settings import presets, sections


def _d(**kw):
    return presets.resolve("tiny", [f"diffusion.{k}={v}" for k, v in kw.items()]).diffusion


def test_linear_golden_numbers():
    b = diffusion.make_betas(_d())
    assert (
        b.shape == (1000,)
        and b[0].item() == pytest.approx(1e-4)
        and b[-1].item() == pytest.approx(0.02)
    )
    r = diffusion.make_betas(_d(timesteps=500))
    assert r[0].item() == pytest.approx(2e-4) and r[-1].item() == pytest.approx(0.04)
    u = diffusion.make_betas(_d(timesteps=500, rescale_linear="false"))
    assert u[-1].item() == pytest.approx(0.02)
    # rescaling keeps the end noise level: alpha_bar_T about equal for T=1000 and T=500
    ab1000 = torch.cumprod(1 - b, 0)[-1].item()
    ab500 = torch.cumprod(1 - r, 0)[-1].item()
    ab500u = torch.cumprod(1 - u, 0)[-1].item()
    assert ab1000 == pytest.approx(4.04e-5, rel=0.01)
    assert ab500 == pytest.approx(ab1000, rel=0.15)
    assert ab500u > 100 * ab1000  # unscaled T=500 leaves far more signal


def test_schedules_match_diffusers():
    for ours, theirs in (("cosine", "squaredcos_cap_v2"), ("sigmoid", "sigmoid")):
        ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule=theirs).betas
        assert torch.allclose(diffusion.make_betas(_d(schedule=ours)).float(), ref, atol=1e-6)
    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear").betas
    assert torch.allclose(diffusion.make_betas(_d()).float(), ref, atol=1e-7)


def test_q_sample_and_v_target_match_diffusers():
    cfg = _d(schedule="cosine", prediction="v_prediction")
    sched = diffusion.make_scheduler(cfg)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(4, 3, 8, 8, generator=g), torch.randn(4, 3, 8, 8, generator=g)
    t = torch.tensor([0, 10, 500, 999])
    ab = diffusion.alphas_cumprod(cfg)
    assert torch.allclose(
        diffusion.q_sample(x0, eps, t, ab), sched.add_noise(x0, eps, t), atol=1e-5
    )
    v = diffusion.training_target(x0, eps, t, ab, "v_prediction")
    assert torch.allclose(v, sched.get_velocity(x0, eps, t), atol=1e-5)
    assert diffusion.training_target(x0, eps, t, ab, "epsilon") is eps


def test_guide_endpoints():
    c, u = torch.randn(2, 3), torch.randn(2, 3)
    assert torch.equal(diffusion.guide(c, u, 0.0), u)
    assert torch.allclose(diffusion.guide(c, u, 1.0), c)
    assert torch.allclose(diffusion.guide(c, u, 3.0), u + 3 * (c - u))


def test_drop_labels_rate():
    g = torch.Generator().manual_seed(0)
    y = torch.zeros(20000, dtype=torch.long)
    dropped = diffusion.drop_labels(y, 0.1, 7, g)
    assert set(dropped.unique().tolist()) == {0, 7}
    assert (dropped == 7).float().mean().item() == pytest.approx(0.1, abs=0.01)


@pytest.mark.parametrize("sampler", diffusion.SAMPLERS)
def test_schedulers_carry_our_betas(sampler):
    cfg = _d(timesteps=500, schedule="linear")
    s = diffusion.make_scheduler(cfg, sampler)
    assert torch.allclose(s.betas.double(), diffusion.make_betas(cfg), atol=1e-7)


def test_min_snr_weights():
    cfg = _d()
    ab = diffusion.alphas_cumprod(cfg)
    t = torch.tensor([0, 100, 999])
    assert diffusion.loss_weights(t, ab, "epsilon", "none", 5.0) is None
    w = diffusion.loss_weights(t, ab, "epsilon", "min_snr", 5.0)
    snr = (ab / (1 - ab))[t].float()
    assert torch.allclose(w, torch.clamp(snr, max=5.0) / snr, rtol=1e-3)
    assert w[0] < 1e-2 and w[-1].item() == pytest.approx(1.0)  # easy steps down-weighted
    wv = diffusion.loss_weights(t, ab, "v_prediction", "min_snr", 5.0)
    assert torch.allclose(wv, torch.clamp(snr, max=5.0) / (snr + 1), rtol=1e-3)


def test_sampler_names_are_listed_once():
    assert (
        diffusion.SAMPLERS
        == typing.get_args(sections.Sampler)
        == ("ddpm", "ddim", "dpm", "dpm3", "dpm-karras", "unipc", "heun")
    )
    assert "eta" not in inspect.signature(diffusion.make_scheduler).parameters  # eta goes to step()


def test_sampler_steps_are_the_steps_really_taken():
    assert diffusion.sampler_steps(1000, "ddpm", 20) == 1000  # DDPM always walks all T
    assert diffusion.sampler_steps(1000, "ddim") == sections.DEFAULT_SAMPLE_STEPS == 50
    assert diffusion.sampler_steps(20, "dpm") == 20  # the default, capped at T
    assert diffusion.sampler_steps(1000, "ddim", 7) == 7
    for bad in (0, -1, 1001):
        with pytest.raises(DiffscapeError, match="timesteps=1000"):
            diffusion.sampler_steps(1000, "ddim", bad)
