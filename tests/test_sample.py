"""Samplers, guidance, per-class folders, seeds, export to diffusers; samples folders written
as a whole, bounded settings and hostile names."""

import json
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
from fixtures_data import colour_dataset
from PIL import Image

from diffscape.cli import main
from diffscape.core.errors import DiffscapeError
from diffscape.data.imagefolder import load_sample_folder, make_grid, read_image
from diffscape.model import diffusion
from diffscape.sample import (
    class_names,
    denoise,
    generate_images,
    image_generator,
    load_for_sampling,
    model_output,
    sample_to_folder,
    slerp,
)
from diffscape.sample import folder as sample_folder
from diffscape.settings import presets
from diffscape.train import train

TINY = [
    "model.channels=[16, 32]",
    "model.attention_resolutions=[16]",
    "train.batch_size=8",
    "train.steps=4",
    "train.sample_every_steps=0",
    "diffusion.timesteps=50",  # keeps DDPM's all-T-steps sampling cheap in tests
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    ds = colour_dataset(root / "ds", n_train=24)
    cond = root / "cond"
    uncond = root / "uncond"
    train(presets.resolve("tiny", TINY + ["model.conditional=true"]), ds.root, cond, progress=False)
    train(presets.resolve("tiny", TINY), ds.root, uncond, progress=False)
    return {"cond": cond, "uncond": uncond}


@pytest.mark.parametrize(
    ("sampler", "steps"),
    [("ddpm", None), ("ddim", 5), ("dpm", 5), ("dpm3", 5), ("dpm-karras", 5), ("unipc", 5),
     ("heun", 5)],
)  # fmt: skip
def test_each_sampler_gives_finite_images_in_range(runs, sampler, steps):
    m = load_for_sampling(runs["cond"])
    imgs = generate_images(m.unet, m.cfg, class_idx=[0, 1, 2], index=[0, 0, 0], seed=1,
                           sampler=sampler, steps=steps, progress=False)  # fmt: skip
    assert imgs.dtype == np.uint8 and imgs.shape == (3, 3, 32, 32)
    assert imgs.std() > 0  # not a blank image


class ExactDenoiser(torch.nn.Module):
    """A "perfect" epsilon network for data that is always the image ``target``: from x_t it
    returns the exact noise, (x_t - sqrt(ab_t) target) / sqrt(1 - ab_t)."""

    def __init__(self, target: torch.Tensor, alpha_bar: torch.Tensor):
        super().__init__()
        self.register_buffer("target", target)
        self.register_buffer("alpha_bar", alpha_bar.float())
        self.unused = torch.nn.Parameter(torch.zeros(()))  # the sampler reads the device here

    def forward(self, x, t, class_labels=None):
        # Karras-sigma samplers (heun, dpm-karras) ask at fractional t: diffusers maps sigma to t
        # by linear interpolation in log sigma between training steps, so invert that.
        t = torch.as_tensor(t, dtype=torch.float64).reshape(-1)
        lo = t.floor().long().clamp(max=len(self.alpha_bar) - 2)
        w = (t - lo).view(-1, 1, 1, 1)
        log_sigma = (((1 - self.alpha_bar) / self.alpha_bar).sqrt().log()).double()
        sigma = (
            (1 - w) * log_sigma[lo].view(-1, 1, 1, 1) + w * log_sigma[lo + 1].view(-1, 1, 1, 1)
        ).exp()
        ab = (1 / (1 + sigma**2)).float()
        return SimpleNamespace(sample=(x - ab.sqrt() * self.target) / (1 - ab).sqrt())


@pytest.mark.parametrize(
    ("sampler", "steps"),
    [("ddpm", None), ("ddim", 5), ("dpm", 5), ("dpm3", 5), ("dpm-karras", 5), ("unipc", 5),
     ("heun", 5)],
)  # fmt: skip
def test_each_sampler_recovers_the_data_of_an_exact_denoiser(runs, sampler, steps):
    """On the unclamped output: a sampler wired with the wrong betas, timesteps or prediction
    type lands away from the only image the data holds (or outside [-1, 1])."""
    # ExactDenoiser predicts the noise: the config must say so (the tiny preset predicts v)
    cfg = load_for_sampling(runs["cond"]).cfg.with_changes(diffusion={"prediction": "epsilon"})
    ramp = torch.linspace(-0.9, 0.9, 32)
    target = torch.stack([ramp.view(1, -1).expand(32, 32), ramp.view(-1, 1).expand(32, 32),
                          torch.full((32, 32), 0.3)])  # fmt: skip
    net = ExactDenoiser(target, diffusion.alphas_cumprod(cfg.diffusion))
    gens = [image_generator(1, c, 0) for c in range(2)]
    noise = torch.stack([torch.randn((3, 32, 32), generator=g) for g in gens])
    x = denoise(net, cfg, noise, torch.tensor([0, 1]), gens, sampler=sampler, steps=steps)
    assert torch.isfinite(x).all()
    assert (x - target).abs().max() < 2e-3


def test_non_finite_pixels_are_an_error_not_black_images(runs):
    cfg = load_for_sampling(runs["cond"]).cfg
    net = ExactDenoiser(
        torch.full((3, 32, 32), float("nan")), diffusion.alphas_cumprod(cfg.diffusion)
    )
    gens = [image_generator(1, 0, 0)]
    with pytest.raises(DiffscapeError, match="NaN"):
        denoise(
            net, cfg, torch.randn(1, 3, 32, 32), torch.tensor([0]), gens, sampler="dpm", steps=2
        )


def test_ddim_eta0_is_deterministic_and_eta1_is_not(runs):
    m = load_for_sampling(runs["cond"])
    kw = {"class_idx": [0, 1], "index": [0, 1], "sampler": "ddim", "steps": 5, "progress": False}
    a = generate_images(m.unet, m.cfg, seed=3, **kw)
    b = generate_images(m.unet, m.cfg, seed=3, **kw)
    assert np.array_equal(a, b)
    c = generate_images(m.unet, m.cfg, seed=3, eta=1.0, **kw)
    assert not np.array_equal(a, c)
    assert np.array_equal(c, generate_images(m.unet, m.cfg, seed=3, eta=1.0, **kw))


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_images_do_not_depend_on_batch_size(runs, sampler):
    m = load_for_sampling(runs["cond"])
    kw = {"class_idx": [0, 1, 2, 0, 1], "index": [0, 0, 0, 1, 1], "seed": 7, "sampler": sampler,
          "steps": 5, "eta": 1.0, "progress": False}  # fmt: skip
    one = generate_images(m.unet, m.cfg, batch=1, **kw).astype(int)
    many = generate_images(m.unet, m.cfg, batch=5, **kw).astype(int)
    two = generate_images(m.unet, m.cfg, batch=2, **kw).astype(int)
    # float sums may differ in the last bit between batch shapes: allow one grey level
    assert np.abs(one - many).max() <= 1 and np.abs(one - two).max() <= 1
    assert (one == many).mean() > 0.999


def test_guidance_on_model_outputs(runs):
    m = load_for_sampling(runs["cond"])
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 3, 32, 32, generator=g)
    t = torch.tensor(20)
    labels = torch.tensor([0, 1, 2])
    null = m.cfg.model.num_classes
    with torch.no_grad():
        cond = m.unet(x, t.expand(3), class_labels=labels).sample
        uncond = m.unet(x, t.expand(3), class_labels=torch.full_like(labels, null)).sample
        w0 = model_output(m.unet, x, t, labels, null, 0.0)
        w1 = model_output(m.unet, x, t, labels, null, 1.0)
        w3 = model_output(m.unet, x, t, labels, null, 3.0)
    assert torch.allclose(w0, uncond, atol=1e-5)
    assert torch.allclose(w1, cond, atol=1e-5)
    assert torch.allclose(w3, uncond + 3 * (cond - uncond), atol=1e-4)  # batched cond+uncond


