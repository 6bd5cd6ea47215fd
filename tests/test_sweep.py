"""Sweeps: the file format and plan, then real tiny sweeps that get killed and resume, fail and
go on, run one subprocess per "GPU", and vary sampling only. Tiny networks, tiny data, few steps.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fixtures_data import colour_dataset
from test_report import check_page

import diffscape.train
from diffscape import checkpoint
from diffscape import sweep as sweep_module
from diffscape.cli import main
from diffscape.core import layout
from diffscape.core.errors import DiffscapeError
from diffscape.report import build_report
from diffscape.settings.engine import ConfigError
from diffscape.study.launch import worker_slots
from diffscape.study.narrate import Tools
from diffscape.study.shared import ensure_data
from diffscape.sweep import SweepError, load_sweep, plan, run_sweep, shipped_sweeps

TINY = """
preset = "tiny"
[base]
model = { channels = [16, 32], attention_resolutions = [16], conditional = true }
train = { steps = STEPS, batch_size = 8, log_every_steps = 2, sample_every_steps = 0, checkpoint_every_steps = 4, warmup_steps = 2 }
[sample]
n = 2
steps = 3
"""
ENV = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONUNBUFFERED": "1"}
TRAIN_ONLY = "[evaluate]\nenabled = false\n[judge]\nenabled = false\n"  # no scoring stages


def job_log(runs: Path, training: str) -> str:
    """The logs of a training's jobs (submitit's files in RUNS/_logs/<training>/)."""
    logs = sorted((runs / layout.SWEEP_LOGS / training).glob("*_log.out"))
    assert logs, f"no job log for {training}"
    return "".join(p.read_text() for p in logs)


def spec_file(tmp: Path, body: str, steps: int = 8, dataset: Path | None = None) -> Path:
    """TINY + body; top-level keys (dataset) go first, before any table."""
    path = tmp / "sweep.toml"
    top = f'dataset = "{dataset}"\n' if dataset else ""
    path.write_text(top + TINY.replace("STEPS", str(steps)) + body)
    return path


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return colour_dataset(tmp_path_factory.mktemp("data") / "ds", n_train=24, n_test=6)


@pytest.fixture(autouse=True)
def own_cache(monkeypatch, tmp_path):
    # Inception features of the real split are cached by content hash; keep them per test.
    monkeypatch.setenv("DIFFSCAPE_CACHE", str(tmp_path / "cache"))


# ---- the file format ---------------------------------------------------------------------------


def test_grid_is_a_product_with_readable_safe_names(tmp_path):
    spec = load_sweep(
        spec_file(
            tmp_path,
            """
[grid]
model.activation = ["gelu", "relu"]
"train.lr" = [1e-4, 2e-4]
""",
        )
    )
    runs = plan(spec)
    assert [r.name for r in runs] == [
        "activation=gelu_lr=0.0001",
        "activation=gelu_lr=0.0002",
        "activation=relu_lr=0.0001",
        "activation=relu_lr=0.0002",
    ]
    assert runs[0].config.model.activation == "gelu" and runs[0].config.train.lr == 1e-4
    assert runs[0].config.model.channels == (16, 32)  # [base] as nested tables
    assert runs[0].changes == {"model.activation": "gelu", "train.lr": 1e-4}
    assert all(r.sampling == "ddim-3-w1" for r in runs)


def test_named_runs_and_sampling_variants(tmp_path):
    spec = load_sweep(
        spec_file(
            tmp_path,
            """
