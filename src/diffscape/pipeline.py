"""One pipeline for every study: the demo and sweeps run the same stage functions.

Once per study (:func:`prepare_study`)::

    data   the given dataset, or procedural landscapes synthesized into <study>/<data_dir>
    judge  a classifier of the real classes, trained into <study>/<judge_dir> (or a given one)
    floor  real vs real FID/KID at the study's sizes, in <study>/_floor/floor.json

Then per run (:func:`run_training`: one training, each of its samplings)::

    train -> sample -> evaluate (FID/KID) -> judge the samples -> result.json (written last)

Every stage skips work already done, recognised by its marker file and the settings recorded
in it: train.json, samples.json, metrics.json, accuracy.json, result.json (diffscape.results).
So a killed or failed study, run again, does only what is missing. The report is built over
the runs by the caller. With several GPUs, each training goes to a worker process of its own
(``python -m diffscape.pipeline worker JOB``), one per GPU; on a CPU, ``jobs`` > 1 runs that many
workers at once, each on its share of the cores (:func:`worker_slots`).
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from diffscape import layout, results
from diffscape.config import (
    EvaluateSettings,
    JudgeSettings,
    RunConfig,
    SampleSettings,
    from_dict,
    parse_section,
)
from diffscape.errors import DiffscapeError
from diffscape.results import Floor, RunResult, TrainRecord
from diffscape.timefmt import duration

RUN_STAGES = ("train", "sample", "evaluate", "judge samples")


def log(msg: str) -> None:
    print(f"[sweep] {msg}", file=sys.stderr, flush=True)


# ---- what a study is -----------------------------------------------------------------------------


@dataclass(frozen=True)
class StudySpec:
    """Settings shared by every run of a study (a sweep, or the demo's one run)."""

    out: Path  # the study's folder
    dataset: str | None = None  # a prepared dataset; None: synthesize landscapes into data_dir
    synth_images: int = 2500  # procedural landscapes to make when no dataset is given
    synth_size: int = 32  # their size in pixels
    seed: int = 0  # seeds the synthetic data and the judge
    evaluate: EvaluateSettings = field(default_factory=EvaluateSettings)
    judge: JudgeSettings = field(default_factory=JudgeSettings)
    judge_cnn: dict[str, Any] = field(default_factory=dict)  # CNNSettings changes (the demo's)
    data_dir: str = layout.SWEEP_DATA  # folder names inside ``out``
    judge_dir: str = layout.SWEEP_JUDGE


@dataclass(frozen=True)
class RunSpec:
    """One run: a training config sampled one way (the study supplies data, evaluation, judge)."""

    name: str  # the row's name in the report
    training: str  # folder <out>/<training>
    sampling: str  # folder <out>/<training>/samples/<sampling>
    config: RunConfig
    sample: SampleSettings
    changes: dict[str, Any] = field(default_factory=dict)  # what differs from the base
    setting: str = ""  # the setting this run replicates (the report's row); "": the name
    seed: int | None = None  # the replicate's train and sample seed; None: not replicated

    def train_dir(self, out: Path) -> Path:
        return Path(out) / self.training

    def sample_dir(self, out: Path) -> Path:
        return Path(out) / self.training / "samples" / self.sampling


@dataclass(frozen=True)
class Study:
    """A study's shared pieces, made once (:func:`prepare_study`)."""

    spec: StudySpec
    data: Path  # the dataset folder
    dataset_hash: str  # its content hash: what the runs were trained and scored on
    judge: Path | None  # None: no judging (off, unlabelled data, no conditional run)
    judge_identity: dict[str, Any] | None = None  # what the judge is, not where it lies
    also: dict[str, str] = field(default_factory=dict)  # further judges: kind -> folder

    @property
    def out(self) -> Path:
        return self.spec.out


@dataclass
class Narrator:
    """Says what each stage does, how long it should take and took. Numbered ("[3/8] train")
    when ``total`` is set (the demo), else one line per stage prefixed by the run (sweeps)."""

    say: Callable[[str], None] = log
    total: int = 0
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage done
    _k: int = 0
    _t0: float = 0.0
    _stage: str = ""
    _label: str = ""

    def _head(self, stage: str, who: str) -> str:
        if self.total:
            self._k += 1
            return f"[{self._k}/{self.total}] {stage}"
        return f"{who}: {stage}" if who else stage

    def start(self, stage: str, detail: str = "", eta: float | None = None, who: str = "") -> None:
        self._t0, self._stage, self._label = time.perf_counter(), stage, self._head(stage, who)
        about = f" (about {duration(eta)})" if eta else ""
        self.say(f"{self._label}{about}{': ' + detail if detail else ''}")

    def done(self, what: str = "") -> float:
        dt = time.perf_counter() - self._t0
        self.timings[self._stage] = round(dt, 1)
        head = "     " if self.total else self._label + ":"
        self.say(f"{head} done in {duration(dt)}{'; ' + what if what else ''}")
        return dt

    def skip(self, stage: str, why: str = "done before, skipped", who: str = "") -> None:
        self.timings.setdefault(stage, 0.0)
        self.say(self._head(stage, who) + (f": {why}" if why else ""))

    def note(self, msg: str) -> None:
        self.say(f"      {msg}" if self.total else msg)


class Tools:
    """What one process builds once and every run reuses, passed explicitly to the stages: the
    narrator, and the Inception network (seconds to build, about 10 s on a busy 2-core CPU,
    longer than scoring a few images)."""

    def __init__(
        self, narrator: Narrator | None = None, progress: bool = True, extractor: Any = None
    ) -> None:
        self.narrator = narrator or Narrator()
        self.progress = progress
        self._extractor = extractor  # None: the Inception network, built when first needed

    def extractor(self, resize: str = "tf1") -> Any:
        """The Inception network resizing as ``resize`` does (built once; a stand-in given to
        the constructor is always the one)."""
        current = getattr(self._extractor, "resize", resize)
        if self._extractor is None or current != resize:
            from diffscape.metrics.features import InceptionExtractor
            from diffscape.metrics.weights import resolve_inception_weights
            from diffscape.sample import default_device

            w = resolve_inception_weights(None)
            self.narrator.note(f"Inception weights: {w.path} (sha256 {w.sha256[:12]}, {w.source})")
            self._extractor = InceptionExtractor(w, default_device(), resize=resize)
        return self._extractor


def fid_kid(
    real: tuple[Any, str],
    fake: Any,
    n: int,
    n_real: int | None,
    name: str,
    tools: Tools,
    settings: EvaluateSettings | None = None,
) -> dict[str, Any]:
    """THE call into :func:`diffscape.metrics.evaluate.evaluate` (FID/KID, precision/recall,
    fid64, memorisation of ``fake`` against the real split, as the study's [evaluate] asks,
    with the study's shared Inception network); writes nothing."""
    from diffscape.metrics.evaluate import EvalSettings, evaluate

    e = settings or EvaluateSettings()
    chosen = EvalSettings(
        n=n, n_real=n_real, resize=e.resize, bootstrap=e.bootstrap, fid64=e.fid64,
        memorisation=e.memorisation, near_copy=e.near_copy,
    )  # fmt: skip
    return evaluate(
        real, fake, chosen, extractor=tools.extractor(e.resize),
        fake_name=name, progress=tools.progress, say=tools.narrator.note,
    )  # fmt: skip


# ---- shared pieces, once per study ---------------------------------------------------------------


def ensure_data(spec: StudySpec, tools: Tools) -> Path:
    """The given dataset, or the synthetic one made once into ``out/data_dir`` (made again only
    when its count, size or seed changed)."""
    from diffscape.data.dataset import load_dataset

    nar = tools.narrator
    if spec.dataset is not None:
        ds = load_dataset(spec.dataset)
        nar.skip("data", f"using {ds.root}")
        return ds.root.resolve()
    path = spec.out / spec.data_dir
    if layout.is_dataset_dir(path):
        made = load_dataset(path)
        synth = made.manifest.get("synth") or {}
        if (synth.get("n"), synth.get("seed"), made.size) == (
            spec.synth_images, spec.seed, spec.synth_size
        ):  # fmt: skip
            nar.skip("data", f"made before: {path}")
            return made.root.resolve()
    from diffscape.data.synth import synthesize

    nar.start(
        "data", f"{spec.synth_images} procedural landscapes at {spec.synth_size} px into {path}",
        eta=spec.synth_images / 1000,
    )  # fmt: skip
    ds = synthesize(
        spec.synth_images, spec.synth_size, path, seed=spec.seed, progress=tools.progress,
        overwrite=True,  # the study's own data folder, made for other settings before
    )  # fmt: skip
    nar.done(f"{ds.count('train')} train / {ds.count('test')} test")
    return ds.root.resolve()


def judge_identity(path: Path) -> dict[str, Any]:
    info = results.read_json(Path(path) / layout.JUDGE_JSON) or {}
    return {k: info.get(k) for k in ("kind", "classes", "size", "seed", "settings", "accuracy")}


def ensure_judge(spec: StudySpec, data: Path, needed: bool, tools: Tools) -> Path | None:
    """The judge folder: ``judge.path``, or one trained once into ``out/judge_dir``. None when
    judging is off or there is nothing to judge (no conditional run, unlabelled data)."""
    from diffscape.data.dataset import load_dataset

    j, nar = spec.judge, tools.narrator
    if not j.enabled or not needed:
        return None
    ds = load_dataset(data)
    if not ds.labelled:
        nar.note("no judge: the dataset has no classes")
        return None
    if j.path is not None:
        if not layout.is_judge_dir(j.path):
            raise DiffscapeError(f"judge path {j.path} is not a judge folder (no judge.json)")
        nar.skip("judge", f"using {j.path}")
        return Path(j.path)
    return _judge_of_kind(spec, ds, j.kind, spec.out / spec.judge_dir, tools)


def _judge_of_kind(spec: StudySpec, ds: Any, kind: str, path: Path, tools: Tools) -> Path:
    """A ``kind`` judge of the real training images in ``path``, trained there once."""
    from diffscape.judge import CNNSettings, train_judge

    nar = tools.narrator
    if layout.is_judge_dir(path):
        nar.skip("judge", f"trained before: {path}")
        return path
    cnn = CNNSettings(**spec.judge_cnn)  # type: ignore[arg-type]
    # ~400 img/s per epoch on 2 cores (29 epochs of 3,900 photos in 287 s, docs/real-photos.md);
    # an upper bound: early stopping usually ends it sooner
    eta = ds.count("train") * cnn.max_epochs / 400 if kind == "cnn" else 40
    nar.start("judge", f"a {kind} classifier of the real training images into {path}", eta=eta)
    made = train_judge(
        ds, kind, path, seed=spec.seed, cnn=cnn, progress=tools.progress, log=nar.note,
    )  # fmt: skip
    nar.done(f"accuracy on real test images {_pct(made.accuracy.get('test'))}")
    return path


def ensure_also_judges(
    spec: StudySpec, data: Path, main: Path | None, tools: Tools
) -> dict[str, str]:
    """The study's further judges (``[judge] also``), each trained once into ``_judge-<kind>``;
    a kind the main judge already is, is the main judge. None when the main one is off."""
    from diffscape.data.dataset import load_dataset

    if main is None or not spec.judge.also:
        return {}
    ds = load_dataset(data)
    main_kind = judge_identity(main).get("kind")
    return {
        kind: str(
            _judge_of_kind(
                spec, ds, kind, spec.out / layout.SWEEP_JUDGE_ALSO.format(kind=kind), tools
            )
        )
        for kind in dict.fromkeys(spec.judge.also)
        if kind != main_kind
    }


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def ensure_floor(study: Study, tools: Tools) -> Floor | None:
    """Real vs real at the study's sizes, computed once into ``_floor/floor.json``: the other
    real split (n images, as many as the runs generate) against the reference split (n_real, the
    same seeded subset the runs' real side uses, so its features come from the cache). Optional:
    a failure is reported and the study goes on."""
    from diffscape.data.dataset import load_dataset

    e, nar = study.spec.evaluate, tools.narrator
    if not (e.enabled and e.floor):
        return None
    ds = load_dataset(study.data)
    other = "test" if e.split != "test" else "train"
    if other not in ds.splits or e.split not in ds.splits:
        nar.note(f"no real-vs-real floor: the dataset has no {other} split beside {e.split}")
        return None
    n_other = ds.count(other) if e.n is None else min(e.n, ds.count(other))
    n_ref = min(e.n_real or e.n or ds.count(e.split), ds.count(e.split))
    wanted = results.plain(
        {
            "dataset": study.dataset_hash,
            "reference": [e.split, n_ref],
            "other": [other, n_other],
            "resize": e.resize,
            "fid64": e.fid64,
        }
    )
    done = results.read_floor(study.out)
    if done is not None and done.settings in (None, wanted):  # None: a floor from before
        nar.skip(
            "floor", f"FID {done.fid:.2f} (computed before)" if done.fid else "computed before"
        )
        return done
    nar.start("floor", f"real {other} ({n_other}) vs {e.split} ({n_ref})", eta=(n_other + n_ref) / 3.5 + 30)  # fmt: skip
    try:
        metrics = fid_kid(
            (ds, other), (ds, e.split), n_ref, n_other, f"{ds.root}:{e.split}", tools,
            replace(e, memorisation=False, bootstrap=0),  # the train split against itself
        )  # fmt: skip
    except Exception as err:  # optional: the runs are still worth doing
        nar.done(f"failed ({type(err).__name__}: {err}); going on without a floor")
        return None
    floor = results.write_floor(study.out, metrics, wanted)
    nar.done(f"FID {floor.fid:.2f}, KID {(floor.kid or {}).get('mean', float('nan')):.4f}")
    return floor


def prepare_study(
    spec: StudySpec, data: Path, tools: Tools, *, judge_needed: bool, floor: bool = True
) -> Study:
    """The judge and the floor of a study over ``data`` (from :func:`ensure_data`)."""
    from diffscape.data.dataset import load_dataset

    judge = ensure_judge(spec, data, judge_needed, tools)
    study = Study(
        spec, data, load_dataset(data).content_hash, judge,
        None if judge is None else judge_identity(judge),
        ensure_also_judges(spec, data, judge, tools),
    )  # fmt: skip
    if floor:
        ensure_floor(study, tools)
    return study


# ---- the stages of a run -------------------------------------------------------------------------


def settings_record(study: Study, run: RunSpec) -> dict[str, Any]:
    """What a finished run must match to be skipped on a re-run (what was used, not where it
    lies: moving the study folder must not redo every run)."""
    record = {
        "config": run.config.to_dict(),
        "sample": asdict(run.sample),
        "evaluate": asdict(study.spec.evaluate),
        "judge": study.judge_identity,
        "dataset": study.dataset_hash,
    }
    if study.also:  # only then: records of studies without them stay as they were
        record["also"] = {k: judge_identity(Path(p)) for k, p in study.also.items()}
    return results.plain(record)


def is_finished(study: Study, run: RunSpec) -> bool:
    r = results.read_result(run.sample_dir(study.out))
    return r is not None and r.ok and r.settings == settings_record(study, run)


def train_identity(study: Study, run: RunSpec) -> dict[str, Any]:
    """What a finished training must match to be skipped on a re-run (train.json's settings)."""
    return results.plain({"config": run.config.to_dict(), "dataset": study.dataset_hash})


def train_stage(study: Study, run: RunSpec, tools: Tools) -> TrainRecord:
    """Train (or resume) ``run``'s model; skipped when train.json says this config finished."""
    from diffscape import train as training

    run_dir, cfg, nar = run.train_dir(study.out), run.config, tools.narrator
    wanted = train_identity(study, run)
    done = results.read_train(run_dir)
    if done is not None and done.settings == wanted:
        nar.skip("train", f"trained before ({done.steps} steps)", who=run.training)
        return done
    t = cfg.train
    what = (f"{t.minutes:g} min of steps of {t.batch_size} (at most {t.steps})" if t.minutes
            else f"{t.steps} steps of {t.batch_size}")  # fmt: skip
    nar.start("train", f"{what} into {run_dir}",
              eta=60 * t.minutes if t.minutes else None, who=run.training)  # fmt: skip
    r = training.train(cfg, study.data, run_dir, progress=tools.progress)
    record = TrainRecord(
        steps=r.steps, seconds=round(r.seconds, 1), images_per_second=r.images_per_second,
        stopped_by=str(getattr(r, "stopped_by", "steps")), settings=wanted,
        finished_at=results.now(),
    )  # fmt: skip
    results.write_train(run_dir, record)
    nar.done(f"{r.steps} steps, {r.images_per_second:.0f} img/s")
    return record


def _sampling_done(record: dict[str, Any], run: RunSpec, checkpoint: Path | None) -> bool:
    """Whether samples.json describes the sampling ``run`` asks for, from its latest checkpoint."""
    if checkpoint is None:
        return False
    s, cond = run.sample, run.config.model.conditional
    steps = run.config.diffusion.timesteps if s.sampler == "ddpm" else s.steps
    counts = record.get("counts") or {}
    return (
        record.get("checkpoint") == str(checkpoint.resolve())
        and (record.get("sampler"), record.get("steps"), record.get("eta"), record.get("seed"))
        == (s.sampler, steps, s.eta, s.seed)
        and record.get("per_class") == cond
        and record.get("guidance") == (s.guidance if cond else None)
        and (all(c == s.n for c in counts.values()) if cond else record.get("n") == s.n)
    )


def sample_stage(study: Study, run: RunSpec, tools: Tools) -> dict[str, Any]:
    """Sample ``run`` into its folder (the samples.json record); skipped when samples.json
    already describes these settings and the latest checkpoint."""
    from diffscape.checkpoint import latest_checkpoint
    from diffscape.data.dataset import load_dataset
    from diffscape.sample import sample_to_folder

    s, cond, nar = run.sample, run.config.model.conditional, tools.narrator
    out_dir = run.sample_dir(study.out)
    done = results.read_json(out_dir / layout.SAMPLES_JSON)
    if done is not None and _sampling_done(done, run, latest_checkpoint(run.train_dir(study.out))):
        nar.skip("sample", f"sampled before ({done.get('n')} images)", who=run.name)
        return done
    if out_dir.exists() and not layout.is_samples_dir(out_dir):
        # a failed attempt's record, this study's own; anything else in it is refused below
        (out_dir / layout.RESULT_JSON).unlink(missing_ok=True)
    classes = "per class" if cond else "in all"
    images = s.n * (load_dataset(study.data).num_classes if cond else 1)
    nar.start("sample", f"{s.n} {classes}, {s.sampler} {s.steps} steps, w={s.guidance:g}",
              eta=images * s.steps / 250, who=run.name)  # fmt: skip
    record = sample_to_folder(
        run.train_dir(study.out), out_dir, n=s.n, per_class=cond, sampler=s.sampler,
        steps=s.steps, eta=s.eta, guidance=s.guidance if cond else None, seed=s.seed,
        batch=s.batch, progress=tools.progress, overwrite=True,
    )  # fmt: skip
    nar.done(f"{record['n']} images in {out_dir}")
    return record


def evaluate_stage(study: Study, run: RunSpec, made: int, tools: Tools) -> dict[str, Any]:
    """FID/KID of the samples against the reference split (metrics.json); skipped when it was
    computed with these settings."""
    from diffscape.data.dataset import load_dataset
    from diffscape.imagefolder import load_sample_folder

    e, nar, folder = study.spec.evaluate, tools.narrator, run.sample_dir(study.out)
    wanted = results.plain({"evaluate": asdict(e), "dataset": study.dataset_hash, "made": made})
    done = results.read_metrics(folder)
    if done is not None and done.get("settings") == wanted:
        nar.skip("evaluate", "scored before", who=run.name)
        return done
    ds = load_dataset(study.data)
    n = made if e.n is None else min(e.n, made)
    asked = e.n_real or e.n  # real images: n_real, else as many as generated ones
    n_real = None if asked is None else min(asked, ds.count(e.split))
    nar.start("evaluate", f"FID/KID: {n} generated vs {n_real or 'all'} real {e.split}",
              eta=(n + (n_real or 0)) / 3.5 + 30, who=run.name)  # fmt: skip
    fake = load_sample_folder(folder)
    metrics = fid_kid((ds, e.split), fake, n, n_real, run.name, tools, e)
    results.write_metrics(folder, metrics, wanted)
    pairs_png(fake, ds, metrics, folder, tools)
    nar.done(f"FID {metrics['fid']:.2f}, KID {metrics['kid']['mean']:.4f}")
    return metrics


def pairs_png(fake: Any, ds: Any, metrics: dict[str, Any], folder: Path, tools: Tools) -> None:
    """closest-pairs.png beside metrics.json: each generated image nearest to a training one,
    side by side (when the memorisation check ran). A picture only: a failure is said, not fatal."""
    if not metrics.get("memorisation"):
        return
    try:
        from diffscape.metrics.memorisation import save_pairs_png
    except ImportError:
        return
    try:
        save_pairs_png(fake, ds, metrics, folder / layout.PAIRS_PNG)
    except Exception as err:  # the scores are written; the picture is a convenience
        tools.narrator.note(f"closest pairs not drawn ({type(err).__name__}: {err})")


def judge_stage(study: Study, run: RunSpec, made: int, tools: Tools) -> dict[str, Any]:
    """The judge's accuracy on the samples (accuracy.json); skipped when done with this judge."""
    from diffscape.judge.score import score

    nar, folder = tools.narrator, run.sample_dir(study.out)
    done = results.read_accuracy(folder)
    if done is not None and (done.get("judge"), done.get("n")) == (str(study.judge), made):
        nar.skip("judge samples", f"judged before: {_pct(done.get('accuracy'))}", who=run.name)
        return done
    nar.start("judge samples", f"{made} images", eta=5, who=run.name)
    acc = score(study.judge, folder, overwrite=True)  # type: ignore[arg-type]
    nar.done(f"accuracy {_pct(acc['accuracy'])}")
    return acc


def also_judge_stage(study: Study, run: RunSpec, made: int, tools: Tools) -> dict[str, Any]:
    """Each further judge's accuracy on the samples (``accuracy-<kind>.json``): {kind: record}."""
    import tempfile

    from diffscape.judge.score import score

    nar, folder, out = tools.narrator, run.sample_dir(study.out), {}
    for kind, judge in study.also.items():
        path = folder / layout.ACCURACY_ALSO_JSON.format(kind=kind)
        done = results.read_json(path)
        if done is not None and (done.get("judge"), done.get("n")) == (judge, made):
            out[kind] = done
            continue
        nar.start(f"judge samples ({kind})", f"{made} images", eta=5, who=run.name)
        with tempfile.TemporaryDirectory() as tmp:  # its confusion files: not kept
            acc = score(judge, folder, out=tmp)
        results.write_json(path, acc)
        nar.done(f"accuracy {_pct(acc['accuracy'])}")
        out[kind] = acc
    return out


class StageError(Exception):
    """A stage of a run failed (the cause is chained); the run is recorded as failed."""

    def __init__(self, stage: str) -> None:
        super().__init__(stage)
        self.stage = stage


def _timed(stage: str, fn: Callable[[], Any], seconds: dict[str, float]) -> Any:
    t0 = time.perf_counter()
    try:
        out = fn()
    except KeyboardInterrupt:
        raise
    except Exception as e:
        raise StageError(stage) from e
    seconds[stage] = round(time.perf_counter() - t0, 1)
    return out


def _identity(run: RunSpec) -> dict[str, Any]:
    return results.plain(
        {
            "name": run.name,
            "training": run.training,
            "sampling": run.sampling,
            "changes": run.changes,
            "sample": asdict(run.sample),
            "setting": run.setting or run.name,
            "seed": run.seed,
        }
    )


def finish_run(study: Study, run: RunSpec, trained: TrainRecord, tools: Tools) -> RunResult:
    """Sample -> evaluate -> judge one trained run, then write its result.json (last)."""
    seconds = {"train": trained.seconds}
    made = _timed("sample", lambda: sample_stage(study, run, tools), seconds)["n"]
    scores: dict[str, Any] = {}
    if study.spec.evaluate.enabled:
        m = _timed("evaluate", lambda: evaluate_stage(study, run, made, tools), seconds)
        scores |= {k: m.get(k) for k in ("fid", "kid", "n_fake", "n_real")}
        scores |= {k: m.get(k) for k in ("precision", "recall", "fid64")}
        scores["memorisation"] = (m.get("memorisation") or {}).get("share")
    if study.judge is not None and run.config.model.conditional:
        acc = _timed("judge", lambda: judge_stage(study, run, made, tools), seconds)
        scores |= {"accuracy": acc["accuracy"], "n_judged": acc["n"]}
        scores["per_class"] = acc.get("per_class")
        also = _timed("judge", lambda: also_judge_stage(study, run, made, tools), seconds)
        if also:
            scores["judges"] = {
                k: {"accuracy": a["accuracy"], "n": a["n"]} for k, a in also.items()
            }
    result = RunResult(
        **_identity(run), status="ok", steps=trained.steps, n_samples=made, **scores,
        seconds=seconds, settings=settings_record(study, run), finished_at=results.now(),
    )  # fmt: skip
    results.write_result(run.sample_dir(study.out), result)
    return result


def record_failure(
    study: Study, run: RunSpec, stage: str, error: BaseException, tools: Tools
) -> RunResult:
    message = f"{type(error).__name__}: {error}"
    tools.narrator.note(f"{run.name}: FAILED in {stage}: {message}")
    result = RunResult(
        **_identity(run), status="failed", stage=stage, error=message,
        traceback="".join(traceback.format_exception(type(error), error, error.__traceback__)),
        settings=settings_record(study, run), finished_at=results.now(),
    )  # fmt: skip
    results.write_result(run.sample_dir(study.out), result)
    return result


def skip_finished(run: RunSpec, tools: Tools) -> None:
    nar = tools.narrator
    if nar.total:  # numbered stages: each says it is done
        for stage in RUN_STAGES:
            nar.skip(stage)
    else:
        nar.skip("finished before, skipped", why="", who=run.name)


def run_training(study: Study, runs: list[RunSpec], tools: Tools) -> None:
    """Train one model (or resume it), then sample, evaluate and judge each of its samplings
    not finished yet. Failures are recorded per run; signals and Ctrl-C stop the study."""
    from diffscape.train import TrainingInterrupted

    todo = []
    for r in runs:
        if is_finished(study, r):
            skip_finished(r, tools)
        else:
            todo.append(r)
    if not todo:
        return
    try:
        trained = train_stage(study, todo[0], tools)
    except (TrainingInterrupted, KeyboardInterrupt):
        raise
    except Exception as e:
        for r in todo:
            record_failure(study, r, "train", e, tools)
        return
    for r in todo:
        try:
            finish_run(study, r, trained, tools)
        except KeyboardInterrupt:
            raise
        except StageError as e:
            record_failure(study, r, e.stage, e.__cause__ or e, tools)
        except Exception as e:  # outside the stages: writing the result
            record_failure(study, r, "result", e, tools)


def run_study(
    study: Study, runs: list[RunSpec], tools: Tools, *, gpus: int = 0, jobs: int | None = None
) -> list[RunResult]:
    """Every run of a prepared study: one training after another, or several at once in worker
    processes (:func:`worker_slots`: one per GPU, or ``jobs`` sharing the CPU cores); returns
    each run's result."""
    groups: dict[str, list[RunSpec]] = {}
    for r in runs:
        groups.setdefault(r.training, []).append(r)
    todo = {}
    for name, group in groups.items():
        if all(is_finished(study, r) for r in group):
            for r in group:
                skip_finished(r, tools)
        else:
            todo[name] = group
    slots = worker_slots(gpus, jobs)
    if len(slots) > 1 and len(todo) > 1:
        run_parallel(study, todo, slots, tools)
    else:
        for group in todo.values():
            run_training(study, group, tools)
    return [results.read_result(r.sample_dir(study.out)) or _missing(r) for r in runs]


def _missing(run: RunSpec) -> RunResult:
    return RunResult(name=run.name, status="missing", training=run.training, sampling=run.sampling)


# ---- worker processes: one per GPU, or several sharing the CPU cores -----------------------------


@dataclass(frozen=True)
class Slot:
    """Where one worker runs: its name in messages and the environment it starts with."""

    name: str
    env: dict[str, str]


def worker_slots(gpus: int, jobs: int | None = None, cores: int | None = None) -> list[Slot]:
    """The places workers run: one per GPU (at most ``jobs`` of them when given), or, without a
    GPU, ``jobs`` workers each given ``cores // jobs`` threads (OMP_NUM_THREADS; at least 1).

    Why CPU workers: a small UNet does not keep two threads busy. On a 2-core VM, two one-thread
    trainings of ``tiny`` ran at 46.6 img/s each (93 together) where one two-thread training ran
    at 65 (docs/real-photos.md). A run's ``train.minutes`` is its own wall clock, so runs that
    share the cores each get their share of them in those minutes.
    """
    import os

    if jobs is not None and jobs < 1:
        raise DiffscapeError(f"--jobs {jobs}: give 1 or more workers")
    if gpus >= 1:
        n = gpus if jobs is None else min(jobs, gpus)
        return [Slot(f"GPU {g}", {"CUDA_VISIBLE_DEVICES": str(g)}) for g in range(n)]
    n = jobs or 1
    threads = max(1, (cores or os.cpu_count() or 1) // n)
    env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    return [Slot(f"CPU worker {i} ({threads} thread{'s' * (threads > 1)})", env) for i in range(n)]


def job_json(study: Study, runs: list[RunSpec]) -> str:
    """A worker's job: the prepared study and the runs of one training, as JSON."""
    return json.dumps(results.plain({"study": asdict(study), "runs": [asdict(r) for r in runs]}))


def job_from_json(text: str) -> tuple[Study, list[RunSpec]]:
    job = json.loads(text)
    s = job["study"]
    spec = StudySpec(**{
        **s["spec"], "out": Path(s["spec"]["out"]),
        "evaluate": parse_section("evaluate", s["spec"]["evaluate"]),
        "judge": parse_section("judge", s["spec"]["judge"]),
    })  # fmt: skip
    study = Study(**{**s, "spec": spec, "data": Path(s["data"]),
                     "judge": None if s["judge"] is None else Path(s["judge"])})  # fmt: skip
    runs = [
        RunSpec(
            **{
                **r,
                "config": from_dict(r["config"]),
                "sample": parse_section("sample", r["sample"]),
            }
        )
        for r in job["runs"]
    ]
    return study, runs


def _start_worker(study: Study, runs: list[RunSpec], slot: Slot) -> subprocess.Popen:
    import os

    log_path = worker_log(study, runs[0].training)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "diffscape.pipeline", "worker", job_json(study, runs)]
    env = {**os.environ, **slot.env}
    with open(log_path, "ab") as logfile:
        return subprocess.Popen(cmd, env=env, stdout=logfile, stderr=subprocess.STDOUT)


def worker_log(study: Study, training: str) -> Path:
    """A worker's log: in the study's _logs/ folder, not in the run folder, which train must
    find new or a run (a log of its own would make it neither)."""
    return study.out / layout.SWEEP_LOGS / layout.worker_log_name(training)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Any:
    """SIGTERM would end this process at once and leave the workers training unattended; as a
    KeyboardInterrupt it reaches the code that stops them."""

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    try:
        old = signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread: no handler
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old if old is not None else signal.SIG_DFL)