def test_guidance_interval_guides_only_the_steps_inside_it(runs):
    m = load_for_sampling(runs["cond"])
    kw = {"class_idx": [0, 1, 2], "index": [0, 0, 0], "seed": 3, "sampler": "dpm", "steps": 6,
          "progress": False}  # fmt: skip
    plain = generate_images(m.unet, m.cfg, guidance=1.0, **kw).astype(int)
    full = generate_images(m.unet, m.cfg, guidance=4.0, **kw).astype(int)
    everywhere = generate_images(m.unet, m.cfg, guidance=4.0, guidance_interval=(0, 1e6), **kw)
    nowhere = generate_images(m.unet, m.cfg, guidance=4.0, guidance_interval=(1e5, 1e6), **kw)
    # the middle of this model's sigmas (T=50: 0.01 .. about 8)
    middle = generate_images(m.unet, m.cfg, guidance=4.0, guidance_interval=(0.5, 3), **kw)
    assert (everywhere.astype(int) == full).all() and (nowhere.astype(int) == plain).all()
    middle = middle.astype(int)
    assert np.abs(middle - full).mean() > 0.5 and np.abs(middle - plain).mean() > 0.5


def test_guidance_at_follows_sigma():
    ab = 1 / (1 + 2.0**2)  # sigma = 2
    assert diffusion.guidance_at(3.0, None, ab) == 3.0
    assert diffusion.guidance_at(3.0, (1.0, 2.0), ab) == 3.0  # (lo, hi]: hi included
    assert diffusion.guidance_at(3.0, (2.0, 5.0), ab) == 1.0  # lo excluded
    assert diffusion.guidance_at(3.0, (0.1, 1.5), ab) == 1.0