[[runs]]
name = "cosine T/500"
diffusion = { schedule = "cosine", timesteps = 500 }
[[runs]]
"diffusion.timesteps" = 200
[[sample.runs]]
sampler = "ddpm"
[[sample.runs]]
sampler = "dpm"
steps = 10
""",
        )
    )
    runs = plan(spec)
    assert [(r.training, r.sampling) for r in runs] == [
        ("cosine-T-500", "ddpm-w1"),
        ("cosine-T-500", "dpm-10-w1"),
        ("timesteps=200", "ddpm-w1"),
        ("timesteps=200", "dpm-10-w1"),
    ]
    assert runs[0].name == "cosine-T-500/ddpm-w1"
    # ancestral sampling takes every one of the model's T steps, whatever [sample] says
    assert runs[0].sample.steps == 500 and runs[2].sample.steps == 200
    assert runs[0].changes["sample.steps"] == 500


ONE_SAMPLING = "[[sample.runs]]\nsampler = 'ddpm'\n"
TWO_SAMPLINGS = ONE_SAMPLING + "[[sample.runs]]\nsampler = 'ddpm'\nguidance = 2.0\n"


@pytest.mark.parametrize(("body", "n"), [(ONE_SAMPLING, 1), (TWO_SAMPLINGS, 2)])
def test_a_sample_setting_every_sampling_shares_is_used(tmp_path, body, n):
    # every [[sample.runs]] sets the sampler alike: it differs from [sample], not between them
    runs = plan(load_sweep(spec_file(tmp_path, body)))
    assert [r.sample.sampler for r in runs] == ["ddpm"] * n
    assert all(r.changes["sample.sampler"] == "ddpm" for r in runs)


def test_sampling_grid_names_rows_after_the_sampling(tmp_path):
    spec = load_sweep(spec_file(tmp_path, "[sample.grid]\nguidance = [0, 2.5]\n"))
    runs = plan(spec)
    assert [r.name for r in runs] == ["ddim-3-w0", "ddim-3-w2.5"]
    assert {r.training for r in runs} == {"model"}
    assert runs[1].changes == {"sample.guidance": 2.5}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("[grid]\nx = [1]\n[[runs]]\nname='a'\n", "either \\[grid\\] or \\[\\[runs\\]\\]"),
        ("[grid]\nmodel.activation = 'gelu'\n", "must be a non-empty list"),
        ("[grid]\nactivation = ['gelu']\n", "'activation' is not a setting"),
        ("[evaluate]\nn = 1\n", "at least 2"),
        ("[judge]\nkind = 'resnet'\n", "not one of cnn, svc"),
        ("colour = 1\n", "unknown key colour"),
        ("[grid]\n'train.lr' = [1e-4, 0.0001]\n", "share the name"),
    ],
)
def test_bad_files_name_the_problem(tmp_path, body, message):
    with pytest.raises(SweepError, match=message):
        load_sweep(spec_file(tmp_path, body))


def test_bad_values_and_lists_in_sample(tmp_path):
    bad = tmp_path / "list.toml"
    bad.write_text('preset = "tiny"\n[sample]\nguidance = [0, 1]\n')
    with pytest.raises(SweepError, match=r"under \[sample.grid\]"):
        load_sweep(bad)
    bad.write_text('preset = "tiny"\n[sample]\nguidance = 3.0\nguidance_interval = [0.3, 3.0]\n')
    assert load_sweep(bad).sample.guidance_interval == (0.3, 3.0)  # a list, not a variation
    spec = load_sweep(spec_file(tmp_path, "[grid]\nmodel.activation = ['gelu', 'tanh']\n"))
    with pytest.raises(SweepError, match="activation=tanh: model.activation: 'tanh'"):
        plan(spec)  # every config is checked before anything trains
    with pytest.raises(SweepError, match="shipped sweeps: activation"):
        load_sweep("no-such-sweep")
    assert isinstance(SweepError("x"), ValueError) and not issubclass(SweepError, ConfigError)


def test_shipped_sweeps_plan_and_cpu_variants_are_cpu_sized():
    names = shipped_sweeps()
    for study in ("schedule", "activation", "guidance", "sampler"):
        assert study in names and f"{study}-cpu" in names
    for name in names:
        spec = load_sweep(name)
        runs = plan(spec)
        trainings = {r.training for r in runs}
        if name.endswith("-cpu"):
            assert spec.preset == "tiny"
            # bounded in steps (budget-recipe-cpu: 3,000, a 10-minute run's worth), or by a
            # wall-clock budget (real-recipe-cpu: equal minutes)
            assert all(
                r.config.train.steps <= 3000 or 0 < r.config.train.minutes <= 30 for r in runs
            )
            assert spec.evaluate.n is not None and spec.evaluate.n <= 400
        if name.startswith(("guidance", "sampler")):
            assert len(trainings) == 1  # one model, sampled several ways: no retraining
    assert [r.sample.guidance for r in plan(load_sweep("guidance"))] == [0, 1, 2, 3, 5]
    sampler = [(r.sample.sampler, r.sample.steps) for r in plan(load_sweep("sampler"))]
    assert sampler == [("ddpm", 1000), ("ddim", 10), ("ddim", 20), ("ddim", 50)] + [
        ("ddim", 100),
        ("dpm", 10),
        ("dpm", 20),
        ("dpm", 50),
    ]
    schedule = [r.config.diffusion for r in plan(load_sweep("schedule-cpu"))]
    assert {(d.schedule, d.timesteps, d.rescale_linear) for d in schedule} == {
        ("linear", 1000, True),
        ("linear", 500, True),
        ("linear", 500, False),
        ("cosine", 1000, True),
    }
    acts = [r.config.model.activation for r in plan(load_sweep("activation"))]
    assert acts == ["gelu", "relu", "silu"]


def test_cli_list_and_dry_run(capsys):
    assert main(["sweep", "--list"]) == 0
    assert "schedule-cpu" in capsys.readouterr().out
    assert main(["sweep", "sampler-cpu", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "8 run(s)" in out and "dpm-50-w1" in out


# ---- real sweeps ---------------------------------------------------------------------------------


def _spy_on_train(monkeypatch) -> list[Path]:
    calls: list[Path] = []
    real = diffscape.train.train

    def spy(cfg, dataset_dir, run_dir, **kw):
        calls.append(Path(run_dir))
        return real(cfg, dataset_dir, run_dir, **kw)

    monkeypatch.setattr(diffscape.train, "train", spy)
    return calls


def test_killed_sweep_resumes_skips_finished_runs_and_reports(ds, tmp_path, monkeypatch, capfd):
    body = """
