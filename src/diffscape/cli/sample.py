"""``diffscape sample`` / ``export`` / ``interpolate``: generation from a run or checkpoint."""

from __future__ import annotations

import argparse

SAMPLE_EPILOG = """\
examples:
  diffscape sample runs/tiny --n 20 --per-class --out samples/tiny
  diffscape sample runs/tiny --n 8 --class Glacier,Coast --guidance 3 --out samples/g3
  diffscape sample runs/tiny --sampler dpm --steps 20 --n 100 --per-class --out samples/dpm20
  diffscape sample runs/tiny/checkpoints/step-0002000 --sampler ddpm --n 4 --out samples/ddpm

Images go to OUT/<class>/<index>.png (OUT/unconditional/ for unconditional models), with
grid.png and samples.json. An image depends only on (seed, class, index): the same seed gives
the same images whatever --batch is.
"""


def add_sampler_args(p: argparse.ArgumentParser) -> None:
    """Sampler options shared with `evaluate` when it samples from a run itself."""
    p.add_argument(
        "--sampler",
        choices=("ddpm", "ddim", "dpm"),
        default="ddim",
        help="ddpm: ancestral, all T steps; ddim; dpm: DPM-Solver++ (2M)",
    )
    p.add_argument("--steps", type=int, default=50, help="steps for ddim/dpm (ddpm uses all T)")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta (0 = deterministic)")
    p.add_argument(
        "--guidance",
        type=float,
        default=None,
        help="classifier-free guidance w: 0 unconditional, 1 conditional (default), >1 guided",
    )
    p.add_argument("--seed", type=int, default=0, help="images depend only on (seed, class, index)")
    p.add_argument(
        "--batch", type=int, default=None, help="images per batch (default: 64 CPU, 256 GPU)"
    )
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")


def register(sub: argparse._SubParsersAction) -> None:
    from diffscape.cli import HelpFormatter

    p = sub.add_parser(
        "sample",
        help="generate images from a run or checkpoint",
        description="Generate images with DDPM, DDIM or DPM-Solver++, with classifier-free "
        "guidance for conditional models.",
        epilog=SAMPLE_EPILOG,
        formatter_class=HelpFormatter,
    )
    p.add_argument("source", help="run folder (latest checkpoint) or a checkpoint folder")
    p.add_argument("--out", required=True, help="folder to write images into")
    p.add_argument("--n", type=int, default=16, help="images in total (per class with --per-class)")
    p.add_argument("--per-class", action="store_true", help="--n images for every class")
    p.add_argument(
        "--class", dest="classes", default=None, help="comma-separated class names, or all"
    )
    add_sampler_args(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_sample)

    e = sub.add_parser(
        "export",
        help="write a folder that diffusers loads",
        description="Export a run's (EMA) UNet and its noise scheduler as a diffusers folder: "
        "unet/ (UNet2DModel.from_pretrained) and scheduler/ (DDPMScheduler.from_pretrained).",
        epilog="example:\n  diffscape export runs/tiny --out exported/tiny",
        formatter_class=HelpFormatter,
    )
    e.add_argument("source", help="run folder or checkpoint folder")
    e.add_argument("--out", required=True, help="folder to write")
    e.add_argument("--no-ema", action="store_true", help="export the raw weights instead")
    e.set_defaults(func=run_export)

    i = sub.add_parser(
        "interpolate",
        help="a row of images between two seeds (slerp of the starting noise)",
        description="Walk the starting noise from one seed to another (spherical interpolation) "
        "and denoise each point deterministically, to see how smooth the model is.",
        epilog="example:\n  diffscape interpolate runs/tiny --seeds 1 2 --class Glacier --out walk.png",
        formatter_class=HelpFormatter,
    )
    i.add_argument("source", help="run folder or checkpoint folder")
    i.add_argument("--seeds", type=int, nargs=2, default=(0, 1), metavar=("A", "B"))
    i.add_argument("--frames", type=int, default=8, help="images in the row")
    i.add_argument("--class", dest="class_name", default=None, help="class (conditional models)")
    i.add_argument("--sampler", choices=("ddim", "dpm"), default="ddim")
    i.add_argument("--steps", type=int, default=50)
    i.add_argument("--guidance", type=float, default=1.0)
    i.add_argument("--out", required=True, help="PNG to write")
    i.set_defaults(func=run_interpolate)


def parse_classes(text: str | None) -> list[str] | None:
    if text is None or text.strip().lower() == "all":
        return None
    return [c.strip() for c in text.split(",") if c.strip()]


def run_sample(args: argparse.Namespace) -> int:
    from diffscape.sample import sample_to_folder

    record = sample_to_folder(
        args.source,
        args.out,
        n=args.n,
        per_class=args.per_class,
        classes=parse_classes(args.classes),
        sampler=args.sampler,
        steps=args.steps,
        eta=args.eta,
        guidance=args.guidance,
        seed=args.seed,
        batch=args.batch,
        use_ema=not args.no_ema,
        progress=not args.no_progress,
    )
    counts = ", ".join(f"{k} {v}" for k, v in record["counts"].items())
    print(f"wrote {record['n']} images ({counts}) and grid.png to {args.out}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from diffscape.sample import export_diffusers

    out = export_diffusers(args.source, args.out, use_ema=not args.no_ema)
    print(f"exported to {out} (unet/, scheduler/)")
    return 0


def run_interpolate(args: argparse.Namespace) -> int:
    from diffscape.sample import interpolate

    interpolate(
        args.source,
        args.out,
        seed_a=args.seeds[0],
        seed_b=args.seeds[1],
        frames=args.frames,
        class_name=args.class_name,
        sampler=args.sampler,
        steps=args.steps,
        guidance=args.guidance,
    )
    print(f"wrote {args.out}")
    return 0