def test_guidance_interval_is_recorded_and_a_rerun_with_another_is_new(runs, tmp_path, capsys):
    out = tmp_path / "s"
    argv = ["sample", str(runs["cond"]), "--n", "1", "--per-class", "--steps", "3",
            "--guidance", "3", "--no-progress", "--out", str(out)]  # fmt: skip
    assert main([*argv, "--guidance-interval", "0.3,3"]) == 0
    assert json.loads((out / "samples.json").read_text())["guidance_interval"] == [0.3, 3]
    assert main([*argv, "--guidance-interval", "3,0.3", "--overwrite"]) == 2
    assert "--guidance-interval" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0  # every step: the key is absent, as before
    assert "guidance_interval" not in json.loads((out / "samples.json").read_text())


def test_sample_folder_layout_and_record(runs, tmp_path):
    out = tmp_path / "s"
    rc = main(["sample", str(runs["cond"]), "--n", "2", "--per-class", "--out", str(out),
               "--steps", "3", "--seed", "5", "--no-progress"])  # fmt: skip
    assert rc == 0
    for c in ("c0", "c1", "c2"):
        assert sorted(p.name for p in (out / c).iterdir()) == ["00000.png", "00001.png"]
    assert (out / "grid.png").is_file()
    rec = json.loads((out / "samples.json").read_text())
    assert rec["sampler"] == "ddim" and rec["steps"] == 3 and rec["seed"] == 5
    assert rec["guidance"] == 1.0 and rec["weights"] == "ema" and "torch" in rec["versions"]
    s = load_sample_folder(out)
    assert s.images.shape == (6, 3, 32, 32) and sorted(set(s.class_names)) == ["c0", "c1", "c2"]
    # one class only, guided; the image for (seed, class, index) is the same as above at w=1
    out2 = tmp_path / "s2"
    sample_to_folder(runs["cond"], out2, n=2, classes=["c1"], steps=3, seed=5, progress=False)
    # Equal up to the last bit's rounding: a batch of 2 and a batch of 6 may take other float
    # kernels (seen on AVX2-only CPUs); another (seed, class, index) gives a different image.
    a, b = (read_image(d / "c1" / "00001.png").astype(int) for d in (out2, out))
    assert np.abs(a - b).max() <= 1 and (a != b).mean() < 0.01
    other = read_image(out / "c1" / "00000.png").astype(int)
    assert np.abs(other - b).mean() > 5
    assert not (out2 / "c0").exists()


def test_unconditional_refuses_class_and_guidance(runs, tmp_path, capsys):
    with pytest.raises(DiffscapeError, match="unconditional"):
        sample_to_folder(runs["uncond"], tmp_path / "x", n=1, classes=["c0"], progress=False)
    with pytest.raises(DiffscapeError, match="unconditional"):
        sample_to_folder(runs["uncond"], tmp_path / "x", n=1, guidance=3.0, progress=False)
    rc = main(
        ["sample", str(runs["uncond"]), "--n", "1", "--class", "c0", "--out", str(tmp_path / "y")]
    )
    assert rc == 2 and "unconditional" in capsys.readouterr().err
    rec = sample_to_folder(runs["uncond"], tmp_path / "u", n=3, steps=2, progress=False)
    assert rec["counts"] == {"unconditional": 3}