[grid]
model.activation = ["silu", "relu"]
[evaluate]
n = 6
floor = false
[judge]
kind = "svc"
"""
    spec = spec_file(tmp_path, body, steps=16, dataset=ds.root)
    runs = tmp_path / "runs"
    first = runs / "activation=silu" / "samples" / "ddim-3-w1" / "result.json"
    second = runs / "activation=relu"
    log = (tmp_path / "sweep.log").open("w")
    env = {**ENV, "DIFFSCAPE_CACHE": str(tmp_path / "cache")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "diffscape", "sweep", str(spec), "--out", str(runs), "--no-progress"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    # Kill it for good (no chance to save) once the first run is finished and the second one
    # has a checkpoint: mid-training, or at worst while it samples or is scored.
    while not (first.is_file() and checkpoint.latest_checkpoint(second) is not None):
        assert proc.poll() is None, (tmp_path / "sweep.log").read_text()
        assert time.monotonic() < deadline, "the sweep did not get to its second run"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (second / "samples" / "ddim-3-w1" / "result.json").exists()
    finished = first.stat().st_mtime_ns
    calls = _spy_on_train(monkeypatch)

    results = run_sweep(spec, runs, progress=False)

    assert calls == [second]  # the finished run was neither trained nor touched
    assert first.stat().st_mtime_ns == finished
    assert [r.status for r in results] == ["ok", "ok"]
    assert "activation=silu: finished before, skipped" in capfd.readouterr().err
    steps = [json.loads(x)["step"] for x in (second / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(2, 17, 2))  # resumed: one log, as if never interrupted
    r = results[1]
    assert r.scores["fid"] > 0 and r.scores["kid"] is not None and 0 <= r.scores["accuracy"] <= 1
    sampling = runs / "activation=relu" / "samples" / "ddim-3-w1"
    assert json.loads((sampling / "metrics.json").read_text())["n_fake"] == 6
    assert json.loads((sampling / "accuracy.json").read_text())["n"] == 6
    sweep_json = json.loads((runs / "sweep.json").read_text())
    assert [x["name"] for x in sweep_json["runs"]] == ["activation=silu", "activation=relu"]

    page = build_report(runs, tmp_path / "report.html")
    text = page.read_text()
    assert "model.activation=relu" in text and "model.activation=silu" in text
    # a grid and the memorisation check's closest pairs per run
    assert text.count('class="card ') == 2 and text.count("data:image/png;base64,") == 4
    assert text.count("closest to the training set") == 2
    seen = check_page(page, tmp_path, screenshot=tmp_path / "report.png")
    assert seen["images"] == 4 and seen["svgs"] == 2  # loss curves; FID against accuracy


def test_failures_are_recorded_and_runs_go_one_per_gpu(ds, tmp_path, monkeypatch):
    """Two "GPUs": each training runs as a submitit job on this machine with its
    CUDA_VISIBLE_DEVICES (on a CPU machine the jobs train on the CPU). One run cannot train (its image size does
    not match the data); it is recorded as failed and the other finishes."""
    body = """
