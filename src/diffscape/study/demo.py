"""``diffscape demo``: the whole pipeline on the built-in procedural landscapes, sized for a CPU.

A one-run study (:mod:`diffscape.study`): synth -> judge (a CNN on the real training split)
-> real-vs-real floor -> train a conditional model until its time budget (``train.minutes``) ->
sample every class -> FID/KID against the test split -> judge the samples -> one HTML report.
Each stage prints one line with its estimated time; run again, it does only what is missing.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from diffscape.core import layout, lock
from diffscape.core.errors import DiffscapeError
from diffscape.core.timefmt import duration
from diffscape.data.dataset import load_dataset
from diffscape.report import build_report
from diffscape.settings.presets import resolve
from diffscape.settings.sections import DEFAULT_SAMPLE_STEPS, DemoSettings, JudgeSettings
from diffscape.study import results, stages
from diffscape.study.launch import run_study
from diffscape.study.narrate import Narrator, Tools, pct
from diffscape.study.results import RunResult
from diffscape.study.shared import ensure_data, prepare_study
from diffscape.study.spec import RunSpec, Study, StudySpec, train_identity, upgraded

# The demo's recipe is the tiny preset's CPU recipe (v-prediction, min-SNR, lr 2e-3 decaying to
# the deadline, EMA 0.995, batch 16; docs/benchmarks.md "Demo recipe", docs/real-photos.md),
# conditional, without the periodic sample grids.
DEMO_OVERRIDES = (
    "model.conditional=true",
    "train.log_every_steps=25",
    "train.sample_every_steps=0",
    "train.milestone_every_steps=0",
)
STAGES = 8  # data, judge, floor, train, sample, evaluate, judge samples, report


def study_spec(out: Path, s: DemoSettings, data: str | os.PathLike[str] | None) -> StudySpec:
    return StudySpec(
        out=out,
        dataset=None if data is None else str(data),
        synth_images=s.synth_images,
        synth_size=32,
        seed=s.seed,
        evaluate=s.evaluate,
        judge=JudgeSettings(kind="cnn"),
        judge_cnn={"max_epochs": s.judge_epochs, "patience_epochs": s.judge_patience},
        data_dir=layout.DEMO_DATA,
        judge_dir=layout.DEMO_JUDGE,
    )


def demo_run(s: DemoSettings, image_size: int, train_minutes: float) -> RunSpec:
    """The demo's one run: the recipe, trained until ``train_minutes`` (or ``s.max_steps``)."""
    cfg = resolve(s.preset, list(DEMO_OVERRIDES)).with_changes(
        model={"image_size": image_size},
        train={"seed": s.seed, "minutes": train_minutes, "steps": s.max_steps},
    )
    return RunSpec(layout.DEMO_RUN, layout.DEMO_RUN, layout.DEMO_SAMPLING, cfg, s.sample)


MIN_TRAIN_MINUTES = 0.5  # training gets at least this, even when the other stages use the budget


def after_training_seconds(s: DemoSettings, classes: int, inception_rate: float) -> float:
    """Estimated seconds of the stages after training: sampling, FID/KID of the samples (the
    floor, run before training, has the real side and memorisation's training images), judging
    them (under a second) and the report; 15 s for loading and writing."""
    images, e = s.sample.n * classes, s.evaluate
    n = min(images, e.n or images)
    return (
        stages.sample_seconds(images, s.sample.steps or DEFAULT_SAMPLE_STEPS, s.sample.guidance)
        + stages.evaluate_seconds(e, n, e.n_real, e.floor, inception_rate)
        + 15
    )


def training_minutes(s: DemoSettings, elapsed: float, after: float) -> float:
    """What the budget leaves for training after ``elapsed`` seconds spent and ``after``
    seconds still to come; at least :data:`MIN_TRAIN_MINUTES`."""
    return max(MIN_TRAIN_MINUTES, (60 * s.minutes - elapsed - after) / 60)


def inception_rate(timings: dict[str, float], floor: dict[str, Any] | None) -> float:
    """Images/s of the floor stage's Inception, when it ran in this call; else the default."""
    seconds = timings.get("floor") or 0.0
    n_fake, n_real = (floor or {}).get("n_fake"), (floor or {}).get("n_real")
    if seconds < 5 or not n_fake or not n_real:
        return stages.INCEPTION_IMAGES_PER_SECOND
    return max(0.5, (n_fake + n_real) / seconds)