def test_unknown_class_is_named(runs, tmp_path):
    with pytest.raises(DiffscapeError, match="Glacier"):
        sample_to_folder(runs["cond"], tmp_path / "x", n=1, classes=["Glacier"], progress=False)


def test_export_round_trip_through_plain_diffusers(runs, tmp_path):
    out = tmp_path / "exported"
    assert main(["export", str(runs["cond"]), "--out", str(out)]) == 0
    unet = UNet2DModel.from_pretrained(out / "unet").eval()
    sched = DDIMScheduler.from_config(
        DDPMScheduler.from_pretrained(out / "scheduler").config, timestep_spacing="trailing"
    )
    # our images
    m = load_for_sampling(runs["cond"])
    ours = generate_images(m.unet, m.cfg, class_idx=[1], index=[0], seed=9, sampler="ddim",
                           steps=5, progress=False)  # fmt: skip
    # the same starting noise through diffusers alone
    x = torch.randn((1, 3, 32, 32), generator=image_generator(9, 1, 0))
    sched.set_timesteps(5)
    with torch.no_grad():
        for t in sched.timesteps:
            eps = unet(x, t, class_labels=torch.tensor([1])).sample
            x = sched.step(eps, t, x).prev_sample
    theirs = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    assert np.abs(ours.astype(int) - theirs.astype(int)).max() <= 1