def run_parallel(
    study: Study, groups: dict[str, list[RunSpec]], slots: list[Slot], tools: Tools
) -> None:
    """One worker process per slot (:func:`worker_slots`), each running one training (and its
    samplings) in its slot's environment; its output goes to _logs/<training>.log."""
    pending, running = list(groups), {}
    say = tools.narrator.note
    say(f"{len(slots)} workers: running {len(pending)} trainings, {len(slots)} at a time")
    with _sigterm_as_interrupt():
        try:
            while pending or running:
                for i, slot in enumerate(slots):
                    if i not in running and pending:
                        name = pending.pop(0)
                        running[i] = (_start_worker(study, groups[name], slot), name)
                        say(f"{name}: started on {slot.name} (log: {worker_log(study, name)})")
                time.sleep(1.0)
                for i, (proc, name) in list(running.items()):
                    if proc.poll() is not None:
                        del running[i]
                        _worker_ended(study, groups[name], proc.returncode, tools)
        except BaseException:
            for proc, _ in running.values():
                proc.terminate()  # SIGTERM: training saves a checkpoint and stops
            for proc, _ in running.values():
                proc.wait()
            raise


def _worker_ended(study: Study, runs: list[RunSpec], code: int, tools: Tools) -> None:
    name = runs[0].training
    tools.narrator.note(f"{name}: worker exited with code {code}")
    for r in runs:
        if results.read_result(r.sample_dir(study.out)) is None:
            err = DiffscapeError(
                f"worker exited with code {code} before finishing; see {worker_log(study, name)}"
            )
            record_failure(study, r, "worker", err, tools)


def worker_main(argv: list[str]) -> int:
    """``python -m diffscape.pipeline worker JOB``: run one training of a prepared study."""
    if len(argv) != 2 or argv[0] != "worker":
        print("usage: python -m diffscape.pipeline worker JOB_JSON", file=sys.stderr)
        return 2
    study, runs = job_from_json(argv[1])
    import torch

    log(f"worker: {runs[0].training} on {torch.get_num_threads()} CPU thread(s)")
    run_training(study, runs, Tools(Narrator(log), progress=False))
    return 0


if __name__ == "__main__":
    # Import the module by its name: classes defined in __main__ would be other classes.
    from diffscape.pipeline import worker_main as _main

    sys.exit(_main(sys.argv[1:]))
