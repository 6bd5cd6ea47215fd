"""One training of a study and its samplings: train once, then per sampling sample -> evaluate
-> judge -> result.json (written last). A failed stage is recorded in the run's result.json, and
a finished run (its result.json written with the same settings) is skipped.
"""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Any

from diffscape.metrics import registry
from diffscape.study import results
from diffscape.study.narrate import Tools
from diffscape.study.results import RunResult, TrainRecord
from diffscape.study.shared import judge_identity
from diffscape.study.spec import RunSpec, Study, upgraded
from diffscape.study.stages import (
    StageError,
    also_judge_stage,
    evaluate_stage,
    judge_stage,
    sample_stage,
    timed,
    train_stage,
)

RUN_STAGES = ("train", "sample", "evaluate", "judge samples")


def settings_record(study: Study, run: RunSpec) -> dict[str, Any]:
    """What a finished run must match to be skipped on a re-run (what was used, not where it
    lies: moving the study folder must not redo every run)."""
    record = {
        "config": run.config.to_dict(),
        "sample": run.sample.to_dict(),
        "evaluate": study.spec.evaluate.to_dict(),
        "judge": study.judge_identity,
        "dataset": study.dataset_hash,
    }
    if study.also:  # only then: records of studies without them stay as they were
        record["also"] = {k: judge_identity(Path(p)) for k, p in study.also.items()}
    return results.plain(record)


def is_finished(study: Study, run: RunSpec) -> bool:
    r = results.read_result(run.sample_dir(study.out))
    return r is not None and r.ok and upgraded(r.settings) == settings_record(study, run)


def _write_result(study: Study, run: RunSpec, **outcome: Any) -> RunResult:
    """``run``'s result.json: who it is, ``outcome``, the settings a re-run must match."""
    who = results.plain(
        {
            "name": run.name,
            "training": run.training,
            "sampling": run.sampling,
            "changes": run.changes,
            "sample": run.sample.to_dict(),
            "setting": run.setting or run.name,
            "seed": run.seed,
        }
    )
    result = RunResult(
        **who, **outcome, settings=settings_record(study, run), finished_at=results.now()
    )
    results.write_result(run.sample_dir(study.out), result)
    return result


def finish_run(study: Study, run: RunSpec, trained: TrainRecord, tools: Tools) -> RunResult:
    """Sample -> evaluate -> judge one trained run, then write its result.json (last)."""
    seconds = {"train": trained.seconds}
    made = timed("sample", lambda: sample_stage(study, run, tools), seconds)["n"]
    metrics = acc = also = None
    if study.spec.evaluate.enabled:
        metrics = timed("evaluate", lambda: evaluate_stage(study, run, made, tools), seconds)
    if study.judge is not None and run.config.model.conditional:
        acc = timed("judge", lambda: judge_stage(study, run, made, tools), seconds)
        also = timed("judge", lambda: also_judge_stage(study, run, made, tools), seconds)
    return _write_result(
        study, run, status="ok", steps=trained.steps, n_samples=made,
        scores=registry.values(registry.records(metrics, acc, also)), seconds=seconds,
    )  # fmt: skip


def record_failure(
    study: Study, run: RunSpec, stage: str, error: BaseException, tools: Tools
) -> RunResult:
    message = f"{type(error).__name__}: {error}"
    tools.narrator.note(f"{run.name}: FAILED in {stage}: {message}")
    return _write_result(
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
    except (TrainingInterrupted, KeyboardInterrupt):
        raise
    except Exception as e:
        for r in runs:
            record_failure(study, r, "train", e, tools)
        return
    for r in runs:
        try:
            finish_run(study, r, trained, tools)
        except KeyboardInterrupt:
            raise
        except StageError as e:
            record_failure(study, r, e.stage, e.__cause__ or e, tools)
        except Exception as e:  # outside the stages: writing the result
            record_failure(study, r, "result", e, tools)