def test_export_replaces_only_an_export(runs, tmp_path, capsys):
    out = tmp_path / "exported"
    assert main(["export", str(runs["cond"]), "--out", str(out)]) == 0
    assert main(["export", str(runs["cond"]), "--out", str(out)]) == 2  # an older export: kept
    assert main(["export", str(runs["cond"]), "--out", str(out), "--overwrite"]) == 0  # replaced
    assert sorted(p.name for p in out.iterdir()) == [
        "classes.json", "diffscape_config.json", "scheduler", "unet",
    ]  # fmt: skip
    thesis = tmp_path / "thesis"
    thesis.mkdir()
    (thesis / "chapter1.tex").write_text("years of work")
    capsys.readouterr()
    assert main(["export", str(runs["cond"]), "--out", str(thesis)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not empty and not a diffscape folder" in err[0]
    assert [p.name for p in thesis.iterdir()] == ["chapter1.tex"]
    assert (thesis / "chapter1.tex").read_text() == "years of work"


def test_slerp_endpoints_and_norm():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 8, 8, generator=g), torch.randn(3, 8, 8, generator=g)
    assert torch.allclose(slerp(a, b, 0.0), a, atol=1e-6)
    assert torch.allclose(slerp(a, b, 1.0), b, atol=1e-6)
    mid = slerp(a, b, 0.5)
    assert abs(mid.norm() - (a.norm() + b.norm()) / 2) < 0.1 * a.norm()


def test_interpolate_cli(runs, tmp_path):
    png = tmp_path / "walk.png"
    args = ["interpolate", str(runs["cond"]), "--seeds", "1", "2", "--frames", "4",
            "--class", "c2", "--steps", "3"]  # fmt: skip
    rc = main([*args, "--out", str(png)])
    assert rc == 0 and png.is_file()
    row = np.asarray(Image.open(png).convert("RGB"))
    assert row.shape == (32 + 4, 4 * (32 + 2) + 2, 3)  # 4 frames of 32 px, 2 px white borders
    assert (row[:2] == 255).all() and (row[:, 34:36] == 255).all()
    tiles = [row[2:34, 2 + k * 34 : 34 + k * 34].astype(int) for k in range(4)]
    assert np.abs(tiles[0] - tiles[3]).mean() > 1  # the two seeds' ends differ
    assert all(t.std() > 0 for t in tiles)  # not blank
    # the ends are the plain DDIM images of the two seeds (slerp ends at its endpoints)
    m = load_for_sampling(runs["cond"])
    ends = generate_images(m.unet, m.cfg, class_idx=[2], index=[0], seed=2, sampler="ddim",
                           steps=3, progress=False)  # fmt: skip
    assert np.abs(tiles[3] - ends[0].transpose(1, 2, 0).astype(int)).max() <= 1
    again = tmp_path / "again.png"
    assert main([*args, "--out", str(again)]) == 0
    assert again.read_bytes() == png.read_bytes()  # deterministic for given seeds
    assert main([*args, "--out", str(tmp_path / "walk.txt")]) == 2  # only a .png is written
    assert not (tmp_path / "walk.txt").exists()


def test_make_grid_keeps_the_look():
    """torchvision's grid with our look: 2 px white borders, row-major, a lone image framed."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 3, 4, 6), dtype=np.uint8)
    grid = make_grid(images, nrow=2)
    assert grid.dtype == np.uint8 and grid.shape == (3, 3 * (4 + 2) + 2, 2 * (6 + 2) + 2)
    for i, im in enumerate(images):
        r, k = divmod(i, 2)
        assert np.array_equal(grid[:, 2 + r * 6 : 6 + r * 6, 2 + k * 8 : 8 + k * 8], im)
    mask = np.ones(grid.shape[1:], bool)
    for i in range(5):
        r, k = divmod(i, 2)
        mask[2 + r * 6 : 6 + r * 6, 2 + k * 8 : 8 + k * 8] = False
    assert (grid[:, mask] == 255).all()  # borders and the empty sixth cell are white
    one = make_grid(images[:1], nrow=1)
    assert one.shape == (3, 8, 10) and np.array_equal(one[:, 2:6, 2:8], images[0])


# ---- a samples folder is written as a whole ------------------------------------------------------


def _sample(runs, out, *extra):
    return main(["sample", str(runs["cond"]), "--out", str(out), "--steps", "2", "--no-progress",
                 *extra])  # fmt: skip


def _one_error_line(capsys):
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def test_existing_samples_are_replaced_only_with_overwrite_never_merged(runs, tmp_path, capsys):
    out = tmp_path / "s"
    assert _sample(runs, out, "--n", "2", "--per-class") == 0
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert _sample(runs, out, "--n", "1", "--class", "c1") == 2
    assert "--overwrite" in _one_error_line(capsys)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert _sample(runs, out, "--n", "1", "--class", "c1", "--overwrite") == 0
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.png")) == [
        "c1/00000.png",
        "grid.png",
    ]
    assert json.loads((out / "samples.json").read_text())["counts"] == {"c1": 1}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".s.tmp")] == []


def test_a_folder_that_is_not_samples_is_refused_and_untouched(runs, tmp_path, capsys):
    out = tmp_path / "thesis"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    for extra in ([], ["--overwrite"]):
        assert _sample(runs, out, "--n", "1", *extra) == 2
        assert "not empty and not a diffscape folder" in _one_error_line(capsys)
        assert [p.name for p in out.iterdir()] == ["thesis.tex"]
        assert (out / "thesis.tex").read_text() == "years of work"
    assert _sample(runs, runs["cond"], "--n", "1", "--overwrite") == 2  # a run is not samples
    assert "run folder" in _one_error_line(capsys)


def folder_bytes(folder):
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_interrupt_keeps_the_old_folder_and_the_new_images_and_a_rerun_finishes(
    runs, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "s"
    sample_to_folder(runs["cond"], out, n=1, steps=2, progress=False)
    old = folder_bytes(out)
    real, saved = sample_folder.save_png_atomically, []

    def save_then_interrupt(path, image):
        if len(saved) == 7:
            raise KeyboardInterrupt
        real(path, image)
        saved.append(path.relative_to(partial))

    partial = sample_folder.partial_dir(out)
    monkeypatch.setattr(sample_folder, "save_png_atomically", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        sample_to_folder(
            runs["cond"], out, n=3, per_class=True, steps=2, batch=2, progress=False, overwrite=True
        )
    assert folder_bytes(out) == old  # readers see the old samples until the new ones are done
    made = sorted(p.relative_to(partial) for p in partial.rglob("0*.png"))
    assert made == sorted(saved) and len(made) == 7  # written as made, none half-written
    assert "7 of 9 images are kept" in capsys.readouterr().err
    monkeypatch.setattr(sample_folder, "save_png_atomically", real)
    sample_to_folder(
        runs["cond"], out, n=3, per_class=True, steps=2, batch=4, progress=False, overwrite=True
    )
    assert "7 of 9 images were made before" in capsys.readouterr().err
    whole = tmp_path / "whole"
    sample_to_folder(runs["cond"], whole, n=3, per_class=True, steps=2, progress=False)
    assert folder_bytes(out) == folder_bytes(whole)  # identical to one uninterrupted run
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s", "whole"]  # nothing else left


def test_a_partial_folder_of_other_settings_is_started_again(runs, tmp_path, monkeypatch, capsys):
    out = tmp_path / "s"
    monkeypatch.setattr(sample_folder, "iter_images", _interrupt_after_first_batch)
    with pytest.raises(KeyboardInterrupt):
        sample_to_folder(runs["cond"], out, n=4, per_class=True, steps=2, batch=2, progress=False)
    monkeypatch.undo()
    sample_to_folder(runs["cond"], out, n=2, per_class=True, steps=2, seed=3, progress=False)
    assert "other settings; starting again" in capsys.readouterr().err
    whole = tmp_path / "whole"
    sample_to_folder(runs["cond"], whole, n=2, per_class=True, steps=2, seed=3, progress=False)
    assert folder_bytes(out) == folder_bytes(whole)


REAL_ITER_IMAGES = sample_folder.iter_images


def _interrupt_after_first_batch(*args, **kwargs):
    yield next(REAL_ITER_IMAGES(*args, **kwargs))
    raise KeyboardInterrupt


def test_sigkill_halfway_keeps_the_images_made_and_the_same_command_finishes(runs, tmp_path):
    """The issue's case: a large --n killed with SIGKILL (no handler runs) leaves the images made
    so far; the same command again makes only the rest, identical to an uninterrupted run."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "big"
    argv = ["sample", str(runs["cond"]), "--n", "40", "--per-class", "--sampler", "ddim",
            "--steps", "10", "--batch", "4", "--no-progress", "--out", str(out)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "diffscape", *argv], env=env)
    partial = sample_folder.partial_dir(out)
    deadline = time.monotonic() + 120
    while len(list(partial.rglob("0*.png"))) < 12 and time.monotonic() < deadline:
        assert proc.poll() is None, "finished before it could be killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kept = {p.relative_to(partial): p.read_bytes() for p in partial.rglob("0*.png")}
    assert 12 <= len(kept) < 80 and not out.exists()
    # the same command, as the user would type it (the same threads: float sums may differ
    # in their last bit between thread counts, and with it a rounded pixel)
    subprocess.run([sys.executable, "-m", "diffscape", *argv], env=env, check=True)
    whole = tmp_path / "whole"
    subprocess.run([sys.executable, "-m", "diffscape", *argv[:-1], str(whole)], env=env, check=True)
    assert folder_bytes(out) == folder_bytes(whole)
    assert all(out.joinpath(rel).read_bytes() == data for rel, data in kept.items())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big", "whole"]


