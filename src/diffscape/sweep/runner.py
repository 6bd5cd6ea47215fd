"""Running a sweep: shared data, judge and floor made once, each run trained, sampled,
evaluated and judged, result.json written last; one subprocess per GPU when several are visible."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from diffscape.errors import DiffscapeError
from diffscape.sweep.plan import PlannedRun, base_config, plan
from diffscape.sweep.spec import SweepError, SweepSpec, load_sweep

RESULT_JSON = "result.json"
SWEEP_JSON = "sweep.json"
DATA_DIR = "_data"
JUDGE_DIR = "_judge"
FLOOR_DIR = "_floor"
DEFAULT_SYNTH_N = 2500  # images of the default synthetic set (as `diffscape data synth`)


# ---- running -------------------------------------------------------------------------------------


def log(msg: str) -> None:
    print(f"[sweep] {msg}", file=sys.stderr, flush=True)


def _plain(value: Any) -> Any:
    """JSON's view of a value (tuples become lists), for comparing with what was written."""
    return json.loads(json.dumps(value))


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write-then-rename, so that a result.json is either whole or absent."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def read_result(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


@dataclass(frozen=True)
class _Context:
    spec: SweepSpec
    out: Path
    data: Path
    judge: Path | None
    progress: bool
    # Built once per sweep process and reused by every run: the Inception network takes
    # seconds to build (about 10 s on a busy 2-core CPU), longer than scoring a few images.
    tools: dict[str, Any] = field(default_factory=dict, compare=False)

    def extractor(self) -> Any:
        if "extractor" not in self.tools:
            from diffscape.metrics.features import InceptionExtractor
            from diffscape.metrics.weights import resolve_inception_weights
            from diffscape.sample import default_device

            weights = resolve_inception_weights(None)
            log(
                f"Inception weights: {weights.path} (sha256 {weights.sha256[:12]}, {weights.source})"
            )
            self.tools["extractor"] = InceptionExtractor(weights, default_device())
        return self.tools["extractor"]

    def settings_record(self, run: PlannedRun) -> dict[str, Any]:
        """What a finished run must match to be skipped on a re-run."""
        return _plain(
            {
                "config": run.config.to_dict(),
                "sample": asdict(run.sample),
                "evaluate": asdict(self.spec.evaluate),
                # What was used, not where it lies: moving RUNS must not redo every run.
                "judge": None if self.judge is None else _judge_identity(self.judge),
                "dataset": _dataset_identity(self.data),
            }
        )


def _dataset_identity(path: Path) -> str:
    from diffscape.data.dataset import load_dataset

    return load_dataset(path).content_hash


def _judge_identity(path: Path) -> dict[str, Any]:
    info = json.loads((Path(path) / "judge.json").read_text())
    return {k: info.get(k) for k in ("kind", "classes", "size", "seed", "settings", "accuracy")}


def is_finished(ctx: _Context, run: PlannedRun) -> bool:
    r = read_result(run.sample_dir(ctx.out) / RESULT_JSON)
    if r is None or r.get("status") != "ok":
        return False
    return r.get("settings") == ctx.settings_record(run)


def run_sweep(
    sweep: str | os.PathLike[str] | dict[str, Any] | SweepSpec,
    out_dir: str | os.PathLike[str],
    data: str | os.PathLike[str] | None = None,
    progress: bool = True,
    *,
    only: Iterable[str] | None = None,
    gpus: int | None = None,
) -> list[dict[str, Any]]:
    """Run (or continue) a sweep into ``out_dir``; returns every run's result.json record.

    ``data`` overrides the file's dataset. ``only`` restricts the sweep to some training runs
    (by folder name) or rows (by name). ``gpus`` overrides ``torch.cuda.device_count()`` for
    deciding whether to run one subprocess per GPU.
    """
    spec = sweep if isinstance(sweep, SweepSpec) else load_sweep(sweep)
    out = Path(out_dir)
    runs = all_runs = plan(spec)
    if only is not None:
        wanted = set(only)
        unknown = wanted - {r.training for r in runs} - {r.name for r in runs}
        if unknown:
            raise SweepError(
                f"--only {', '.join(sorted(unknown))}: no such run; the runs are "
                f"{', '.join(dict.fromkeys(r.training for r in runs))}"
            )
        runs = [r for r in runs if r.training in wanted or r.name in wanted]
    out.mkdir(parents=True, exist_ok=True)
    dataset = ensure_data(spec, data, out, progress)
    if only is None or not (out / SWEEP_JSON).is_file():  # workers (--only) leave it be
        write_json_atomic(out / SWEEP_JSON, sweep_record(spec, all_runs, dataset))
    judge = ensure_judge(spec, runs, dataset, out, progress)
    ctx = _Context(spec, out, dataset, judge, progress)
    if only is None:  # workers leave the floor to the sweep that started them
        ensure_floor(ctx)

    groups: dict[str, list[PlannedRun]] = {}
    for r in runs:
        groups.setdefault(r.training, []).append(r)
    if gpus is None:
        import torch

        gpus = torch.cuda.device_count()
    todo = [name for name, rs in groups.items() if not all(is_finished(ctx, r) for r in rs)]
    for i, name in enumerate(groups):
        if name not in todo:
            log(f"[{i + 1}/{len(groups)}] {name}: finished before, skipped")
    if gpus > 1 and len(todo) > 1 and only is None:
        run_parallel(ctx, {name: groups[name] for name in todo}, gpus)
    else:
        for name in todo:
            log(f"[{list(groups).index(name) + 1}/{len(groups)}] {name}")
            run_training(ctx, groups[name])
    return [read_result(r.sample_dir(out) / RESULT_JSON) or _missing(r) for r in runs]


