"""The stages of a run: train -> sample -> evaluate (FID/KID) -> judge the samples; one training
and its samplings through them (:func:`run_training`), result.json written last, a failed stage
recorded in it, a finished run (result.json with the same settings) skipped.

Every stage skips work already done, recognised by its marker file and the settings recorded
in it: train.json, samples.json, metrics.json, accuracy.json (:mod:`diffscape.study.results`).
So a killed or failed study, run again, does only what is missing. Torch, numpy and the
networks are imported when a stage first runs, so that ``diffscape sweep --list`` and
``--dry-run`` start without them.
"""

from __future__ import annotations

import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from diffscape.core import layout
from diffscape.core.timefmt import duration
from diffscape.metrics import registry
from diffscape.settings.sections import EvaluateSettings, SampleSettings
from diffscape.study import results
from diffscape.study.narrate import Tools, pct
from diffscape.study.results import RunResult
from diffscape.study.spec import RunSpec, Study, judge_identity, train_identity, upgraded


def fid_kid(
    real: tuple[Any, str],
    fake: Any,
    n: int,
    n_real: int | None,
    name: str,
    tools: Tools,
    settings: EvaluateSettings,
) -> dict[str, Any]:
    """THE call into :func:`diffscape.metrics.evaluate.evaluate` (FID/KID, precision/recall,
    fid64, memorisation of ``fake`` against the real split, as the study's [evaluate] asks,
    with the study's shared Inception network); writes nothing."""
    from diffscape.metrics.evaluate import evaluate

    e = settings.with_changes(n=n, n_real=n_real)  # the study's sizes
    return evaluate(
        real, fake, e, extractor=tools.extractor(e),
        fake_name=name, progress=tools.progress, say=tools.narrator.note,
    )  # fmt: skip


INCEPTION_IMAGES_PER_SECOND = 3.5  # 2 CPU cores, 299x299 (the floor stage measures it anew)


def sample_seconds(images: int, steps: int, guidance: float | None) -> float:
    """Estimated seconds to sample ``images`` in ``steps``: DPM-Solver++ on the tiny model makes
    ~250 image-steps/s on 2 cores, half that when w guides (two network calls a step; None: an
    unconditional model)."""
    return images * steps * (1 if guidance in (None, 0.0, 1.0) else 2) / 250


def evaluate_seconds(
    e: EvaluateSettings, n: int, n_real: int | None, floor: bool, rate: float
) -> float:
    """Estimated seconds of :func:`evaluate_stage`'s embedding: its images through Inception at
    ``rate`` images/s, less what the floor stage (``floor``: it ran) embedded already:
    the real side (the same seeded subset) and memorisation's training images when the floor's
    train side is the same subset (the same size)."""
    from diffscape.metrics.evaluate import CPU_MEMORISATION_N

    images = n + (0 if floor else n_real or 0)
    mem_n = e.memorisation_n or CPU_MEMORISATION_N  # fewer training images than that: all
    if e.memorisation and e.split != "train" and not (floor and e.n == mem_n):
        images += mem_n
    return images / rate


def train_stage(study: Study, run: RunSpec, tools: Tools) -> dict[str, Any]:
    """Train (or resume) ``run``'s model; skipped when train.json says this config finished.
    Returns train.json's record: steps, seconds, images_per_second, stopped_by (steps or
    budget), settings (config and dataset), finished_at."""
    from diffscape.train import train

    run_dir, cfg, nar = run.train_dir(study.out), run.config, tools.narrator
    wanted = train_identity(study, run)
    done = results.read_json(run_dir / layout.TRAIN_JSON)
    if done is not None and upgraded(done.get("settings")) == wanted:
        nar.skip("train", f"trained before ({done.get('steps')} steps)", who=run.training)
        return done
    t = cfg.train
    what = (f"{duration(60 * t.minutes)} of steps of {t.batch_size} (at most {t.steps})"
            if t.minutes else f"{t.steps} steps of {t.batch_size}")  # fmt: skip
    nar.start("train", f"{what} into {run_dir}",
              eta=60 * t.minutes if t.minutes else None, who=run.training)  # fmt: skip
    r = train(cfg, study.data, run_dir, progress=tools.progress)
    record = {
        "steps": r.steps, "seconds": round(r.seconds, 1), "images_per_second": r.images_per_second,
        "stopped_by": r.stopped_by, "settings": wanted, "finished_at": results.now(),
    }  # fmt: skip
    results.write_json(run_dir / layout.TRAIN_JSON, record)
    nar.done(f"{r.steps} steps, {r.images_per_second:.0f} img/s")
    return record