[[runs]]
name = "ok"
[[runs]]
name = "wrong-size"
model.image_size = 16
"""
    spec = spec_file(tmp_path, body + TRAIN_ONLY, steps=4, dataset=ds.root)
    runs = tmp_path / "runs"
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    results = run_sweep(spec, runs, progress=False, gpus=2)
    by_name = {r.name: r for r in results}
    assert by_name["ok"].status == "ok" and by_name["ok"].steps == 4
    bad = by_name["wrong-size"]
    assert bad.status == "failed" and bad.stage == "train"
    assert "model.image_size is 16" in bad.error and "Traceback" in bad.traceback
    for name in ("ok", "wrong-size"):
        assert "[sweep]" in job_log(runs, name)  # a log per job
    # a re-run retries only the failure (and fails the same way)
    calls = _spy_on_train(monkeypatch)
    again = run_sweep(spec, runs, progress=False, gpus=1)
    assert calls == [runs / "wrong-size"] and again[1].status == "failed"
    text = build_report(runs, tmp_path / "r.html").read_text()
    assert "failed" in text and "model.image_size is 16" in text


def test_cpu_jobs_share_the_cores(ds, tmp_path, monkeypatch):
    """On a CPU, --jobs 2 trains two runs at once as submitit jobs, each told to use half the
    cores (torch.set_num_threads), and both finish as they would one after the other."""
    body = """
[[runs]]
name = "a"
[[runs]]
name = "b"
train.lr = 2e-3
"""
    spec = spec_file(tmp_path, body + TRAIN_ONLY, steps=4, dataset=ds.root)
    runs = tmp_path / "runs"
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    results = run_sweep(spec, runs, progress=False, gpus=0, jobs=2)
    assert [(r.name, r.status, r.steps) for r in results] == [("a", "ok", 4), ("b", "ok", 4)]
    threads = max(1, (os.cpu_count() or 1) // 2)
    for name in ("a", "b"):
        assert f"job: {name} on {threads} CPU thread(s)" in job_log(runs, name)
    assert worker_slots(0, 2, cores=2)[1].threads == 1
    assert worker_slots(0, 3, cores=8)[0].threads == 2
    assert [s.name for s in worker_slots(4, 2)] == ["GPU 0", "GPU 1"]
    assert len(worker_slots(0, None)) == 1 and len(worker_slots(3)) == 3
    with pytest.raises(DiffscapeError, match="--jobs 0"):
        run_sweep(spec, tmp_path / "other", progress=False, gpus=0, jobs=0)
    assert not (tmp_path / "other").exists()


def test_sigterm_cancels_the_jobs_and_each_saves_a_checkpoint(ds, tmp_path):
    """SIGTERM (as Ctrl-C) on a sweep running jobs cancels them: each training saves a checkpoint
    at the step it reached and stops, then the command ends, leaving no job running."""
    body = '[[runs]]\nname = "a"\n[[runs]]\nname = "b"\n'
    spec = spec_file(tmp_path, body + TRAIN_ONLY, steps=400, dataset=ds.root)
    runs = tmp_path / "runs"
    cmd = [sys.executable, "-m", "diffscape", "sweep", str(spec), "--out", str(runs),
           "--jobs", "2", "--no-progress", "--no-report"]  # fmt: skip
    proc = subprocess.Popen(
        cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.monotonic() + 120
    while not all(checkpoint.list_checkpoints(runs / name) for name in "ab"):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, out
    for name in "ab":
        last = checkpoint.list_checkpoints(runs / name)[-1][0]
        assert last < 400
        assert f"job: {name} stopped by SIGTERM after step {last}," in job_log(runs, name)
        pid = int(out.split(f"{name}: job ")[1].split()[0])  # a local job's id: its pid
        assert not Path(f"/proc/{pid}").exists()


def test_sampling_only_sweep_trains_once(ds, tmp_path, monkeypatch):
    body = """
