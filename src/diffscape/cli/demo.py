"""``diffscape demo``: the whole pipeline on built-in data, sized for a CPU."""

from __future__ import annotations

import argparse

from diffscape.settings.flags import Flags
from diffscape.settings.sections import DemoSettings

DEMO_FLAGS = Flags(DemoSettings)  # its sampling and evaluation are not flags

EPILOG = """\
examples:
  diffscape demo                          # 9 minutes in all, whatever the CPU
  diffscape demo --minutes 2 --out /tmp/quick
  diffscape demo --minutes 30             # the same, training ~25 of the 30 minutes
  diffscape demo --data data/landscape32  # the same pipeline on a prepared real dataset

Stages: procedural landscapes -> CNN judge on the real training images -> real-vs-real floor
-> train a conditional DDPM -> sample every class -> FID/KID against the test split -> judge
the samples -> report.html, all within --minutes: training stops at the deadline that leaves
the later stages their estimated time (printed before training starts). Running it again does only what is
missing: with the same settings nothing is redone; changed settings redo what they affect.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="the whole pipeline on built-in landscapes, in minutes on a CPU",
        description="Synthesize landscapes, train a small conditional diffusion model, sample "
        "every class, evaluate, judge, and write an HTML report.",
        epilog=EPILOG,
    )
    p.add_argument("--out", default="diffscape-demo", help="folder for everything the demo writes")
    p.add_argument("--data", help="a prepared dataset instead of the built-in one")
    DEMO_FLAGS.add_to(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from diffscape.study.demo import run_demo

    s = DEMO_FLAGS.build(args)
    if hasattr(args, DEMO_FLAGS.dest("seed")):  # the command's --seed seeds the images too
        s = s.with_changes(sample={"seed": s.seed})
    run_demo(args.out, s, data=args.data, progress=not args.no_progress)
