"""``diffscape train``: parse, resolve the config, call :func:`diffscape.train.train`."""

from __future__ import annotations

import argparse
import sys

from diffscape.cli import options
from diffscape.settings.flags import Flags
from diffscape.settings.sections import ModelConfig, TrainConfig

# On top of the preset and --set (so the defaults they show are the preset's).
MODEL_FLAGS = Flags(ModelConfig, ["conditional"], default="the preset's")
TRAIN_FLAGS = Flags(TrainConfig, ["steps", "minutes"], default="the preset's")

EPILOG = """\
examples:
  diffscape train data/synth --out runs/tiny --conditional
  diffscape train data/landscape32 --out runs/small --preset small --conditional \\
      --set train.steps=20000 --set model.activation=gelu
  diffscape train data/synth --out runs/tiny --resume          # continue after a stop
  diffscape train data/synth --out runs/tiny --minutes 10      # stop (and save) at 10 minutes
  diffscape train data/synth --out runs/x --set diffusion.schedule=cosine --dry-run
  accelerate launch --multi_gpu --num_processes 2 -m diffscape train data/synth --out runs/ddp

Settings (`--set section.key=value`, repeatable; docs/settings.md) are:
model.* (image_size, channels, layers_per_block, attention_resolutions, activation, dropout,
...), diffusion.* (schedule, timesteps, rescale_linear, prediction), train.* (steps,
batch_size, lr, warmup_steps, grad_clip, ema_decay, label_dropout, precision, seed,
checkpoint_every_steps, keep_last, sample_every_steps, log_every_steps, ...).
Stopping with Ctrl-C or SIGTERM saves a checkpoint; run the same command again to continue.
Only one `train` at a time writes into a run folder: a second one is refused (exit 2).
"""


def register(sub: argparse._SubParsersAction) -> None:
    from diffscape.settings.docs import describe_settings

    p = sub.add_parser(
        "train",
        help="train a DDPM on a prepared dataset",
        description="Train a DDPM (unconditional, or class-conditional with classifier-free "
        "guidance) on a prepared dataset folder. Writes config.json, metrics.jsonl, sample "
        "grids and checkpoints into the run folder.",
        epilog=EPILOG
        + "\nsettings, key=default:\n"
        + describe_settings("model", "diffusion", "train"),
    )
    p.add_argument("dataset", help="prepared dataset folder (data prepare / data synth)")
    p.add_argument("--out", required=True, help="run folder to write (or continue)")
    p.add_argument(
        "--preset",
        default="tiny",
        help="tiny, small (CPU, 32 px), base (32 px), base64 (64 px), or a .toml file",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one setting, e.g. train.lr=1e-4 (repeatable)",
    )
    MODEL_FLAGS.add_to(p)
    TRAIN_FLAGS.add_to(p)
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--resume", action="store_true", help="require a checkpoint in --out and continue it"
    )
    group.add_argument(
        "--fresh",
        action="store_true",
        help="refuse to continue: fail if --out already holds checkpoints",
    )
    p.add_argument("--cpu", action="store_true", help="train on the CPU even if a GPU is present")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from diffscape.data.dataset import load_dataset
    from diffscape.settings.presets import resolve
    from diffscape.train import TrainingInterrupted, prepare_config, train

    # preset <- --set overrides <- the flags (typed values, straight into their fields)
    cfg = resolve(args.preset, args.overrides)
    model, train_cfg = MODEL_FLAGS.build(args, cfg.model), TRAIN_FLAGS.build(args, cfg.train)
    cfg = cfg.with_changes(model=model, train=train_cfg)
    ds = load_dataset(args.dataset)  # once: train() takes it as loaded
    if args.dry_run:
        sys.stdout.write(prepare_config(cfg, ds).to_json())
        return 0
    resume = True if args.resume else (False if args.fresh else None)
    cpu = args.cpu or None  # no --cpu: train() picks the device
    try:
        result = train(cfg, ds, args.out, resume=resume, cpu=cpu, **options(args, "progress"))
    except TrainingInterrupted as e:
        print(f"diffscape: {e}", file=sys.stderr)
        return 128 + int(e.signum)  # the shell convention for "killed by signal N"
    if not result.main_process:
        return 0
    budget = " (stopped by the --minutes budget)" if result.stopped_by == "budget" else ""
    print(
        f"trained {result.steps} steps{budget} ({result.parameters / 1e6:.2f}M parameters, "
        f"{result.images_per_second:.1f} img/s, {result.seconds:.0f} s, "
        f"{result.skipped_steps} skipped, {result.processes} process(es), malloc: "
        f"{result.allocator}); "
        f"checkpoint: {result.final_checkpoint}"
    )
    return 0