def test_a_refusal_leaves_no_partial_folder(runs, tmp_path):
    with pytest.raises(DiffscapeError):
        sample_to_folder(runs["cond"], tmp_path / "s", n=1, classes=["nope"], progress=False)
    assert list(tmp_path.iterdir()) == []


def test_read_only_parent_fails_before_any_image(runs, tmp_path, monkeypatch, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if os.access(ro, os.W_OK):  # root writes anyway: say what access(2) says to others
            real_access = os.access

            def access(path, mode):
                return False if str(path) == str(ro) and mode & os.W_OK else real_access(path, mode)

            monkeypatch.setattr(os, "access", access)

        def no_images(*a, **k):
            raise AssertionError("images were generated before the write check")

        monkeypatch.setattr(sample_folder, "iter_images", no_images)
        assert _sample(runs, ro / "s", "--n", "1") == 2
        assert "cannot write into" in _one_error_line(capsys)
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)


# ---- bounded settings ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        ["--batch", "-3"], ["--batch", "0"], ["--batch", "5000"], ["--n", "0"], ["--n", "-1"],
        ["--seed", "-1"], ["--seed", str(2**63)], ["--guidance", "nan"], ["--guidance", "inf"],
        ["--guidance", "1e300"], ["--eta", "nan"], ["--eta", "2"], ["--steps", "0"],
        ["--sampler", "euler"],
    ],
)  # fmt: skip
def test_bad_numbers_exit_2_with_one_line(runs, tmp_path, capsys, bad):
    try:  # a bad value: the settings' one line; a bad choice: argparse's
        code = main(["sample", str(runs["cond"]), "--out", str(tmp_path / "s"), *bad])
    except SystemExit as e:
        code = e.code
    assert code == 2
    assert " ".join(bad) in _one_error_line(capsys) or bad[0] == "--sampler"
    assert list(tmp_path.iterdir()) == []