def _sampling_done(record: dict[str, Any], run: RunSpec, checkpoint: Path | None) -> bool:
    """Whether samples.json describes the sampling ``run`` asks for, from its latest checkpoint."""
    from diffscape.sample.folder import same_sampling

    if checkpoint is None:
        return False
    s, cond = _sampling(run), run.config.model.conditional
    counts = record.get("counts") or {}
    return (
        record.get("checkpoint") == str(checkpoint.resolve())
        and same_sampling(record, s, cond, run.config.diffusion.timesteps)
        and record.get("per_class") == cond
        and (all(c == s.n for c in counts.values()) if cond else record.get("n") == s.n)
    )


def _sampling(run: RunSpec) -> SampleSettings:
    """The study's [sample] for this run: an unconditional model ignores its guidance."""
    if run.config.model.conditional:
        return run.sample
    return run.sample.with_changes(guidance=1.0, guidance_interval=None)


def sample_stage(study: Study, run: RunSpec, tools: Tools) -> dict[str, Any]:
    """Sample ``run`` into its folder (the samples.json record); skipped when samples.json
    already describes these settings and the latest checkpoint."""
    from diffscape.checkpoint import latest_checkpoint
    from diffscape.data.dataset import load_dataset
    from diffscape.model import diffusion
    from diffscape.sample import sample_to_folder

    s, cond, nar = _sampling(run), run.config.model.conditional, tools.narrator
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
    steps = diffusion.sampler_steps(run.config.diffusion.timesteps, s.sampler, s.steps)
    eta = sample_seconds(images, steps, s.guidance if cond else None)
    nar.start("sample", f"{s.n} {classes}, {s.sampler} {steps} steps, w={s.guidance:g}",
              eta=eta, who=run.name)  # fmt: skip
    record = sample_to_folder(
        run.train_dir(study.out), out_dir, s, per_class=cond,
        progress=tools.progress, overwrite=True,
    )  # fmt: skip
    nar.done(f"{record['n']} images in {out_dir}")
    return record


def evaluate_stage(study: Study, run: RunSpec, made: int, tools: Tools) -> dict[str, Any]:
    """FID/KID of the samples against the reference split (metrics.json); skipped when it was
    computed with these settings."""
    from diffscape.data.dataset import load_dataset
    from diffscape.data.imagefolder import load_sample_folder

    e, nar, folder = study.spec.evaluate, tools.narrator, run.sample_dir(study.out)
    wanted = results.plain({"evaluate": e.to_dict(), "dataset": study.dataset_hash, "made": made})
    done = results.read_json(folder / layout.EVAL_JSON)
    if done is not None and upgraded(done.get("settings")) == wanted:
        nar.skip("evaluate", "scored before", who=run.name)
        return done
    ds = load_dataset(study.data)
    n = made if e.n is None else min(e.n, made)
    asked = e.n_real or e.n  # real images: n_real, else as many as generated ones
    n_real = None if asked is None else min(asked, ds.count(e.split))
    floor = e.floor and results.read_floor(study.out) is not None
    nar.start("evaluate", f"FID/KID: {n} generated vs {n_real or 'all'} real {e.split}",
              eta=evaluate_seconds(e, n, n_real, floor, INCEPTION_IMAGES_PER_SECOND) + 30,
              who=run.name)  # fmt: skip
    fake = load_sample_folder(folder)
    metrics = fid_kid((ds, e.split), fake, n, n_real, run.name, tools, e)
    results.write_json(folder / layout.EVAL_JSON, {**metrics, "settings": wanted})
    pairs_png(fake, ds, metrics, folder, tools)
    nar.done(f"FID {metrics['fid']:.2f}, KID {metrics['kid']['mean']:.4f}")
    return metrics


def pairs_png(fake: Any, ds: Any, metrics: dict[str, Any], folder: Path, tools: Tools) -> None:
    """closest-pairs.png beside metrics.json: each generated image nearest to a training one,
    side by side (when the memorisation check ran). A picture only: a failure is said, not fatal."""
    if not metrics.get("memorisation"):
        return
    from diffscape.metrics.memorisation import save_pairs_png

    try:
        save_pairs_png(fake, ds, metrics, folder / layout.PAIRS_PNG)
    except Exception as err:  # the scores are written; the picture is a convenience
        tools.narrator.note(f"closest pairs not drawn ({type(err).__name__}: {err})")


def judge_stage(study: Study, run: RunSpec, made: int, tools: Tools) -> dict[str, Any]:
    """The judge's accuracy on the samples (accuracy.json); skipped when done with this judge."""
    from diffscape.judge.score import score

    nar, folder = tools.narrator, run.sample_dir(study.out)
    done = results.read_json(folder / layout.ACCURACY_JSON)
    if done is not None and (done.get("judge"), done.get("n")) == (str(study.judge), made):
        nar.skip("judge samples", f"judged before: {pct(done.get('accuracy'))}", who=run.name)
        return done
    nar.start("judge samples", f"{made} images", eta=5, who=run.name)
    acc = score(study.judge, folder, overwrite=True)  # type: ignore[arg-type]
    nar.done(f"accuracy {pct(acc['accuracy'])}")
    return acc


