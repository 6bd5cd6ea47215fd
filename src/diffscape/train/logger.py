from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.tracking import GeneralTracker

from diffscape.checkpoint import TrainingState
from diffscape.core import atomic, layout
from diffscape.core.timefmt import duration
from diffscape.settings.engine import ConfigError
from diffscape.settings.sections import RunConfig
from diffscape.train.step import StepResult
from diffscape.train.threads import CoreSharing

TRACKED = ("loss", "lr", "grad_norm", "images_per_second")  # logged to the tracker as train/KEY


def trackers(cfg: RunConfig, run_dir: Path) -> list[GeneralTracker]:
    """The Accelerate tracker of ``train.log_with`` for this run (main process only).

    tensorboard: RUN/tensorboard/ as before, nothing when the package is not installed (an
    optional extra); wandb and mlflow: refused in one line when not installed. Built here rather
    than named in ``Accelerator(log_with=...)`` to choose their places: Accelerate would give
    MLflow the run folder as the whole experiment's artifact store."""
    name = cfg.train.log_with
    if name == "off":
        return []
    try:
        __import__(name)
    except ImportError:
        if name == "tensorboard":
            return []
        raise ConfigError(
            f"train.log_with={name} needs the {name} package: pip install 'diffscape[{name}]'"
        ) from None
    from accelerate.tracking import MLflowTracker, TensorBoardTracker, WandBTracker

    if name == "tensorboard":
        return [TensorBoardTracker(layout.TENSORBOARD, run_dir)]
    if name == "wandb":
        return [WandBTracker("diffscape", dir=str(run_dir), name=run_dir.name)]
    return [MLflowTracker("diffscape", run_name=run_dir.name)]


def tracker_config(cfg: RunConfig) -> dict[str, str | int | float | bool] | None:
    """The run's config as flat parameters (``model.channels``: "[32, 64, 64]"); None for
    TensorBoard, whose hparams would add files that runs never had (config.json is beside)."""
    if cfg.train.log_with == "tensorboard":
        return None
    flat = {}
    for section, values in cfg.model_dump(mode="json").items():
        for key, value in values.items() if isinstance(values, dict) else [("", values)]:
            name = f"{section}.{key}" if key else section
            flat[name] = value if isinstance(value, str | int | float | bool) else json.dumps(value)
    return flat


