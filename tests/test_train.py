"""Training that survives: exact resume, signals, SIGKILL during a save, NaN guard, refusals,
two Accelerate processes. Tiny networks on tiny data; subprocesses where a real process must die."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from fixtures_data import colour_dataset

from diffscape import checkpoint
from diffscape.core import allocator, layout
from diffscape.data.source import batch_indices
from diffscape.model import diffusion
from diffscape.settings import presets
from diffscape.settings.engine import ConfigError
from diffscape.train import NonFiniteLossError, train
from diffscape.train.step import lr_at

TINY = [
    "model.channels=[16, 32]",
    "model.attention_resolutions=[16]",
    "model.conditional=true",
    "model.dropout=0.1",
    "train.batch_size=8",
    "train.log_every_steps=1",
    "train.sample_every_steps=0",
    "train.warmup_steps=2",
]
ENV = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    d = colour_dataset(tmp_path_factory.mktemp("data") / "ds", n_train=40)
    # The first training in a process may differ from later identical ones in the last bits on
    # two threads (an AMX VM, 2026-12-06: fp32 and bf16 alike; one thread never did): the
    # exactness tests compare later ones, whatever ran before them.
    train(cfg("train.steps=1"), d.root, tmp_path_factory.mktemp("warm") / "r", progress=False)
    return d


def cfg(*extra):
    return presets.resolve("tiny", TINY + list(extra))


def losses(run: Path) -> list[float]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [json.loads(x)["loss"] for x in lines if not json.loads(x).get("skipped")]


def test_resume_equals_uninterrupted_run(ds, tmp_path):
    # a constant LR after warm-up: a decaying one depends on train.steps, which grows here
    FREE = ("train.checkpoint_every_steps=0", "train.lr_schedule=constant")
    train(
        cfg("train.steps=12", *FREE),
        ds.root,
        tmp_path / "a",
        progress=False,
    )
    train(
        cfg("train.steps=5", *FREE),
        ds.root,
        tmp_path / "b",
        progress=False,
    )
    # continue the same run folder to 12 steps (steps may grow; shape may not change)
    r = train(
        cfg("train.steps=12", *FREE),
        ds.root,
        tmp_path / "b",
        progress=False,
    )
    assert r.steps == 12
    assert losses(tmp_path / "a") == losses(tmp_path / "b")  # bit-identical on CPU
    wa = (
        checkpoint.latest_checkpoint(tmp_path / "a") / "ema" / "diffusion_pytorch_model.safetensors"
    )
    wb = (
        checkpoint.latest_checkpoint(tmp_path / "b") / "ema" / "diffusion_pytorch_model.safetensors"
    )
    assert wa.read_bytes() == wb.read_bytes()


def test_checkpoint_contents_and_pruning(ds, tmp_path):
    train(cfg("train.steps=8", "train.checkpoint_every_steps=2", "train.keep_last=2",
              "train.milestone_every_steps=4"), ds.root, tmp_path / "r", progress=False)  # fmt: skip
    steps = [s for s, _ in checkpoint.list_checkpoints(tmp_path / "r")]
    assert steps == [4, 6, 8]  # last two + the milestone at 4
    ck = checkpoint.latest_checkpoint(tmp_path / "r")
    names = {p.name for p in ck.iterdir()}
    assert {"model", "ema", "optimizer.safetensors", "rng.safetensors", "state.json",
            "config.json", "run.json", "COMPLETE"} <= names  # fmt: skip
    assert json.loads((ck / "state.json").read_text())["step"] == 8
    assert json.loads((ck / "run.json").read_text())["classes"] == ["c0", "c1", "c2"]
    assert presets.load_config_json(ck / "config.json").model.num_classes == 3
    assert (tmp_path / "r" / "config.json").is_file()
    assert not any(p.suffix in (".bin", ".pt", ".pkl") for p in ck.rglob("*"))


def test_changed_shape_is_refused(ds, tmp_path):
    train(cfg("train.steps=2"), ds.root, tmp_path / "r", progress=False)
    with pytest.raises(ConfigError, match=r"model\.channels"):
        train(
            cfg("train.steps=4", "model.channels=[16, 48]"), ds.root, tmp_path / "r", progress=False
        )


def test_nan_guard_skips_then_stops(ds, tmp_path, monkeypatch):
    real = diffusion.training_target
    calls = {"n": 0}

    def poisoned(*a, **k):  # steps 3 and 4 get a NaN target, then 6 onwards
        calls["n"] += 1
        out = real(*a, **k)
        return out * float("nan") if calls["n"] in (3, 4) or calls["n"] >= 6 else out

    monkeypatch.setattr(diffusion, "training_target", poisoned)
    run = tmp_path / "r"
    with pytest.raises(NonFiniteLossError, match="5 non-finite"):
        train(cfg("train.steps=30", "train.checkpoint_every_steps=5"), ds.root, run, progress=False)
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    skipped = [r["step"] for r in records if r.get("skipped")]
    assert skipped == [3, 4, 6, 7, 8, 9, 10]
    # the checkpoint at step 5 stays; it holds the weights after step 5's good update, and the
    # skipped steps 6.. never touched them (a checkpoint at step 10 was never written)
    assert [s for s, _ in checkpoint.list_checkpoints(run)] == [5]


def test_skipped_step_leaves_weights_untouched(ds, tmp_path, monkeypatch):
    real = diffusion.training_target
    calls = {"n": 0}

    def poisoned(*a, **k):
        calls["n"] += 1
        return real(*a, **k) * (float("nan") if calls["n"] == 3 else 1.0)

    train(cfg("train.steps=2"), ds.root, tmp_path / "r", progress=False)
    before = (
        checkpoint.latest_checkpoint(tmp_path / "r")
        / "model"
        / "diffusion_pytorch_model.safetensors"
    )
    before_bytes = before.read_bytes()
    monkeypatch.setattr(diffusion, "training_target", poisoned)
    calls["n"] = 2  # the next call (step 3) is poisoned
    train(cfg("train.steps=3"), ds.root, tmp_path / "r", progress=False)
    after = (
        checkpoint.latest_checkpoint(tmp_path / "r")
        / "model"
        / "diffusion_pytorch_model.safetensors"
    )
    assert after.read_bytes() == before_bytes


def test_malicious_pickle_is_never_loaded(ds, tmp_path):
    run = tmp_path / "r"
    train(cfg("train.steps=2"), ds.root, run, progress=False)
    ck = checkpoint.latest_checkpoint(run)
    sentinel = tmp_path / "PWNED"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {sentinel}",))

    # replace the weights by a pickle carrying a payload, as an attacker would
    (ck / "model" / "diffusion_pytorch_model.safetensors").unlink()
    torch.save({"x": Evil()}, ck / "model" / "diffusion_pytorch_model.bin")
    torch.save({"x": Evil()}, ck / "training_state.pt")
    with pytest.raises(checkpoint.CheckpointError, match="safetensors"):
        train(cfg("train.steps=4"), ds.root, run, progress=False)
    from diffscape.sample import load_for_sampling

    with pytest.raises(checkpoint.CheckpointError, match="safetensors"):
        load_for_sampling(run, use_ema=False)
    assert not sentinel.exists()


def _train_cmd(ds_root: Path, run: Path, *extra: str) -> list[str]:
    sets = []
    for s in TINY + list(extra):
        sets += ["--set", s]
    return [sys.executable, "-m", "diffscape", "train", str(ds_root), "--out", str(run),
            "--no-progress", *sets]  # fmt: skip


def _wait_for(predicate, timeout=120.0):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_sigterm_saves_and_exits(ds, tmp_path):
    run = tmp_path / "r"
    proc = subprocess.Popen(_train_cmd(ds.root, run, "train.steps=100000",
                                       "train.checkpoint_every_steps=0"),
                            env=ENV, stderr=subprocess.PIPE, text=True)  # fmt: skip
    metrics = run / "metrics.jsonl"
    assert _wait_for(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 3)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "--resume" in err
    saved = checkpoint.list_checkpoints(run)
    assert len(saved) == 1 and saved[0][0] >= 3


def test_sigkill_during_save_then_resume(ds, tmp_path):
    """Kill the process while it writes its second checkpoint (the window is widened by a
    sleep before the COMPLETE marker); the resume must start from the first."""
    run = tmp_path / "r"
    script = tmp_path / "slow_save.py"
    script.write_text(
        "import sys, time\n"
        "import diffscape.checkpoint.save as c\n"
        "real = c.write_marker\n"
        "n = {'calls': 0}\n"
        "def slow(folder):\n"
        "    n['calls'] += 1\n"
        "    if n['calls'] == 2:\n"
        "        print('SAVING', folder, flush=True)\n"
        "        time.sleep(60)\n"
        "    real(folder)\n"
        "c.write_marker = slow\n"
        "from diffscape.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    cmd = _train_cmd(ds.root, run, "train.steps=6", "train.checkpoint_every_steps=2")
    proc = subprocess.Popen([sys.executable, str(script), *cmd[3:]], env=ENV,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    line = proc.stdout.readline()
    assert line.startswith("SAVING")
    proc.kill()
    proc.wait(timeout=30)
    assert [s for s, _ in checkpoint.list_checkpoints(run)] == [2]
    assert any(layout.TMP_INFIX in p.name for p in (run / "checkpoints").iterdir())
    done = subprocess.run(cmd + ["--resume"], env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "from step-0000002" in done.stderr
    assert [s for s, _ in checkpoint.list_checkpoints(run)] == [4, 6]
    assert not any(layout.TMP_INFIX in p.name for p in (run / "checkpoints").iterdir())
    # and the resumed losses equal an uninterrupted run's (same thread count: float sums differ)
    ref = subprocess.run(
        _train_cmd(ds.root, tmp_path / "ref", "train.steps=6", "train.checkpoint_every_steps=2"),
        env=ENV, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert ref.returncode == 0, ref.stderr
    assert losses(run) == losses(tmp_path / "ref")


def _run_cli(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)


def test_minutes_budget_stops_saves_and_resumes_exactly(ds, tmp_path):
    """`train --minutes`: at the deadline the step in progress finishes, a checkpoint is saved,
    the exit code is 0 and the stop is logged; `--resume` then continues exactly."""
    run = tmp_path / "r"
    fixed = ["train.lr_schedule=constant", "train.checkpoint_every_steps=0"]  # LR free of steps
    cut = _run_cli(_train_cmd(ds.root, run, *fixed, "train.steps=100000") + ["--minutes", "0.02"])
    assert cut.returncode == 0, cut.stderr
    assert "budget" in cut.stderr and "stopped by the --minutes budget" in cut.stdout
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    stopped = records[-1]["step"]
    assert 1 <= stopped < 100000 and records[-1]["stopped_by"] == "budget"
    assert [r["step"] for r in records] == list(range(1, stopped + 1))
    assert [s for s, _ in checkpoint.list_checkpoints(run)] == [stopped]

    total = stopped + 3
    more = _run_cli(_train_cmd(ds.root, run, *fixed, f"train.steps={total}") + ["--resume"])
    assert more.returncode == 0, more.stderr
    assert f"trained {total} steps (" in more.stdout  # ended by train.steps, not a budget
    ref = _run_cli(_train_cmd(ds.root, tmp_path / "ref", *fixed, f"train.steps={total}"))
    assert ref.returncode == 0, ref.stderr
    assert losses(run) == losses(tmp_path / "ref")  # bit-identical (same thread count)


def test_minutes_budget_in_process_reports_stopped_by(ds, tmp_path):
    c = cfg("train.steps=100000", "train.minutes=0.0001", "train.checkpoint_every_steps=0")
    r = train(c, ds.root, tmp_path / "r", progress=False)
    assert r.stopped_by == "budget" and r.steps == 1  # the first step always finishes
    assert r.final_checkpoint == checkpoint.latest_checkpoint(tmp_path / "r")
    done = train(cfg("train.steps=2"), ds.root, tmp_path / "r", progress=False)
    assert done.stopped_by == "steps" and done.steps == 2


@pytest.mark.timeout(600)
def test_two_accelerate_processes_train_checkpoint_resume(ds, tmp_path):
    if (
        shutil.which("accelerate") is None
        and not (Path(sys.executable).parent / "accelerate").exists()
    ):
        pytest.skip("accelerate CLI not installed")
    exe = Path(sys.executable).parent / "accelerate"
    run = tmp_path / "ddp"

    def launch(steps: int) -> subprocess.CompletedProcess:
        # `--cpu --num_processes 2` silently starts one process; --multi_gpu with a CPU-only
        # Accelerator gives two gloo processes (measured on this machine).
        cmd = [str(exe), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
               str(29500 + os.getpid() % 1000), "-m", "diffscape", "train", str(ds.root),
               "--out", str(run), "--no-progress", "--cpu"]  # fmt: skip
        for s in TINY + [f"train.steps={steps}", "train.checkpoint_every_steps=2"]:
            cmd += ["--set", s]
        return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)

    first = launch(4)
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout.count("trained 4 steps") == 1  # only the main process reports
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]  # one writer
    assert all(r["processes"] == 2 for r in records)
    second = launch(6)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "from step-0000004" in second.stderr
    assert [s for s, _ in checkpoint.list_checkpoints(run)] == [4, 6]


def test_data_order_and_lr_are_pure_functions():
    a = batch_indices(0, 7, 10, 23)
    assert (a == batch_indices(0, 7, 10, 23)).all() and len(set(a.tolist())) == 10
    # consecutive steps of one epoch cover the data without repeats
    first_epoch = [i for s in range(2) for i in batch_indices(3, s, 10, 20).tolist()]
    assert sorted(first_epoch) == list(range(20))
    assert lr_at(0, 1.0, 10, 100, "constant") == pytest.approx(0.1)
    assert lr_at(50, 1.0, 10, 100, "constant") == 1.0
    assert lr_at(100, 1.0, 10, 100, "cosine") == pytest.approx(0.0, abs=1e-9)
    assert lr_at(55, 1.0, 10, 100, "linear") == pytest.approx(0.5)
    # a wall-clock budget: the decay follows whichever end is nearer, steps or minutes
    assert lr_at(20, 1.0, 10, 100, "linear", budget_progress=0.75) == pytest.approx(0.25)
    assert lr_at(20, 1.0, 10, 100, "cosine", budget_progress=1.0) == pytest.approx(0, abs=1e-9)
    assert lr_at(20, 1.0, 10, 100, "constant", budget_progress=0.9) == 1.0
    assert lr_at(5, 1.0, 10, 100, "linear", budget_progress=0.9) == pytest.approx(0.6)  # warm-up


def test_lr_decays_to_the_minutes_deadline_and_the_budget_is_the_runs(ds, tmp_path):
    """With train.minutes, a decaying LR follows the seconds trained to 0 at the deadline
    although train.steps is far away; the seconds are checkpointed, so a resumed run trains only
    what is left. (Checked against the log's own clock: independent of the machine's speed.)"""
    budget = 0.2 * 60
    over = ("train.steps=100000", "train.minutes=0.2", "train.lr_schedule=linear",
            "train.warmup_steps=0", "train.log_every_steps=1", "train.checkpoint_every_steps=0")  # fmt: skip
    r = train(cfg(*over), ds.root, tmp_path / "r", progress=False)
    assert r.stopped_by == "budget" and r.steps >= 2
    records = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    peak = cfg().train.lr
    assert records[0]["lr"] == pytest.approx(peak)  # nothing trained before the first step
    for before, rec in zip(records, records[1:], strict=False):  # a step's LR: the seconds so far
        assert rec["lr"] == pytest.approx(peak * (1 - before["seconds"] / budget), rel=1e-6)
    assert records[-2]["seconds"] < budget <= records[-1]["seconds"]
    state = json.loads((r.final_checkpoint / "state.json").read_text())
    assert state["seconds"] == pytest.approx(records[-1]["seconds"])
    again = train(cfg(*over), ds.root, tmp_path / "r", progress=False)
    assert again.steps == r.steps and again.stopped_by == "budget"  # nothing left to train


def test_cpu_bf16_autocast_trains_close_to_fp32(ds, tmp_path):
    train(cfg("train.steps=6"), ds.root, tmp_path / "f", progress=False)
    train(cfg("train.steps=6", "train.precision=bf16"), ds.root, tmp_path / "b", progress=False)
    f, b = losses(tmp_path / "f"), losses(tmp_path / "b")
    assert all(abs(x - y) < 0.05 * x for x, y in zip(f, b, strict=True))
    with pytest.raises(ConfigError, match="fp16"):
        if torch.cuda.is_available():
            pytest.skip("fp16 is allowed on a GPU")
        train(cfg("train.steps=1", "train.precision=fp16"), ds.root, tmp_path / "h", progress=False)


_RSS_WRAPPER = """\
import runpy, sys, threading, time
def anon_mib():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
peak = [0.0]
def watch():
    while True:
        peak[0] = max(peak[0], anon_mib())
        time.sleep(0.02)