def _missing(run: PlannedRun) -> dict[str, Any]:
    return {"status": "missing", "name": run.name, "training": run.training}


def sweep_record(spec: SweepSpec, runs: list[PlannedRun], dataset: Path) -> dict[str, Any]:
    """sweep.json: the spec as read, the base config and the planned rows (for the report)."""
    return _plain(
        {
            "name": spec.name,
            "description": spec.description,
            "source": spec.source,
            "dataset": str(dataset),
            "spec": {**spec.raw, "dataset": str(dataset)},
            "base_config": base_config(spec).to_dict(),
            "base_sample": asdict(spec.sample),
            "runs": [
                {
                    "name": r.name,
                    "training": r.training,
                    "sampling": r.sampling,
                    "changes": r.changes,
                    "sample_dir": str(Path(r.training) / "samples" / r.sampling),
                }
                for r in runs
            ],
        }
    )


def ensure_data(
    spec: SweepSpec, data: str | os.PathLike[str] | None, out: Path, progress: bool
) -> Path:
    """--data, else the file's dataset, else the default synthetic set made once in RUNS/_data."""
    from diffscape.data.dataset import load_dataset

    chosen = data if data is not None else spec.dataset
    if chosen is not None:
        return load_dataset(chosen).root.resolve()
    path = out / DATA_DIR
    if not (path / "manifest.json").is_file():
        from diffscape.data.synth import synthesize

        size = base_config(spec).model.image_size
        log(f"no dataset given: synthesizing {DEFAULT_SYNTH_N} landscapes at {size} px into {path}")
        synthesize(DEFAULT_SYNTH_N, size, path, seed=0, progress=progress)
    return load_dataset(path).root.resolve()


def ensure_judge(
    spec: SweepSpec, runs: list[PlannedRun], dataset: Path, out: Path, progress: bool
) -> Path | None:
    """The judge folder: [judge] path, or one trained once into RUNS/_judge. None when judging
    is off or nothing to judge (no conditional model, unlabelled data)."""
    j = spec.judge
    if not j.enabled or not any(r.config.model.conditional for r in runs):
        return None
    from diffscape.data.dataset import load_dataset

    if not load_dataset(dataset).labelled:
        log("no judge: the dataset has no classes")
        return None
    if j.path is not None:
        if not (Path(j.path) / "judge.json").is_file():
            raise SweepError(f"[judge] path {j.path} is not a judge folder (no judge.json)")
        return Path(j.path)
    path = out / JUDGE_DIR
    if not (path / "judge.json").is_file():
        from diffscape.judge import train_judge

        log(f"training the {j.kind} judge once for the whole sweep into {path}")
        train_judge(dataset, j.kind, path, progress=progress, log=log)
    return path