[sample.grid]
guidance = [0, 3]
[evaluate]
enabled = false
[judge]
kind = "svc"
"""
    spec = spec_file(tmp_path, body, steps=4)
    calls = _spy_on_train(monkeypatch)
    results = run_sweep(spec, tmp_path / "runs", data=ds.root, progress=False, gpus=1)
    assert calls == [tmp_path / "runs" / "model"]
    assert [(r.name, r.status) for r in results] == [("ddim-3-w0", "ok"), ("ddim-3-w3", "ok")]
    assert all(r.scores["accuracy"] is not None and r.scores["fid"] is None for r in results)
    accuracy = tmp_path / "runs/model/samples/ddim-3-w3/accuracy.json"
    assert json.loads(accuracy.read_text())["n"] == 6
    samples = json.loads((tmp_path / "runs/model/samples/ddim-3-w3/samples.json").read_text())
    assert samples["guidance"] == 3 and samples["n"] == 6
    text = build_report(tmp_path / "runs", tmp_path / "r.html").read_text()
    assert 'id="plot-guidance"' in text  # accuracy against guidance
    assert "needs FID for two or more step counts" in text  # said, not drawn
    # settings changed since: the rows are redone (training is already complete)
    spec.write_text(spec.read_text().replace("n = 2\n", "n = 1\n"))
    results = run_sweep(spec, tmp_path / "runs", data=ds.root, progress=False, gpus=1)
    assert all(r.ok for r in results) and json.loads(accuracy.read_text())["n"] == 3


def test_without_a_dataset_the_default_synthetic_set_is_made(tmp_path):
    spec = load_sweep(spec_file(tmp_path, ""))
    sspec = sweep_module.study_spec(spec, tmp_path / "runs", None)
    assert sspec.synth_images == 2500  # as `diffscape data synth`
    sspec = dataclasses.replace(sspec, synth_images=20)
    made = ensure_data(sspec, Tools(progress=False))
    assert made == (tmp_path / "runs" / "_data").resolve()
    assert json.loads((made / "manifest.json").read_text())["classes"][0] == "Coast"
    again = ensure_data(sspec, Tools(progress=False))
    assert again == made  # made once


def test_sweep_refuses_a_foreign_folder_and_leaves_it_alone(tmp_path):
    spec = spec_file(tmp_path, "")
    out = tmp_path / "thesis"
    out.mkdir()
    (out / "chapter1.tex").write_text("keep me")
    with pytest.raises(layout.OutError, match="not empty and not a diffscape folder"):
        run_sweep(spec, out, progress=False, gpus=1)
    assert [p.name for p in out.iterdir()] == ["chapter1.tex"]


# ---- seed replicates -----------------------------------------------------------------------------


def test_seeds_replicate_every_setting_in_folders_of_their_own(tmp_path, capsys):
    body = """