def run_demo(
    out: str | os.PathLike[str],
    settings: DemoSettings | None = None,
    data: str | os.PathLike[str] | None = None,
    say: Callable[[str], None] = print,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the whole pipeline into ``out`` (a new or empty folder, or an earlier demo's);
    returns the summary (also ``out/summary.json``, :func:`summarize`)."""
    s = settings or DemoSettings()
    demo_run(s, 32, s.minutes)  # the training config's one-line error before anything is written
    out = layout.check_out(out, "demo")
    t_start = time.perf_counter()
    with lock.hold(out, "demo"):
        before = results.read_json(out / layout.DEMO_JSON) or {}
        same_budget = (before.get("settings") or {}).get("minutes") == s.minutes
        results.write_json(out / layout.DEMO_JSON, {"settings": s.to_dict()})  # the marker, first
        tools = Tools(Narrator(say, total=STAGES), progress=progress)
        spec = study_spec(out, s, data)
        dataset = ensure_data(spec, tools)
        ds = load_dataset(dataset)
        if not ds.labelled or "test" not in ds.splits:
            raise DiffscapeError(f"{ds.root}: the demo needs class labels and a test split")
        study = prepare_study(spec, dataset, tools, judge_needed=True)
        minutes = (same_budget and trained_minutes(s, ds, study)) or budget_training(
            s, ds, study, tools, t_start
        )
        run = demo_run(s, ds.size, minutes)
        (result,) = run_study(study, [run], tools)
        if not result.ok:
            raise DiffscapeError(f"the demo's {result.stage} stage failed: {result.error}")
        tools.narrator.start("report", eta=10)
        report = build_report(
            out, out / layout.REPORT_HTML, title="diffscape demo", overwrite=True
        )  # the demo's own page, redone
        tools.narrator.done()
        wall = time.perf_counter() - t_start
        summary = summarize(study, run, result, report, tools.narrator.timings, s, wall)
        results.write_json(out / layout.SUMMARY_JSON, summary)
    say(format_summary(summary))
    return summary


def trained_minutes(s: DemoSettings, ds: Any, study: Study) -> float | None:
    """The training minutes of a run finished by an earlier call with the same settings: a re-run
    keeps them (a budget computed anew would differ and redo the training)."""
    done = results.read_json(study.out / layout.DEMO_RUN / layout.TRAIN_JSON) or {}
    settings = done.get("settings") or {}
    minutes = ((settings.get("config") or {}).get("train") or {}).get("minutes")
    if not minutes:
        return None
    same = upgraded(settings) == train_identity(study, demo_run(s, ds.size, minutes))
    return minutes if same else None


def budget_training(s: DemoSettings, ds: Any, study: Study, tools: Tools, t_start: float) -> float:
    """Training's share of the demo's budget, said once."""
    rate = inception_rate(tools.narrator.timings, results.read_floor(study.out))
    after = after_training_seconds(s, len(ds.classes), rate)
    elapsed = time.perf_counter() - t_start
    minutes = training_minutes(s, elapsed, after)
    if minutes == MIN_TRAIN_MINUTES:
        tools.narrator.note(
            f"budget: {s.minutes:g} min is less than the other stages need (about "
            f"{duration(elapsed + after)}); training gets the minimum {duration(60 * minutes)}"
        )
    else:
        tools.narrator.note(
            f"budget: {s.minutes:g} min in all; {duration(elapsed)} spent, about {duration(after)} "
            f"needed after training: training gets {duration(60 * minutes)}"
        )
    return minutes


FLOOR_KEYS = ("fid", "kid", "n_fake", "n_real")  # what summary.json says of the floor


def summarize(
    study: Study,
    run: RunSpec,
    result: RunResult,
    report: Path,
    timings: dict[str, float],
    s: DemoSettings,
    wall_seconds: float,
) -> dict[str, Any]:
    """What the demo did and found (summary.json)."""
    trained = results.read_json(run.train_dir(study.out) / layout.TRAIN_JSON) or {}
    floor = results.read_floor(study.out)
    judge = (results.read_json(study.judge / layout.JUDGE_JSON) if study.judge else None) or {}
    samples = run.sample_dir(study.out)
    metrics = results.read_json(samples / layout.EVAL_JSON) or {}
    accuracy = results.read_json(samples / layout.ACCURACY_JSON) or {}
    return {
        "wall_seconds": wall_seconds,
        "timings_seconds": timings,
        "settings": s.to_dict(),
        "steps": result.steps,
        "train_images_per_second": trained.get("images_per_second"),
        "fid": metrics.get("fid"),
        "kid": metrics.get("kid"),
        "floor": None if floor is None else {k: floor.get(k) for k in FLOOR_KEYS},
        "n_fake": metrics.get("n_fake"),
        "n_real": metrics.get("n_real"),
        "judge_real_test_accuracy": (judge.get("accuracy") or {}).get("test"),
        "judge_sample_accuracy": accuracy.get("accuracy"),
        "judge_per_class": accuracy.get("per_class"),
        "paths": {
            "data": str(study.data),
            "run": str(run.train_dir(study.out)),
            "samples": str(samples),
            "grid": str(samples / layout.GRID_PNG),
            "judge": str(study.judge),
            "report": str(report),
        },
    }


def _kid(kid: dict | None) -> str:
    return "n/a" if not kid else f"{kid['mean']:.4f}"


def format_summary(summary: dict[str, Any]) -> str:
    p, floor = summary["paths"], summary["floor"] or {}
    classes = summary["judge_per_class"] or {}
    per = ", ".join(f"{c} {pct(v['accuracy'])}" for c, v in classes.items())
    fid, floor_fid, kid = summary["fid"], floor.get("fid"), summary["kid"]
    return "\n".join(
        [
            "",
            f"demo finished in {duration(summary['wall_seconds'])}",
            f"  judge accuracy of the samples: {pct(summary['judge_sample_accuracy'])} ({per})",
            f"  judge accuracy on real test images: {pct(summary['judge_real_test_accuracy'])}",
            f"  KID {_kid(kid)} ± {(kid or {}).get('std', float('nan')):.4f}  "
            f"(real-vs-real floor {_kid(floor.get('kid'))}); FID "
            f"{'n/a' if fid is None else f'{fid:.1f}'} (floor "
            f"{'n/a' if floor_fid is None else f'{floor_fid:.1f}'}) from {summary['n_fake']} "
            f"generated vs {summary['n_real']} real images: small n, compare with the floor, not "
            "with published FIDs",
            f"  samples: {p['grid']}",
            f"  report:  {p['report']}",
        ]
    )