def ensure_floor(ctx: _Context) -> None:
    """Real vs real at the sweep's n: what FID/KID read when the "generated" images are real
    ones. Optional: a failure here is reported and the sweep goes on."""
    e, dataset, progress = ctx.spec.evaluate, ctx.data, ctx.progress
    path = ctx.out / FLOOR_DIR / "metrics.json"
    if not (e.enabled and e.floor) or path.is_file():
        return
    from diffscape.data.dataset import load_dataset

    ds = load_dataset(dataset)
    if "test" not in ds.splits or e.split == "test":
        log("no real-vs-real floor: the dataset has no test split apart from the reference")
        return
    from diffscape.metrics.evaluate import EvalSettings, evaluate, write_metrics

    n_test = ds.count("test") if e.n is None else min(e.n, ds.count("test"))
    n_ref = e.n_real or e.n
    log(f"real-vs-real floor: {n_test} test images against {e.split} (n={n_ref or 'all'})")
    try:
        # The reference split goes on the "fake" side: its seeded subset is then the same one
        # the runs draw for their real side, so its Inception features come from the cache.
        extractor = ctx.extractor()
        metrics = evaluate(
            (ds, "test"),
            (ds, e.split),
            EvalSettings(n=n_ref or ds.count(e.split), n_real=n_test),
            extractor=extractor,
            fake_name=f"{ds.root}:{e.split}",
            progress=progress,
            say=log,
        )
        write_metrics(path, metrics)
    except Exception as err:  # optional: the runs are still worth doing
        log(f"real-vs-real floor failed ({type(err).__name__}: {err}); going on without it")


def run_training(ctx: _Context, runs: list[PlannedRun]) -> None:
    """Train one model (or resume it), then sample, evaluate and judge each of its samplings
    not finished yet. Failures are recorded per row; signals and Ctrl-C stop the sweep."""
    from diffscape.train import TrainingInterrupted, train

    todo = [r for r in runs if not is_finished(ctx, r)]
    if not todo:
        return
    first = todo[0]
    t0 = time.perf_counter()
    try:
        result = train(first.config, ctx.data, first.train_dir(ctx.out), progress=ctx.progress)
    except (TrainingInterrupted, KeyboardInterrupt):
        raise
    except Exception as e:
        for r in todo:
            record_failure(ctx, r, "train", e)
        return
    trained = {"steps": result.steps, "seconds": round(time.perf_counter() - t0, 1)}
    for r in todo:
        try:
            evaluate_run(ctx, r, trained)
        except KeyboardInterrupt:
            raise
        except _StageError as e:
            record_failure(ctx, r, e.stage, e.__cause__ or e)
        except Exception as e:  # outside the stages: clearing the folder, writing results
            record_failure(ctx, r, "result", e)


class _StageError(Exception):
    def __init__(self, stage: str) -> None:
        super().__init__(stage)
        self.stage = stage


def record_failure(ctx: _Context, run: PlannedRun, stage: str, error: BaseException) -> None:
    message = f"{type(error).__name__}: {error}"
    log(f"{run.name}: FAILED in {stage}: {message}")
    tb = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    write_json_atomic(
        run.sample_dir(ctx.out) / RESULT_JSON,
        {
            **_identity(run),
            "status": "failed",
            "stage": stage,
            "error": message,
            "traceback": tb,
            "settings": ctx.settings_record(run),
            "finished_at": _now(),
        },
    )