def also_judge_stage(study: Study, run: RunSpec, made: int, tools: Tools) -> dict[str, Any]:
    """Each further judge's accuracy on the samples (``accuracy-<kind>.json``): {kind: record}."""
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
        nar.done(f"accuracy {pct(acc['accuracy'])}")
        out[kind] = acc
    return out


class StageError(Exception):
    """A stage of a run failed (the cause is chained); the run is recorded as failed."""

    def __init__(self, stage: str) -> None:
        super().__init__(stage)
        self.stage = stage


def timed(stage: str, fn: Callable[[], Any], seconds: dict[str, float]) -> Any:
    t0 = time.perf_counter()
    try:
        out = fn()
    except Exception as e:  # Ctrl-C (not an Exception) stops the study
        raise StageError(stage) from e
    seconds[stage] = round(time.perf_counter() - t0, 1)
    return out


RUN_STAGES = ("train", "sample", "evaluate", "judge samples")


def settings_record(study: Study, run: RunSpec) -> dict[str, Any]:
    """What a finished run must match to be skipped on a re-run (what was used, not where it
    lies: moving the study folder must not redo every run)."""
    record = {
        "config": run.config.to_dict(),
        "sample": run.sample.to_dict(),
        "evaluate": study.spec.evaluate.to_dict(),
        "judge": None if study.judge is None else judge_identity(study.judge),
        "dataset": study.dataset_hash,
    }
    if study.also:  # only then: records of studies without them stay as they were
        record["also"] = {k: judge_identity(Path(p)) for k, p in study.also.items()}
    return results.plain(record)


def is_finished(study: Study, run: RunSpec) -> bool:
    r = results.read_result(run.sample_dir(study.out))
    return r is not None and r.ok and upgraded(r.settings) == settings_record(study, run)


def _write_result(study: Study, run: RunSpec, **outcome: Any) -> None:
    """``run``'s result.json: who it is, ``outcome``, the settings a re-run must match."""
    result = RunResult(
        name=run.name,
        training=run.training,
        sampling=run.sampling,
        changes=run.changes,
        sample=run.sample.to_dict(),
        setting=run.setting or run.name,
        seed=run.seed,
        **outcome,
        settings=settings_record(study, run),
        finished_at=results.now(),
    )
    results.write_result(run.sample_dir(study.out), result)


def finish_run(study: Study, run: RunSpec, trained: dict[str, Any], tools: Tools) -> None:
    """Sample -> evaluate -> judge one trained run, then write its result.json (last)."""
    seconds = {"train": trained.get("seconds")}
    made = timed("sample", lambda: sample_stage(study, run, tools), seconds)["n"]
    metrics = acc = also = None
    if study.spec.evaluate.enabled:
        metrics = timed("evaluate", lambda: evaluate_stage(study, run, made, tools), seconds)
    if study.judge is not None and run.config.model.conditional:
        acc = timed("judge", lambda: judge_stage(study, run, made, tools), seconds)
        also = timed("judge", lambda: also_judge_stage(study, run, made, tools), seconds)
    _write_result(
        study, run, status="ok", steps=trained.get("steps"), n_samples=made,
        scores=registry.values(registry.records(metrics, acc, also)), seconds=seconds,
    )  # fmt: skip


def record_failure(
    study: Study, run: RunSpec, stage: str, error: BaseException, tools: Tools
) -> None:
    message = f"{type(error).__name__}: {error}"
    tools.narrator.note(f"{run.name}: FAILED in {stage}: {message}")
    _write_result(
        study, run, status="failed", stage=stage, error=message,
        traceback="".join(traceback.format_exception(type(error), error, error.__traceback__)),
    )  # fmt: skip


def skip_finished(run: RunSpec, tools: Tools) -> None:
    nar = tools.narrator
    if nar.total:  # numbered stages: each says it is done
        for stage in RUN_STAGES:
            nar.skip(stage)
    else:
        nar.skip("finished before, skipped", why="", who=run.name)


def run_training(study: Study, runs: list[RunSpec], tools: Tools) -> None:
    """Train one model (or resume it), then sample, evaluate and judge each of ``runs`` (its
    samplings not finished yet: :func:`is_finished`). Failures are recorded per run; signals
    and Ctrl-C stop the study."""
    from diffscape.train import TrainingInterrupted

    try:
        trained = train_stage(study, runs[0], tools)
    except TrainingInterrupted:  # a signal: the study stops (so does Ctrl-C, not an Exception)
        raise
    except Exception as e:
        for r in runs:
            record_failure(study, r, "train", e, tools)
        return
    for r in runs:
        try:
            finish_run(study, r, trained, tools)
        except StageError as e:
            record_failure(study, r, e.stage, e.__cause__ or e, tools)
        except Exception as e:  # outside the stages: writing the result
            record_failure(study, r, "result", e, tools)
