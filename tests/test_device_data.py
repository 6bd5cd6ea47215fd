"""train.data_on_device: the whole split held as a tensor where the step runs, gathered there,
with the step's draws on a generator of that device. On the CPU ("on" = the split in memory as a
torch tensor) it must train bit for bit like the memory-mapped path; on CUDA the step must run
without a host sync."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_data import colour_dataset

from diffscape import checkpoint
from diffscape.checkpoint import TrainingState
from diffscape.data.source import (
    DEVICE_DATA_FRACTION,
    DeviceSource,
    HostSource,
    batch_indices,
    data_on_device,
    make_source,
)
from diffscape.settings import presets
from diffscape.settings.engine import ConfigError
from diffscape.train import build_model, make_accelerator, step_parts, train
from diffscape.train import train_step as run_step
from diffscape.train.setup import step_generator

TINY = [
    "model.channels=[16, 32]",
    "model.attention_resolutions=[16]",
    "model.conditional=true",
    "model.dropout=0.1",
    "train.batch_size=8",
    "train.log_every_steps=1",
    "train.sample_every_steps=0",
    "train.warmup_steps=2",
    "train.label_dropout=0.3",  # conditional, label dropout and flips (hflip default) all on
]
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    # 20 images, batch 8: epochs end inside batches (steps 2, 4, ...)
    return colour_dataset(tmp_path_factory.mktemp("data") / "ds", n_train=20)


def cfg(*extra):
    return presets.resolve("tiny", TINY + list(extra))


def losses(run: Path) -> list[float]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [json.loads(x)["loss"] for x in lines if not json.loads(x).get("skipped")]


def weights(run: Path) -> dict[str, bytes]:
    ck = checkpoint.latest_checkpoint(run)
    files = ["model/diffusion_pytorch_model.safetensors", "ema/diffusion_pytorch_model.safetensors",
             "optimizer.safetensors", "rng.safetensors"]  # fmt: skip
    return {f: (ck / f).read_bytes() for f in files}


def test_device_source_gives_the_memmap_batches(ds):
    images, labels = ds.images("train"), ds.labels("train")
    host = HostSource(images, labels, seed=3, batch_size=8)
    dev = DeviceSource(images, labels, seed=3, batch_size=8, device="cpu")
    assert dev.images.dtype == torch.uint8 and dev.images.shape == images.shape
    for step in range(7):  # across four epochs of 20 images
        idx = batch_indices(3, step, 8, len(images))
        assert dev.indices(step).tolist() == idx.tolist()
        for rank, world in ((0, 1), (0, 2), (1, 2)):  # each process's slice idx[rank::world]
            (xh, yh), (xd, yd) = host.batch(step, rank, world), dev.batch(step, rank, world)
            assert torch.equal(xh, xd) and torch.equal(yh, yd) and yd.dtype == torch.int64
            assert yd.tolist() == [int(labels[i]) for i in idx[rank::world]]
    assert len(dev._perms) <= 2  # old epochs' permutations are dropped


def test_memmap_and_in_memory_train_bit_identically(ds, tmp_path):
    """The acceptance test of the device path on the CPU: same losses, weights, EMA, optimizer
    state and generator state after several steps (flips, label dropout, dropout all on)."""
    common = ["train.steps=6", "train.checkpoint_every_steps=0"]
    train(cfg(*common, "train.data_on_device=off"), ds.root, tmp_path / "off", progress=False)
    train(cfg(*common, "train.data_on_device=on"), ds.root, tmp_path / "on", progress=False)
    assert losses(tmp_path / "off") == losses(tmp_path / "on")
    assert len(losses(tmp_path / "on")) == 6
    assert weights(tmp_path / "off") == weights(tmp_path / "on")


def test_resume_across_sources_is_exact_on_the_cpu(ds, tmp_path):
    # Both sources draw from a CPU generator on a CPU: a run saved with one continues exactly
    # with the other (the state is saved under the same name).
    ref = tmp_path / "ref"
    train(cfg("train.steps=6", "train.data_on_device=off"), ds.root, ref, progress=False)
    run = tmp_path / "r"
    train(cfg("train.steps=3", "train.data_on_device=off"), ds.root, run, progress=False)
    train(cfg("train.steps=6", "train.data_on_device=on"), ds.root, run, progress=False)
    assert losses(run) == losses(ref)
    assert weights(run) == weights(ref)


def test_resume_with_another_generator_kind_continues_with_a_note(
    ds, tmp_path, monkeypatch, capsys
):
    """A checkpoint whose step generator is of another device (as when "auto" picks otherwise
    on a GPU): training goes on from a fresh seed, with the same data order, and says so."""
    import diffscape.train.resume as train_resume

    run = tmp_path / "r"
    train(cfg("train.steps=2"), ds.root, run, progress=False)
    real = train_resume.gen_state_key
    monkeypatch.setattr(
        train_resume, "gen_state_key", lambda gen, rank: "gen_cuda" + real(gen, rank)[3:]
    )
    r = train(cfg("train.steps=4"), ds.root, run, progress=False)
    assert r.steps == 4 and all(np.isfinite(losses(run)))
    assert "holds the step generator of another device" in capsys.readouterr().err


def test_auto_is_on_only_for_cuda_when_the_split_fits():
    gib = 2**30
    assert data_on_device("on", "cpu", 10 * gib, None) == (True, None)
    assert data_on_device("off", "cuda", 1, 100 * gib) == (False, None)
    assert data_on_device("auto", "cpu", 1, None) == (False, None)  # the memmap keeps RAM flat
    assert data_on_device("auto", "cuda", int(DEVICE_DATA_FRACTION * 80 * gib), 80 * gib) == (
        True,
        None,
    )
    on, note = data_on_device("auto", "cuda", 30 * gib, 80 * gib)
    assert not on and "30720 MiB" in note and "data_on_device=on" in note


def test_make_source_follows_the_setting_on_the_cpu():
    images = np.zeros((4, 3, 8, 8), dtype=np.uint8)
    labels = np.arange(4)
    dev = torch.device("cpu")
    assert isinstance(make_source("auto", images, labels, 0, 2, dev)[0], HostSource)
    assert isinstance(make_source("on", images, labels, 0, 2, dev)[0], DeviceSource)
    with pytest.raises(ConfigError, match="data_on_device"):
        cfg("train.data_on_device=maybe")


@CUDA
def test_cuda_device_source_gathers_the_same_images(ds):
    images, labels = ds.images("train"), ds.labels("train")
    host = HostSource(images, labels, seed=0, batch_size=8)
    dev = DeviceSource(images, labels, seed=0, batch_size=8, device="cuda")
    for step in range(5):
        (xh, yh), (xd, yd) = host.batch(step), dev.batch(step)
        assert xd.is_cuda and torch.equal(xh, xd.cpu()) and torch.equal(yh, yd.cpu())


@CUDA
def test_cuda_step_has_no_host_sync(ds):
    """After a warm-up step, train_step with the split on the GPU, fused AdamW and the device
    guard must not synchronise with the host (torch raises on any synchronising call)."""
    c = cfg("train.steps=10").with_changes(model={"num_classes": 3})
    acc = make_accelerator(c, cpu=False)
    model, ema, opt = build_model(c, acc)
    data = DeviceSource(ds.images("train"), ds.labels("train"), 0, 8, acc.device)
    parts = step_parts(c, acc, model, ema, opt, step_generator(c, 0, data.device))
    state = TrainingState(step=0)
    run_step(parts, state, data)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        results = [run_step(parts, state, data) for _ in range(4)]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(bool(r.finite) for r in results)


@CUDA
def test_cuda_auto_training_resumes_exactly(ds, tmp_path):
    common = ["train.checkpoint_every_steps=0", "train.data_on_device=auto"]
    train(cfg("train.steps=6", *common), ds.root, tmp_path / "a", progress=False)
    train(cfg("train.steps=3", *common), ds.root, tmp_path / "b", progress=False)
    train(cfg("train.steps=6", *common), ds.root, tmp_path / "b", progress=False)
    assert losses(tmp_path / "a") == pytest.approx(losses(tmp_path / "b"), rel=1e-3)
    assert "gen_cuda_rank0" in (checkpoint.latest_checkpoint(tmp_path / "b") / "rng.safetensors"
                                ).read_bytes().decode("latin-1")  # fmt: skip