def _identity(run: PlannedRun) -> dict[str, Any]:
    return _plain(
        {
            "name": run.name,
            "training": run.training,
            "sampling": run.sampling,
            "changes": run.changes,
            "sample": asdict(run.sample),
        }
    )


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _stage(name: str, fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except KeyboardInterrupt:
        raise
    except Exception as e:
        raise _StageError(name) from e


def evaluate_run(ctx: _Context, run: PlannedRun, trained: dict[str, Any]) -> dict[str, Any]:
    """Sample -> evaluate -> judge one row, then write its result.json (last)."""
    from diffscape.sample import sample_to_folder

    s, out_dir = run.sample, run.sample_dir(ctx.out)
    conditional = run.config.model.conditional
    if out_dir.exists():  # a partial earlier attempt: no stale images may enter the scores
        shutil.rmtree(out_dir)
    seconds: dict[str, float] = {"train": trained["seconds"]}
    t0 = time.perf_counter()
    log(
        f"{run.name}: sampling {s.n}{' per class' if conditional else ''} ({s.sampler}, w={s.guidance:g})"
    )
    record = _stage(
        "sample",
        lambda: sample_to_folder(
            run.train_dir(ctx.out), out_dir, n=s.n, per_class=conditional, sampler=s.sampler,
            steps=s.steps, eta=s.eta, guidance=s.guidance if conditional else None,
            seed=s.seed, progress=ctx.progress,
        ),
    )  # fmt: skip
    seconds["sample"] = round(time.perf_counter() - t0, 1)
    summary: dict[str, Any] = {"n_samples": record["n"]}
    e = ctx.spec.evaluate
    if e.enabled:
        t0 = time.perf_counter()
        metrics = _stage("evaluate", lambda: _evaluate(ctx, run, out_dir, record["n"]))
        seconds["evaluate"] = round(time.perf_counter() - t0, 1)
        summary |= {
            "fid": metrics.get("fid"),
            "kid": metrics.get("kid"),
            "n_fake": metrics.get("n_fake"),
            "n_real": metrics.get("n_real"),
        }
    if ctx.judge is not None and conditional:
        from diffscape.judge import score

        t0 = time.perf_counter()
        acc = _stage("judge", lambda: score(ctx.judge, out_dir))
        seconds["judge"] = round(time.perf_counter() - t0, 1)
        summary |= {"accuracy": acc["accuracy"], "n_judged": acc["n"]}
    result = {
        **_identity(run),
        "status": "ok",
        "steps": trained["steps"],
        **summary,
        "seconds": seconds,
        "settings": ctx.settings_record(run),
        "finished_at": _now(),
    }
    write_json_atomic(out_dir / RESULT_JSON, result)
    fid = summary.get("fid")
    acc_text = f", accuracy {100 * summary['accuracy']:.1f}%" if "accuracy" in summary else ""
    log(f"{run.name}: done" + (f", FID {fid:.2f}" if fid is not None else "") + acc_text)
    return result


def _evaluate(ctx: _Context, run: PlannedRun, samples: Path, made: int) -> dict[str, Any]:
    from diffscape.data.dataset import load_dataset
    from diffscape.imagefolder import load_sample_folder
    from diffscape.metrics.evaluate import EvalSettings, evaluate, write_metrics

    e = ctx.spec.evaluate
    ds = load_dataset(ctx.data)
    n = made if e.n is None else min(e.n, made)
    n_real = e.n_real or e.n
    extractor = ctx.extractor()
    n_real = None if n_real is None else min(n_real, ds.count(e.split))
    metrics = evaluate(
        (ds, e.split),
        load_sample_folder(samples),
        EvalSettings(n=n, n_real=n_real),
        extractor=extractor,
        fake_name=run.name,
        progress=ctx.progress,
        say=log,
    )
    write_metrics(samples / "metrics.json", metrics)
    return metrics


def run_parallel(ctx: _Context, groups: dict[str, list[PlannedRun]], gpus: int) -> None:
    """One subprocess per GPU, each running one training run (and its samplings) with
    ``CUDA_VISIBLE_DEVICES`` set to its GPU; output goes to RUNS/<run>/sweep.log."""
    pending = list(groups)
    running: dict[int, tuple[subprocess.Popen, str]] = {}
    log(f"{gpus} GPUs: running {len(pending)} trainings, one per GPU")

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # -> the workers get SIGTERM below, save and stop

    # SIGTERM would end this process at once and leave the workers training unattended.
    installed, old = False, None
    with contextlib.suppress(ValueError):  # not the main thread: no handler
        old = signal.signal(signal.SIGTERM, stop)
        installed = True
    try:
        while pending or running:
            for gpu in range(gpus):
                if gpu not in running and pending:
                    name = pending.pop(0)
                    running[gpu] = (_start_worker(ctx, name, gpu), name)
                    log(f"{name}: started on GPU {gpu} (log: {ctx.out / name / 'sweep.log'})")
            time.sleep(1.0)
            for gpu, (proc, name) in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[gpu]
                log(f"{name}: worker on GPU {gpu} exited with code {proc.returncode}")
                for r in groups[name]:
                    if read_result(r.sample_dir(ctx.out) / RESULT_JSON) is None:
                        err = DiffscapeError(
                            f"worker exited with code {proc.returncode} before finishing; "
                            f"see {ctx.out / name / 'sweep.log'}"
                        )
                        record_failure(ctx, r, "worker", err)
    except BaseException:
        for proc, _ in running.values():
            proc.terminate()  # SIGTERM: training saves a checkpoint and stops
        for proc, _ in running.values():
            proc.wait()
        raise
    finally:
        if installed:
            signal.signal(signal.SIGTERM, old if old is not None else signal.SIG_DFL)


def _start_worker(ctx: _Context, name: str, gpu: int) -> subprocess.Popen:
    cmd = [
        sys.executable, "-m", "diffscape", "sweep", str(ctx.out / SWEEP_JSON),
        "--out", str(ctx.out), "--data", str(ctx.data), "--only", name,
        "--no-progress", "--no-report",
    ]  # fmt: skip
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": str(gpu)}
    (ctx.out / name).mkdir(parents=True, exist_ok=True)
    with open(ctx.out / name / "sweep.log", "ab") as logfile:
        return subprocess.Popen(cmd, env=env, stdout=logfile, stderr=subprocess.STDOUT)