threading.Thread(target=watch, daemon=True).start()
sys.argv = ["diffscape", *sys.argv[1:]]
try:
    runpy.run_module("diffscape", run_name="__main__")
finally:
    peak[0] = max(peak[0], anon_mib())
    print("PEAK_ANON_MIB", peak[0], file=sys.stderr)
"""


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs Linux /proc")
def test_memory_does_not_grow_with_the_dataset(tmp_path):
    # 64 vs 40,000 training images (117 MiB of pixels): the loop reads the memory-mapped arrays
    # per batch, so the bigger set must not cost anything like its size. Measured as the peak of
    # anonymous memory (RssAnon, sampled every 20 ms): the memmap's file-backed pages also show
    # in RSS (the kernel maps whole page-cache folios, ~80 MiB over 20 steps here), but they are
    # clean page cache that the kernel takes back under pressure, not memory the run holds.
    def peak_anon_mib(n_train: int) -> float:
        ds = colour_dataset(tmp_path / f"ds{n_train}", n_train=n_train, n_test=8)
        cmd = _train_cmd(ds.root, tmp_path / f"run{n_train}", "train.steps=20")
        cmd[1:3] = ["-c", _RSS_WRAPPER]  # python -c WRAPPER train ... instead of -m diffscape
        # the allocator the command would restart itself with, from the start: a restart would
        # replace the wrapper
        env = allocator.command_environment(ENV) or ENV
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        line = next(x for x in done.stderr.splitlines() if x.startswith("PEAK_ANON_MIB"))
        return float(line.split()[1])

    small, big = peak_anon_mib(64), peak_anon_mib(40_000)
    data_mib = 40_000 * 3 * 32 * 32 / 2**20
    assert big - small < 0.15 * data_mib, (small, big, data_mib)  # < 18 MiB of 117 MiB


# ---- the guard without a host sync (issue 17) -----------------------------------------------


def _guarded_run(ds, monkeypatch, *, fused: bool, guard: str, bad: set[int], steps: int = 5):
    """``steps`` train_step calls on the memmap source; steps in ``bad`` get a NaN target.
    Returns the results and a snapshot of weights, EMA and optimizer state after each step."""
    import diffscape.train as tr
    from diffscape.checkpoint import TrainingState
    from diffscape.data.source import HostSource
    from diffscape.train.setup import step_generator

    real = diffusion.training_target
    state = TrainingState(step=0)

    def poisoned(*a, **k):
        return real(*a, **k) * (float("nan") if state.step in bad else 1.0)

    monkeypatch.setattr(diffusion, "training_target", poisoned)
    # fp32: the kernels are compared; bf16 autocast (the preset's auto on a bf16 CPU) would
    # round their float-level differences up to the loss's 3 digits
    c = cfg(f"train.steps={steps}", "train.precision=fp32").with_changes(model={"num_classes": 3})
    acc = tr.make_accelerator(c, cpu=True)
    model, ema, _ = tr.build_model(c, acc)
    opt = torch.optim.AdamW(model.parameters(), lr=c.train.lr, fused=fused, foreach=not fused)
    parts = tr.step_parts(c, acc, model, ema, opt, step_generator(c, 0))
    parts.guard = guard
    data = HostSource(ds.images("train"), ds.labels("train"), c.train.seed, c.train.batch_size)
    results, snaps = [], []
    for _ in range(steps):
        results.append(tr.train_step(parts, state, data))
        snap = {f"m.{k}": v.detach().clone() for k, v in model.named_parameters()}
        snap |= {f"e.{k}": v.clone() for k, v in ema.named_parameters()}
        for i, s in enumerate(opt.state_dict()["state"].values()):
            snap |= {f"o.{i}.{k}": v.clone() for k, v in s.items()}
        snaps.append(snap)
    monkeypatch.undo()
    return results, snaps


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_device_guard_skips_like_the_host_guard(ds, monkeypatch):
    # Step 2 (0-based) is non-finite. The device guard (fused AdamW's found_inf, EMA weight 0)
    # must leave weights, EMA and optimizer state (moments and step count) exactly as they were,
    # and end bit for bit where the old guard (read on the host before the update) ends.
    dev, dev_snaps = _guarded_run(ds, monkeypatch, fused=True, guard="device", bad={2})
    host, host_snaps = _guarded_run(ds, monkeypatch, fused=True, guard="host", bad={2})
    assert [bool(r.finite) for r in dev] == [True, True, False, True, True]
    assert [bool(r.finite) for r in host] == [True, True, False, True, True]
    assert _same(dev_snaps[1], dev_snaps[2])  # the skipped step changed nothing
    assert not _same(dev_snaps[2], dev_snaps[3])  # the next one did
    assert all(float(v) == 2.0 for k, v in dev_snaps[2].items() if k.endswith(".step"))
    for d, h in zip(dev_snaps, host_snaps, strict=True):
        assert _same(d, h)
    assert [float(r.loss) for r in dev[:2]] == [float(r.loss) for r in host[:2]]


def test_fused_device_guard_trains_like_eager_foreach(ds, monkeypatch):
    fused, f_snaps = _guarded_run(ds, monkeypatch, fused=True, guard="device", bad=set())
    loop, l_snaps = _guarded_run(ds, monkeypatch, fused=False, guard="host", bad=set())
    # Other kernels, same math: equal up to float rounding (atol 1% of one step's size, lr).
    assert [float(r.loss) for r in fused] == pytest.approx([float(r.loss) for r in loop], rel=1e-4)
    lr = cfg().train.lr
    for k in f_snaps[-1]:
        torch.testing.assert_close(f_snaps[-1][k], l_snaps[-1][k], rtol=1e-4, atol=0.01 * lr)


def test_non_finite_steps_are_counted_when_the_window_is_read(ds, tmp_path, monkeypatch):
    # log_every_steps=4: the flags are read at steps 4 and 8. Steps 3.. are non-finite; the
    # fifth in a row is step 7, and the run stops when that window is read (at step 8).
    real = diffusion.training_target
    calls = {"n": 0}

    def poisoned(*a, **k):
        calls["n"] += 1
        return real(*a, **k) * (float("nan") if calls["n"] >= 3 else 1.0)

    monkeypatch.setattr(diffusion, "training_target", poisoned)
    run = tmp_path / "r"
    over = ("train.steps=30", "train.log_every_steps=4", "train.checkpoint_every_steps=0")
    with pytest.raises(NonFiniteLossError, match="5 non-finite .* at step 7;"):
        train(cfg(*over), ds.root, run, progress=False)
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r.get("skipped")] == [3, 4, 5, 6, 7, 8]
    window = [r for r in records if not r.get("skipped")]
    assert [(r["step"], r["skipped_steps"]) for r in window] == [(4, 2)]
    assert calls["n"] == 8


def test_pace_note_says_how_long_the_run_takes():
    from diffscape.train.logger import pace_note

    # the case: `small` at ~9 img/s (0.29 steps of 32/s), 10,000 steps, no budget
    slow = pace_note(10_000, 0.0, 25, 0.29, 90.0)
    assert "9975 steps to go take about 9.6 h" in slow and "--minutes" in slow
    # a budget that ends the run first: the step it will reach
    assert "reaches about step 895 of train.steps=100000" in pace_note(100_000, 30, 25, 0.5, 60)
    # a budget the step cap ends first: the time to the cap
    assert "75 steps to go take about 2.5 min" in pace_note(100, 30, 25, 0.5, 60)
