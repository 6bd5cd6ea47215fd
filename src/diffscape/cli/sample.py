"""``diffscape sample`` / ``export`` / ``interpolate``: generation from a run or checkpoint."""

from __future__ import annotations

import argparse

from diffscape.cli import add_overwrite, options
from diffscape.settings.flags import Flags
from diffscape.settings.sections import SampleSettings

SAMPLE_FLAGS = Flags(SampleSettings)
# interpolate: one row from two seeds (--seeds), deterministic samplers only (ddpm is refused)
INTERPOLATE_FLAGS = Flags(SampleSettings, ["sampler", "steps", "guidance"])

SAMPLE_EPILOG = """\
examples:
  diffscape sample runs/tiny --n 20 --per-class --out samples/tiny
  diffscape sample runs/tiny --n 8 --class Glacier,Coast --guidance 3 --out samples/g3
  diffscape sample runs/tiny --sampler dpm --steps 20 --n 100 --per-class --out samples/dpm20
  diffscape sample runs/tiny/checkpoints/step-0002000 --sampler ddpm --n 4 --out samples/ddpm

Images go to OUT/<class>/<index>.png (OUT/unconditional/ for unconditional models), with
grid.png and samples.json. An image depends only on (seed, class, index): the same seed gives
the same images whatever --batch is. OUT is written as a whole (nothing half-written if
interrupted); an existing samples folder is replaced only with --overwrite, never merged.
Without --steps, ddim and dpm take 50 steps, or T if the model has fewer noise levels.
"""


def register(sub: argparse._SubParsersAction) -> None:

    p = sub.add_parser(
        "sample",
        help="generate images from a run or checkpoint",
        description="Generate images with DDPM, DDIM or DPM-Solver++, with classifier-free "
        "guidance for conditional models.",
        epilog=SAMPLE_EPILOG,
    )
    p.add_argument("source", help="run folder (latest checkpoint) or a checkpoint folder")
    p.add_argument("--out", required=True, help="folder to write (new, empty, or older samples)")
    add_overwrite(p, "a samples folder --out")
    p.add_argument("--per-class", action="store_true", help="--n images for every class")
    p.add_argument("--class", dest="classes", help="comma-separated class names, or all")
    SAMPLE_FLAGS.add_to(p)
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_sample)

    e = sub.add_parser(
        "export",
        help="write a folder that diffusers loads",
        description="Export a run's (EMA) UNet and its noise scheduler as a diffusers folder: "
        "unet/ (UNet2DModel.from_pretrained) and scheduler/ (DDPMScheduler.from_pretrained).",
        epilog="example:\n  diffscape export runs/tiny --out exported/tiny",
    )
    e.add_argument("source", help="run folder or checkpoint folder")
    e.add_argument("--out", required=True, help="folder to write")
    e.add_argument("--no-ema", action="store_true", help="export the raw weights instead")
    add_overwrite(e, "an export folder --out")
    e.set_defaults(func=run_export)

    i = sub.add_parser(
        "interpolate",
        help="a row of images between two seeds (slerp of the starting noise)",
        description="Walk the starting noise from one seed to another (spherical interpolation) "
        "and denoise each point deterministically, to see how smooth the model is.",
        epilog="example:\n  diffscape interpolate runs/tiny --seeds 1 2 --class Glacier --out walk.png",
    )
    i.add_argument("source", help="run folder or checkpoint folder")
    i.add_argument(
        "--seeds",
        nargs=2,
        default=("0", "1"),
        metavar=("A", "B"),
        help="the two seeds (sample.seed's bounds)",
    )
    i.add_argument("--frames", type=int, default=8, help="images in the row, at least 2")
    i.add_argument("--class", dest="class_name", help="class (conditional models)")
    INTERPOLATE_FLAGS.add_to(i)
    i.add_argument("--out", required=True, help="PNG file to write")
    add_overwrite(i, "a PNG --out")
    i.set_defaults(func=run_interpolate)


def parse_classes(text: str | None) -> list[str] | None:
    if text is None or text.strip().lower() == "all":
        return None
    return [c.strip() for c in text.split(",") if c.strip()]


def run_sample(args: argparse.Namespace) -> None:
    from diffscape.sample import sample_to_folder

    record = sample_to_folder(
        args.source,
        args.out,
        SAMPLE_FLAGS.build(args),
        classes=parse_classes(args.classes),
        use_ema=not args.no_ema,
        **options(args, "per_class", "progress", "overwrite"),
    )
    counts = ", ".join(f"{k} {v}" for k, v in record["counts"].items())
    print(f"wrote {record['n']} images ({counts}) and grid.png to {args.out}")


def run_export(args: argparse.Namespace) -> None:
    from diffscape.sample import export_diffusers

    out = export_diffusers(args.source, args.out, use_ema=not args.no_ema, overwrite=args.overwrite)
    print(f"exported to {out} (unet/, scheduler/)")


def run_interpolate(args: argparse.Namespace) -> None:
    from diffscape.sample import interpolate
    from diffscape.settings.engine import ConfigError, parse_text

    settings = INTERPOLATE_FLAGS.values(args)
    seeds = []
    for text in args.seeds:
        try:
            seeds.append(SampleSettings(seed=parse_text(text)).seed)
        except ConfigError as e:
            raise e.naming(f"--seeds {text}") from None
    interpolate(
        args.source,
        args.out,
        seed_a=seeds[0],
        seed_b=seeds[1],
        **settings,
        **options(args, "frames", "class_name", "overwrite"),
    )
    print(f"wrote {args.out}")
