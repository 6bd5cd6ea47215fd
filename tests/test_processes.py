"""train.processes: CPU training in several processes started by train() itself (torch's
elastic launcher). Two processes train what one does (up to float rounding), a run continues
with another process count, a worker's error comes back as one line; the auto rule."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_data import colour_dataset
from PIL import Image
from safetensors.torch import load_file

from diffscape import checkpoint
from diffscape.core import allocator, layout
from diffscape.core.errors import DiffscapeError
from diffscape.model.unet import build_unet
from diffscape.sample.generate import generate_images, grid_image
from diffscape.settings import presets
from diffscape.settings.engine import ConfigError
from diffscape.train import processes, train

SMALL = [
    "model.channels=[16, 32]",
    "model.attention_resolutions=[16]",
    "model.conditional=true",
    "model.dropout=0.0",  # dropout draws per process: the one thing that differs by count
    "train.batch_size=8",
    "train.precision=fp32",
    "train.log_every_steps=1",
    "train.sample_every_steps=0",
    "train.warmup_steps=2",
    "train.lr_schedule=constant",
    "train.checkpoint_every_steps=0",
]


def cfg(*extra):
    return presets.resolve("tiny", SMALL + list(extra))


def losses(run: Path) -> list[float]:
    return [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines()]


def ema(run: Path) -> dict[str, torch.Tensor]:
    ck = checkpoint.latest_checkpoint(run)
    return load_file(ck / "ema" / "diffusion_pytorch_model.safetensors")


@pytest.mark.timeout(600)
def test_two_processes_train_what_one_does_and_a_run_changes_count(tmp_path):
    ds = colour_dataset(tmp_path / "ds", n_train=40)
    one = train(cfg("train.steps=8", "train.processes=1"), ds.root, tmp_path / "one",
                progress=False)  # fmt: skip
    assert one.processes == 1
    # 4 steps in two processes, then on to 8 in one: the same run as one process throughout
    env = dict(os.environ)
    two = train(cfg("train.steps=4", "train.processes=2"), ds.root, tmp_path / "mixed",
                progress=False)  # fmt: skip
    assert dict(os.environ) == env  # the launch's environment (and the launcher's) undone
    assert (two.processes, two.steps, two.main_process) == (2, 4, True)
    records = [
        json.loads(x) for x in (tmp_path / "mixed" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in records] == [1, 2, 3, 4] and records[0]["processes"] == 2
    rest = train(cfg("train.steps=8", "train.processes=1"), ds.root, tmp_path / "mixed",
                 progress=False)  # fmt: skip
    assert (rest.processes, rest.steps) == (1, 8)
    assert losses(tmp_path / "mixed") == pytest.approx(losses(tmp_path / "one"), rel=1e-4)
    a, b = ema(tmp_path / "one"), ema(tmp_path / "mixed")
    assert a.keys() == b.keys()
    for k in a:  # Adam's normalised steps amplify rounding: within 5% of one step (lr 2e-3)
        torch.testing.assert_close(b[k], a[k], rtol=1e-3, atol=1e-4)
    # a different seed is a different run: the comparison above can fail
    other = tmp_path / "seed1"
    train(cfg("train.steps=2", "train.processes=1", "train.seed=1"), ds.root, other,
          progress=False)  # fmt: skip
    assert losses(other)[:2] != pytest.approx(losses(tmp_path / "one")[:2], rel=1e-4)

    # an error in the processes comes back as the error they raised, not a launcher report
    with pytest.raises(DiffscapeError, match="already holds checkpoints; use --resume"):
        train(cfg("train.steps=9", "train.processes=2"), ds.root, tmp_path / "one",
              resume=False, progress=False)  # fmt: skip


@pytest.mark.timeout(600)
def test_two_processes_resume_exactly(tmp_path):
    """The default on an idle 2-core CPU: two processes of one thread; a run stopped after 2
    steps and continued (new processes) has the uninterrupted run's losses, bit for bit. The
    sample grids, made half in each process, are the grids one process makes (up to a rounded
    pixel: float sums differ between batch shapes). The memory
    allocator (tcmalloc where the system has it, the C library's in the first part of "b")
    changes nothing computed."""
    ds = colour_dataset(tmp_path / "ds", n_train=40)
    two = (
        "train.processes=2",
        "model.dropout=0.1",  # dropout: each rank's stream resumes too
        "train.sample_every_steps=3",  # the grids: each process makes its share
        "train.sample_steps=2",
    )
    a = train(cfg("train.steps=6", *two), ds.root, tmp_path / "a", progress=False)
    assert a.allocator == ("tcmalloc" if allocator.find_tcmalloc() else "libc")
    b = train(cfg("train.steps=2", "train.allocator=system", *two), ds.root, tmp_path / "b",
              progress=False)  # fmt: skip
    assert b.allocator == "libc"
    # a run that ends before its first grid gets one at the end (the main process decides)
    assert (tmp_path / "b" / layout.TRAIN_SAMPLES / layout.train_grid_name(2)).is_file()
    train(cfg("train.steps=6", *two), ds.root, tmp_path / "b", progress=False)
    assert len(losses(tmp_path / "a")) == 6
    assert losses(tmp_path / "b") == losses(tmp_path / "a")
    assert ema(tmp_path / "b").keys() == ema(tmp_path / "a").keys()
    assert all(torch.equal(ema(tmp_path / "b")[k], v) for k, v in ema(tmp_path / "a").items())

    # the grid at step 6, its images made half in each process, is the grid one process makes
    # from the same EMA weights (each image depends only on its seed, class and index), up to
    # float rounding
    grids = [run / layout.TRAIN_SAMPLES / layout.train_grid_name(6) for run in (tmp_path / "a",
             tmp_path / "b")]  # fmt: skip
    assert grids[0].read_bytes() == grids[1].read_bytes()
    c = checkpoint.read_checkpoint_config(checkpoint.latest_checkpoint(tmp_path / "a"))
    unet = build_unet(c.model)
    unet.load_state_dict(ema(tmp_path / "a"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the two processes
    try:
        imgs = generate_images(unet, c, class_idx=[k for k in range(3) for _ in range(8)],
                               index=[i for _ in range(3) for i in range(8)], seed=1234,
                               sampler="ddim", steps=2, guidance=1.0, progress=False)  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    whole = np.asarray(grid_image(imgs, ds.classes, 8).convert("RGB")).astype(int)
    got = np.asarray(Image.open(grids[0]).convert("RGB")).astype(int)
    # float sums may differ in the last bit between batch shapes (12 images per process there,
    # 24 here; an AMD EPYC VM: 8 values of 371,952 off by one): allow one grey level
    assert np.abs(got - whole).max() <= 1 and (got == whole).mean() > 0.999


def _wait_for_steps(run: Path, steps: int, proc: subprocess.Popen) -> None:
    metrics, t0 = run / "metrics.jsonl", time.monotonic()
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= steps):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() - t0 < 180, "no training steps in 180 s"
        time.sleep(0.2)


def _workers(launcher: int) -> list[int]:
    """The training processes the launcher spawned (not multiprocessing's resource tracker)."""
    kids = Path(f"/proc/{launcher}/task/{launcher}/children").read_text().split()
    return [int(k) for k in kids if b"spawn_main" in Path(f"/proc/{k}/cmdline").read_bytes()]


@pytest.mark.timeout(600)
@pytest.mark.skipif(
    not Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").exists(),
    reason="finds the training processes in /proc/PID/task/PID/children (Linux)",
)
def test_signals_end_two_processes_in_seconds_with_a_checkpoint(tmp_path):
    """SIGTERM to the whole process group (Slurm's scancel and time limit, systemd) reaches
    each training process directly and again through the launcher: one request, not a second
    "really quit" signal. The step in progress finishes, a checkpoint is saved, and the command
    ends in seconds (torch's launcher used to hold its processes 30 s, then SIGKILL them).
    SIGUSR2 (Slurm's warning before a time limit) the same; SIGTERM to one training process
    alone: the same, and a line that names its rank. Under nohup (SIGHUP ignored) a SIGHUP to
    the group changes nothing."""
    ds = colour_dataset(tmp_path / "ds", n_train=40)
    run = tmp_path / "run"
    sets = [a for s in [*SMALL, "train.steps=100000", "train.processes=2"] for a in ("--set", s)]
    cmd = [sys.executable, "-m", "diffscape", "train", str(ds.root), "--out", str(run),
           "--no-progress", *sets]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    def nohup() -> None:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    parts = [("group", signal.SIGTERM), ("group", signal.SIGUSR2), ("one", signal.SIGTERM),
             ("nohup", signal.SIGTERM)]  # fmt: skip
    for part, sig in parts:
        proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True,
                                start_new_session=True,
                                preexec_fn=nohup if part == "nohup" else None)  # fmt: skip
        before = checkpoint.list_checkpoints(run)
        _wait_for_steps(run, len(before and losses(run)) + 3, proc)
        if part == "nohup":
            os.killpg(proc.pid, signal.SIGHUP)
            _wait_for_steps(run, len(losses(run)) + 3, proc)  # it trains on
        t0 = time.monotonic()
        if part == "one":
            os.kill(_workers(proc.pid)[-1], sig)
        else:
            os.killpg(proc.pid, sig)
        _, err = proc.communicate(timeout=120)
        took = time.monotonic() - t0
        assert proc.returncode == 128 + sig, (part, err[-3000:])
        assert took < 15, f"{part} {sig.name}: {took:.1f} s to stop"
        assert "Traceback" not in err, err[-3000:]
        line = err.strip().splitlines()[-1]
        assert line.startswith(f"diffscape: stopped by {sig.name}"), line
        assert ("(rank " in line) == (part == "one"), line
        saved = checkpoint.list_checkpoints(run)  # checkpoint_every_steps=0: the signal's save
        assert saved[-1][0] >= (before[-1][0] if before else 0) + 3, (part, saved)


def test_how_many_processes(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    load = {"others": 0.0}
    monkeypatch.setattr(processes, "other_cores", lambda: load["others"])
    auto = presets.resolve("tiny", ["train.batch_size=16"])
    assert auto.train.processes == 0  # the default: decided by the load
    assert processes.process_count(auto, cpu=True) == 2  # quiet: one per core
    assert processes.process_count(auto, cpu=False) == 1  # a GPU
    load["others"] = 0.9
    assert processes.process_count(auto, cpu=True) == 1  # a busy neighbour: one process
    load["others"] = 0.0
    small = auto.with_changes(train={"batch_size": 8})
    assert processes.process_count(small, cpu=True) == 1  # 8 images: too few to split
    fixed = auto.with_changes(train={"threads": 2})
    assert processes.process_count(fixed, cpu=True) == 1  # threads fixed by the user
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    assert processes.process_count(auto, cpu=True) == 2  # 16 images: at most 2 of 8
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert processes.process_count(auto, cpu=True) == 1
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setenv("WORLD_SIZE", "2")  # already under a launcher
    assert processes.process_count(auto, cpu=True) == 1
    monkeypatch.delenv("WORLD_SIZE")
    three = auto.with_changes(train={"processes": 3})
    with pytest.raises(ConfigError, match="train.processes 3 must divide train.batch_size 16"):
        processes.process_count(three, cpu=True)
    assert processes.process_count(auto.with_changes(train={"processes": 4}), cpu=True) == 4


def test_allocator_environment(tmp_path):
    """train.allocator: tcmalloc preloaded in the processes train() starts, found in the
    environment's lib folder first; a user's own allocator and "system" are left alone."""
    lib = tmp_path / "lib"
    lib.mkdir()
    for name in ("libtcmalloc.so.4", "libtcmalloc_minimal.so.4"):
        (lib / name).touch()
    env = {"CONDA_PREFIX": str(tmp_path), "LD_PRELOAD": "/opt/libhook.so"}
    extra, said = allocator.worker_environment("auto", env)
    assert extra["LD_PRELOAD"] == f"{lib / 'libtcmalloc_minimal.so.4'}:/opt/libhook.so"
    assert int(extra["TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD"]) >= 1 << 40
    assert said == f"tcmalloc ({lib / 'libtcmalloc_minimal.so.4'})"
    assert allocator.worker_environment("system", env) == (
        {}, "the C library's malloc (train.allocator=system)")  # fmt: skip
    mine = {**env, "LD_PRELOAD": "/usr/lib/libjemalloc.so.2"}
    assert allocator.worker_environment("auto", mine) == (
        {},
        "/usr/lib/libjemalloc.so.2 (LD_PRELOAD)",
    )
    maps = tmp_path / "maps"
    maps.write_text("7f00-7f01 r-xp 0 08:01 1 /usr/lib/x86_64-linux-gnu/libc.so.6\n")
    assert allocator.in_use(maps) == "libc"
    maps.write_text("7f00-7f01 r-xp 0 08:01 2 /usr/lib/libtcmalloc_minimal.so.4.5.9\n")
    assert allocator.in_use(maps) == "tcmalloc"
    assert allocator.in_use(tmp_path / "none") == "libc"


def test_the_command_restarts_with_tcmalloc_and_the_system_switch(tmp_path):
    """The command line (``python -m diffscape``, not main() called from Python) restarts itself
    once with tcmalloc preloaded; DIFFSCAPE_ALLOCATOR=system keeps the C library's malloc. The
    training's last line says what its process had; a one-process training (OMP_NUM_THREADS)
    runs in the command's own process."""
    if allocator.find_tcmalloc() is None:
        pytest.skip("no tcmalloc on this machine (apt install libtcmalloc-minimal4)")
    ds = colour_dataset(tmp_path / "ds", n_train=16)
    base = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", allocator.OWN)}
    sets = [a for s in [*SMALL, "train.steps=1"] for a in ("--set", s)]
    for switch, expected in (("auto", "tcmalloc"), ("system", "libc")):
        env = {**base, allocator.SWITCH: switch, "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, "-m", "diffscape", "train", str(ds.root), "--out",
               str(tmp_path / switch), "--no-progress", *sets]  # fmt: skip
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        assert f"1 process(es), malloc: {expected})" in out.stdout, out.stdout


def test_the_commands_own_tcmalloc_and_the_training_processes(tmp_path):
    """What the restart sets, and how train.allocator reads it: "auto" keeps the command's
    tcmalloc in the processes it starts, "system" takes it out of their LD_PRELOAD (and leaves
    a user's own entries); a user's own allocator, the switch and an earlier restart mean no
    restart."""
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "libtcmalloc_minimal.so.4").touch()
    tc = str(lib / "libtcmalloc_minimal.so.4")
    env = allocator.command_environment({"CONDA_PREFIX": str(tmp_path), "LD_PRELOAD": "/h.so"})
    assert env is not None
    assert env["LD_PRELOAD"] == f"{tc}:/h.so" and env[allocator.OWN] == tc
    assert env["CONDA_PREFIX"] == str(tmp_path)  # the rest of the environment, as it was
    assert allocator.command_environment(env) is None  # restarted once, not again
    assert allocator.worker_environment("auto", env) == ({}, f"tcmalloc ({tc})")
    assert allocator.worker_environment("system", env) == (
        {"LD_PRELOAD": "/h.so"}, "the C library's malloc (train.allocator=system)")  # fmt: skip
    off = {"CONDA_PREFIX": str(tmp_path), allocator.SWITCH: "system"}
    assert allocator.command_environment(off) is None
    assert allocator.command_environment({**off, allocator.SWITCH: "libc"}) is not None  # a typo
    mine = {"CONDA_PREFIX": str(tmp_path), "LD_PRELOAD": "/usr/lib/libjemalloc.so.2"}
    assert allocator.command_environment(mine) is None