class TrainLogger:
    """metrics.jsonl, the tracker, the progress bar and the ``on_log`` callback.

    Losses are averaged over a window of ``train.log_every_steps`` good steps; skipped steps get
    their own record. Steps are only queued as they come; :meth:`settle` reads their flags (the
    one host sync of a window) when a record, a checkpoint or a stop is due. Every process keeps
    the window (its losses are already reduced); only the main process writes."""

    def __init__(
        self, run_dir: Path, cfg: RunConfig, accelerator: Accelerator, *, step: int,
        progress: bool, on_log: Callable[[dict], None] | None,
    ) -> None:  # fmt: skip
        self.path = run_dir / layout.METRICS_JSONL
        self.cfg, self.on_log, self.accelerator = cfg, on_log, accelerator
        self.main, self.world = accelerator.is_main_process, accelerator.num_processes
        # the trackers given to the Accelerator by train.setup.make_accelerator (main only)
        accelerator.init_trackers("diffscape", config=tracker_config(cfg))
        self.bar = None
        # With a wall-clock budget the bar counts seconds of it (the step cap is usually far
        # away and its ETA meaningless); otherwise it counts steps.
        self.budget_seconds = cfg.train.minutes * 60
        self.loss_text = ""
        if progress and self.main:
            from tqdm.auto import tqdm

            if self.budget_seconds:
                self.bar = tqdm(total=round(self.budget_seconds), desc="train (budget)", unit="s",
                                dynamic_ncols=True, bar_format="{l_bar}{bar}| {n:.0f}/{total} s "
                                "[{elapsed}<{remaining}{postfix}]")  # fmt: skip
            else:
                self.bar = tqdm(total=cfg.train.steps, initial=step, desc="train", unit="step",
                                dynamic_ncols=True)  # fmt: skip
        self._window_reset()
        self.cores = CoreSharing(cfg.train.threads, accelerator.device, self._say)  # says
        self.told_pace = False  # the one-time "at X img/s this takes about ..." line
        self.last_grad_norm: torch.Tensor | float = float("nan")
        self.pending: list[tuple[int, StepResult]] = []  # (step after it, result), unread

    def _window_reset(self) -> None:
        self.window_loss: torch.Tensor | float = 0.0
        self.window_steps = 0
        self.window_t0 = time.perf_counter()

    def step(self, state: TrainingState, result: StepResult) -> None:
        """Queue one step (nothing is read from the device here), move the progress bar and
        share the cores (:class:`~diffscape.train.threads.CoreSharing`)."""
        self.pending.append((state.step, result))
        self.cores.check()
        if self.bar is None:
            return
        if self.budget_seconds:
            spent = min(self.budget_seconds, state.seconds)  # the run's, over every call
            self.bar.set_postfix_str(f"step {state.step}{self.loss_text}", refresh=False)
            self.bar.update(max(0.0, spent - self.bar.n))
        else:
            self.bar.update(1)

    def settle(self, state: TrainingState, max_bad_steps: int) -> int | None:
        """Read the queued steps' finite flags (one host sync): good steps go into the window,
        skipped ones get their record and ``state``'s counters. Returns the first step at which
        ``max_bad_steps`` non-finite steps in a row were reached, or None."""
        if not self.pending:
            return None
        flags = torch.stack([r.finite for _, r in self.pending]).tolist()
        gave_up = None
        for (step, result), ok in zip(self.pending, flags, strict=True):
            if ok:
                self.window_loss = self.window_loss + result.loss
                self.window_steps += 1
                self.last_grad_norm = result.grad_norm
                state.bad_steps_in_a_row = 0
                continue
            state.bad_steps_in_a_row += 1
            state.skipped_steps += 1
            if state.bad_steps_in_a_row >= max_bad_steps and gave_up is None:
                gave_up = step
            if self.main:
                _append_jsonl(self.path, {"step": step, "skipped": True,
                                          "loss": _num(result.loss),
                                          "grad_norm": _num(result.grad_norm),
                                          "skipped_steps": state.skipped_steps})  # fmt: skip
        self.pending.clear()
        return gave_up

    def due(self, step: int) -> bool:
        return step % self.cfg.train.log_every_steps == 0 or step == self.cfg.train.steps

    def log(self, state: TrainingState, lr: float, stopped_by: str | None = None) -> None:
        """Write the window's record (and close the window)."""
        t = self.cfg.train
        elapsed = time.perf_counter() - self.window_t0
        record = {
            "step": state.step,
            "loss": float(self.window_loss) / max(1, self.window_steps),
            "lr": lr,
            "grad_norm": _num(self.last_grad_norm),
            "images_per_second": self.window_steps * t.batch_size / max(elapsed, 1e-9),
            "skipped_steps": state.skipped_steps,
            "processes": self.world,
            "seconds": state.seconds,  # trained by the run so far, over every call
        }
        if stopped_by is not None:
            record["stopped_by"] = stopped_by
        if self.main and stopped_by == "budget":
            msg = (f"train: the budget ({duration(60 * t.minutes)}) ended training after step "
                   f"{state.step}; saving a checkpoint (continue with --resume)")  # fmt: skip
            self._say(msg)
        if self.main and not self.told_pace and stopped_by is None and self.window_steps:
            self.told_pace = True
            note = pace_note(t.steps, t.minutes, state.step, record["images_per_second"] / t.batch_size,
                             record["seconds"])  # fmt: skip
            self._say(note)
        if self.main:
            _append_jsonl(self.path, record)
            tracked = {f"train/{k}": record[k] for k in TRACKED if record[k] is not None}
            self.accelerator.log(tracked, step=state.step)
            self.loss_text = f", loss={record['loss']:.4f}"
            if self.bar is not None and not self.budget_seconds:
                self.bar.set_postfix_str(self.loss_text[2:], refresh=False)
            if self.on_log is not None:
                self.on_log(record)
        self._window_reset()

    def image(self, path: Path, step: int) -> None:
        """A sample grid to the tracker: an MLflow artifact, a W&B image (TensorBoard: none,
        the grids are PNGs in the run folder)."""
        for tracker in self.accelerator.trackers:
            if tracker.name == "mlflow":
                tracker.log_artifact(str(path))
            elif tracker.name == "wandb":
                from PIL import Image

                tracker.log_images({"samples": [Image.open(path)]}, step=step)

    def _say(self, line: str) -> None:
        if self.main:
            (self.bar.write if self.bar is not None else print)(line, file=sys.stderr)

    def close(self) -> None:
        self.cores.close()
        if self.bar is not None:
            self.bar.close()
        self.accelerator.end_training()  # closes the trackers' runs


def pace_note(steps: int, minutes: float, step: int, steps_per_second: float, spent: float) -> str:
    """The one line that says, from the first logging window's speed, how long the run will
    take: to ``steps``, or how many steps the ``minutes`` budget will reach."""
    to_cap = (steps - step) / steps_per_second
    if minutes and spent + to_cap > 60 * minutes:
        reach = step + int(steps_per_second * max(0.0, 60 * minutes - spent))
        return (
            f"train: at {steps_per_second:.2f} steps/s the budget of {duration(60 * minutes)} "
            f"reaches about step {reach} of train.steps={steps}"
        )
    hint = "" if minutes else "; --minutes M stops earlier, saved and resumable"
    return f"train: at {steps_per_second:.2f} steps/s the {steps - step} steps to go take about {duration(to_cap)}{hint}"


def _num(x: torch.Tensor | float) -> float | None:
    v = float(x)
    return v if math.isfinite(v) else None


def _append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop log lines written after the checkpoint we continue from, so the log
    reads as one uninterrupted run."""
    if not path.exists():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln and json.loads(ln)["step"] <= step]
    atomic.write_text(path, "".join(ln + "\n" for ln in keep))