def test_steps_beyond_the_model_are_refused_and_real_steps_recorded(runs, tmp_path, capsys):
    assert _sample(runs, tmp_path / "a", "--steps", "51") == 2  # T = 50
    assert "timesteps=50" in _one_error_line(capsys)
    assert not (tmp_path / "a").exists()
    for sampler, steps, recorded in (("ddim", None, 50), ("dpm", 3, 3), ("ddpm", 3, 50)):
        rec = sample_to_folder(runs["cond"], tmp_path / sampler, n=1, sampler=sampler,
                               steps=steps, progress=False)  # fmt: skip
        assert rec["steps"] == recorded


@pytest.mark.parametrize(
    "kw",
    [{"batch": -3}, {"batch": 0}, {"n": 0}, {"seed": -1}, {"guidance": float("nan")},
     {"eta": float("nan")}, {"steps": 0}, {"sampler": "euler"}],
)  # fmt: skip
def test_library_refuses_bad_numbers(runs, tmp_path, kw):
    with pytest.raises(DiffscapeError, match=next(iter(kw))):
        sample_to_folder(runs["cond"], tmp_path / "s", progress=False, **kw)
    assert list(tmp_path.iterdir()) == []
    m = load_for_sampling(runs["cond"])
    if "n" not in kw:
        with pytest.raises(DiffscapeError):
            generate_images(m.unet, m.cfg, class_idx=[0], index=[0], progress=False,
                            **{"seed": 0, "steps": 2, **kw})  # fmt: skip


# ---- names from files ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../../evil", "/tmp/evil", "..", "a/b", "", " c0"])
def test_hostile_class_names_in_run_json_are_refused(runs, tmp_path, name):
    cfg = load_for_sampling(runs["cond"]).cfg
    (tmp_path / "run.json").write_text(json.dumps({"classes": [name, "c1", "c2"]}))
    with pytest.raises(DiffscapeError, match="class name"):
        class_names(tmp_path, cfg)
    (tmp_path / "run.json").write_text("{not json")
    with pytest.raises(DiffscapeError, match="not valid JSON"):
        class_names(tmp_path, cfg)
    (tmp_path / "run.json").write_text(json.dumps({"classes": ["a", "b", "c"]}))
    assert class_names(tmp_path, cfg) == ["a", "b", "c"]


def test_hostile_class_argument_is_refused(runs, tmp_path, capsys):
    assert _sample(runs, tmp_path / "s", "--class", "../../evil") == 2
    assert "class name" in _one_error_line(capsys)
    assert [p.name for p in tmp_path.iterdir() if p.name != ".s.lock"] == []
    assert not (tmp_path.parent / "evil").exists()


def test_corrupt_png_in_a_samples_folder_is_named(tmp_path):
    (tmp_path / "c0").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "c0" / "00000.png")
    bad = tmp_path / "c0" / "00001.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DiffscapeError, match="00001.png") as e:
        load_sample_folder(tmp_path)
    assert "\n" not in str(e.value)
    good = (tmp_path / "c0" / "00000.png").read_bytes()
    bad.write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(DiffscapeError, match="00001.png"):
        load_sample_folder(tmp_path)


def test_a_class_named_twice_is_sampled_once(runs, tmp_path):
    rec = sample_to_folder(
        runs["cond"], tmp_path / "s", n=2, per_class=True, classes=["c1", "c1"], steps=2,
        progress=False,
    )  # fmt: skip
    assert rec["n"] == 2 and rec["counts"] == {"c1": 2}
    assert sorted(p.name for p in (tmp_path / "s" / "c1").iterdir()) == ["00000.png", "00001.png"]