seeds = [0, 1, 2]
baseline = "cosine"
[[runs]]
name = "linear"
[[runs]]
name = "cosine"
diffusion = { schedule = "cosine" }
"""
    path = tmp_path / "rep.toml"
    path.write_text(
        body.split("[[runs]]", 1)[0]
        + TINY.replace("STEPS", "8")
        + "[[runs]]"
        + body.split("[[runs]]", 1)[1]
    )
    spec = load_sweep(path)
    assert spec.seeds == (0, 1, 2) and spec.baseline == "cosine"
    runs = plan(spec)
    # seed after seed: a study stopped early still has every setting at the first seeds
    assert [(r.setting, r.seed, r.training) for r in runs] == [
        ("linear", 0, "linear-seed0"), ("cosine", 0, "cosine-seed0"),
        ("linear", 1, "linear-seed1"), ("cosine", 1, "cosine-seed1"),
        ("linear", 2, "linear-seed2"), ("cosine", 2, "cosine-seed2"),
    ]  # fmt: skip
    assert [(r.config.train.seed, r.sample.seed) for r in runs[::2]] == [(0, 0), (1, 1), (2, 2)]
    assert runs[1].name == "cosine (seed 0)"
    assert runs[1].changes == {"diffusion.schedule": "cosine"}  # the seed is not a change
    assert main(["sweep", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "6 run(s)" in out and "seeds: 0, 1, 2" in out and "baseline: cosine" in out
    assert "-> cosine-seed2/" in out
    # without seeds, folders and names are as they always were
    plain = [(r.name, r.training, r.seed) for r in plan(load_sweep(spec_file(tmp_path, "")))]
    assert plain == [("model", "model", None)]


def test_runs_are_counted_before_a_grid_is_expanded(tmp_path, monkeypatch):
    expanded = []
    monkeypatch.setattr(sweep_module.spec, "_product", lambda *a: expanded.append(a))
    steps = list(range(1, 1001))
    big = f"[grid]\n'train.steps' = {steps}\n'train.lr' = [1e-4, 2e-4]\n"
    message = r"expands to 2000 runs \(1000 train.steps x 2 train.lr\); the limit is 1000: split"
    with pytest.raises(SweepError, match=message):
        load_sweep(spec_file(tmp_path, big))
    assert not expanded
    every = {"runs": [{}] * 3, "sample": {"grid": {"guidance": [0] * 4}}, "seeds": [0] * 100}
    message = r"1200 runs \(3 \[\[runs\]\] x 4 sample.guidance x 100 seeds\)"
    with pytest.raises(SweepError, match=message):
        sweep_module.spec.check_size(every, "x")
    sweep_module.spec.check_size({**every, "runs": [{}] * 2}, "x")  # 800: under the limit


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("_judge", "run _judge: it names the sweep folder's own _judge; rename it"),
        ("_notes", "run _notes: names starting with '_' or '.' are kept for the sweep folder"),
        ("sweep.json", "run sweep.json: it names the sweep folder's own sweep.json"),
        ("Report.HTML", "run Report.HTML: it names the sweep folder's own report.html"),
        ("a" * 201, "201 bytes long; at most 200"),
    ],
)
def test_run_names_the_sweep_folder_cannot_hold_are_refused_at_plan_time(tmp_path, name, message):
    spec = load_sweep(spec_file(tmp_path, f"[[runs]]\nname = '{name}'\n"))
    with pytest.raises(SweepError, match=message):
        plan(spec)


def test_a_replicate_folder_over_200_bytes_is_refused(tmp_path):
    seeded = spec_file(tmp_path, f"[[runs]]\nname = '{'a' * 194}'\n")  # + "-seed10": 201 bytes
    seeded.write_text("seeds = [0, 10]\n" + seeded.read_text())
    with pytest.raises(SweepError, match="201 bytes"):
        plan(load_sweep(seeded))


def test_run_names_that_collide_after_sanitising_or_in_case_are_refused(tmp_path):
    body = "[[runs]]\nname = 'a/b'\n[[runs]]\nname = 'A b'\n"
    with pytest.raises(SweepError, match="share the name a-b and A-b"):
        load_sweep(spec_file(tmp_path, body))


@pytest.mark.parametrize(
    ("top", "body", "message"),
    [
        ("seeds = [0, 0]\n", "", "each once"),
        ("seeds = []\n", "", "list of 1 to"),
        ("seeds = [0.5]\n", "", "integers"),
        ("seeds = [-1]\n", "", "from 0"),
        ("seeds = [0, 1]\n", "[grid]\n'train.seed' = [3, 4]\n", "sets train.seed"),
        ("seeds = [0, 1]\n", "[sample.grid]\nseed = [3, 4]\n", "sets sample.seed"),
        ('baseline = "nope"\n', "", "baseline 'nope' is not one of the settings: model"),
    ],
)
def test_bad_seeds_and_baselines_name_the_problem(tmp_path, top, body, message):
    path = tmp_path / "bad.toml"
    path.write_text(top + TINY.replace("STEPS", "8") + body)
    with pytest.raises(SweepError, match=message):
        plan(load_sweep(path))


def test_stopped_replicated_sweep_redoes_only_what_is_missing(ds, tmp_path, monkeypatch):
    """Stopped (Ctrl-C) in the second seed's training: a re-run trains, samples and judges only
    that replicate; the finished one is not touched. --only takes a setting's name."""
    top = f'dataset = "{ds.root}"\nseeds = [0, 1]\n'
    path = tmp_path / "rep.toml"
    path.write_text(
        top + TINY.replace("STEPS", "4") + "[evaluate]\nenabled = false\n[judge]\nkind = 'svc'\n"
    )
    runs = tmp_path / "runs"
    real = diffscape.train.train

    def stop_at_seed1(cfg, dataset_dir, run_dir, **kw):
        if Path(run_dir).name == "model-seed1":
            raise KeyboardInterrupt
        return real(cfg, dataset_dir, run_dir, **kw)

    monkeypatch.setattr(diffscape.train, "train", stop_at_seed1)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(path, runs, progress=False, gpus=1)
    first = runs / "model-seed0" / "samples" / "ddim-3-w1" / "result.json"
    assert first.is_file() and not (runs / "model-seed1" / "samples").exists()
    finished = first.stat().st_mtime_ns
    monkeypatch.setattr(diffscape.train, "train", real)
    calls = _spy_on_train(monkeypatch)
    results = run_sweep(path, runs, progress=False, gpus=1, only=["model"])
    assert calls == [runs / "model-seed1"] and first.stat().st_mtime_ns == finished
    assert [(r.setting, r.seed, r.status) for r in results] == [
        ("model", 0, "ok"),
        ("model", 1, "ok"),
    ]
    recorded = json.loads((runs / "sweep.json").read_text())
    assert recorded["seeds"] == [0, 1] and recorded["baseline"] == "model"
    assert [(x["setting"], x["seed"]) for x in recorded["runs"]] == [("model", 0), ("model", 1)]
    samples = json.loads((runs / "model-seed1/samples/ddim-3-w1/samples.json").read_text())
    assert samples["seed"] == 1
    assert json.loads((runs / "model-seed1/config.json").read_text())["train"]["seed"] == 1
    again = run_sweep(path, runs, progress=False, gpus=1)
    assert calls == [runs / "model-seed1"] and again == results  # nothing left to do


def test_shipped_replicated_studies_ask_the_seed_reports_three_questions():
    expected = {
        "schedule": [("linear", 1000, True), ("cosine", 1000, True)],
        "timesteps": [("linear", 1000, True), ("linear", 500, True), ("linear", 500, False)],
        "activation": ["gelu", "relu", "silu"],
    }
    for study, settings in expected.items():
        for name in (f"{study}-seeds-cpu", f"{study}-seeds"):
            spec = load_sweep(name)
            runs = plan(spec)
            assert spec.seeds == (0, 1, 2) and len(runs) == 3 * len(settings), name
            first = [r for r in runs if r.seed == 0]
            if study == "activation":
                assert [r.config.model.activation for r in first] == settings
            else:
                d = [r.config.diffusion for r in first]
                assert [(x.schedule, x.timesteps, x.rescale_linear) for x in d] == settings
            assert sweep_module.baseline_name(spec) == first[0].setting
            assert spec.evaluate.fid64 and spec.evaluate.memorisation
            assert "svc" in (spec.judge.kind, *spec.judge.also)  # the seed report's judge
            assert {r.config.train.seed for r in runs} == {0, 1, 2}
