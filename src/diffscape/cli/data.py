"""``diffscape data {prepare,synth,show}``: make and look at dataset folders."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from diffscape.cli import add_out, add_overwrite, options
from diffscape.core.layout import MANIFEST, check_out

if TYPE_CHECKING:
    from diffscape.data.dataset import Dataset

OUT_HELP = (
    "dataset folder to write: a new or empty folder, or an older dataset (replaced once the new "
    "one is complete); anything else is refused"
)
SIZE_HELP = "image side in pixels: a multiple of 8 from 8 to 1024"  # dataset.MAX_SIZE
# Pillow's decompression-bomb limit, as diffscape.data.prepare.DEFAULT_MAX_PIXELS (not imported
# from there: that pulls in numpy and Pillow, and --help should stay instant).
MAX_PIXELS = 89_478_485

PREPARE_EXAMPLES = """\
examples:
  diffscape data prepare photos/ --out data/photos32
  diffscape data prepare archive.zip --size 64 --out data/landscapes64
  diffscape data prepare pics/ --test-fraction 0.2 --seed 1 --out data/pics

SRC layouts:
  SRC/<class>/*.jpg          class folders; a stratified test split is held out
  SRC/<split>/<class>/*.jpg  split folders, kept: train, training, "Training Data" -> train;
                             val, valid, validation, "Validation Data" -> val; test, testing,
                             "Testing Data" -> test (any case); wrapper folders above them
                             are fine (Kaggle's Landscape Recognition layout works as is)
  SRC/*.jpg                  unlabelled images; a test split is held out
  SRC.zip                    any of these, read without unpacking
Images are EXIF-rotated, made RGB (transparency over white), centre-cropped and resized.
Unreadable images are skipped and listed in manifest.json; other files are ignored.
Running it again on unchanged input with the same options does nothing.
"""

DATA_EXAMPLES = """\
examples:
  diffscape data prepare photos.zip --out data/photos32
  diffscape data synth --out data/synth
  diffscape data show data/photos32 --out grid.png
"""

SYNTH_EXAMPLES = """\
examples:
  diffscape data synth --out data/synth
  diffscape data synth --n 500 --size 64 --seed 3 --out data/synth64
"""

SHOW_EXAMPLES = """\
examples:
  diffscape data show data/photos32 --out grid.png
  diffscape data show data/photos32 --split test --per-class 12 --out test-grid.png
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser(
        "data",
        help="make and inspect dataset folders",
        description="Make dataset folders (prepare photos, synthesize landscapes) and look at them.",
        epilog=DATA_EXAMPLES,
    )
    data.set_defaults(func=lambda args: data.print_help() or 2)
    sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    _add_prepare(sub)
    _add_synth(sub)
    _add_show(sub)


def _add_prepare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prepare",
        help="photos (folder or .zip) -> dataset folder",
        description="Decode, EXIF-rotate, centre-crop and resize photos into a dataset folder\n"
        "(manifest.json + memory-mappable uint8 arrays per split).",
        epilog=PREPARE_EXAMPLES,
    )
    p.add_argument("src", metavar="SRC", help="folder or .zip of photos (never modified)")
    add_out(p, OUT_HELP)
    p.add_argument("--size", type=int, default=32, help=SIZE_HELP)
    p.add_argument(
        "--test-fraction",
        type=float,
        default=0.1,
        help="share of each class held out as test when SRC has no split folders (0 = none)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the held-out split")
    p.add_argument(
        "--max-pixels",
        type=int,
        default=MAX_PIXELS,
        help="skip images with more pixels than this (decompression bombs)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_overwrite(p, "a dataset --out made from other photos or options")
    p.set_defaults(func=_prepare)


def _add_synth(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser(
        "synth",
        help="procedural landscapes -> dataset folder",
        description="Generate a labelled dataset of procedural landscape images.",
        epilog=SYNTH_EXAMPLES,
    )
    add_out(s, OUT_HELP)
    s.add_argument(
        "--n", type=int, default=2500, help="number of images, all splits together (5 or more)"
    )
    s.add_argument("--size", type=int, default=32, help=SIZE_HELP)
    s.add_argument("--seed", type=int, default=0, help="seed: same seed, same images")
    s.add_argument("--test-fraction", type=float, default=0.2, help="share held out as test")
    add_overwrite(s, "a dataset --out")
    s.set_defaults(func=_synth)


def _add_show(sub: argparse._SubParsersAction) -> None:
    v = sub.add_parser(
        "show",
        help="dataset folder -> PNG with one row of samples per class",
        description="Draw random images of one split, one labelled row per class\n"
        "(class name and image count on the left).",
        epilog=SHOW_EXAMPLES,
    )
    v.add_argument("dataset", metavar="DIR", help="prepared dataset folder")
    add_out(v, "PNG file to write")
    v.add_argument("--split", default="train", help="split to draw from: train, val or test")
    v.add_argument("--per-class", type=int, default=8, help="images per class row, 1 to 100")
    v.add_argument("--seed", type=int, default=0, help="seed of the random choice of images")
    add_overwrite(v, "a picture --out")
    v.set_defaults(func=_show)


def _prepare(args: argparse.Namespace) -> None:
    from diffscape.data.prepare import prepare_dataset

    names = ("size", "test_fraction", "seed", "progress", "max_pixels", "overwrite")
    ds = prepare_dataset(args.src, args.out, **options(args, *names))
    print(summary(ds))


def _synth(args: argparse.Namespace) -> None:
    from diffscape.data.synth import synthesize

    ds = synthesize(**options(args, "n", "size", "out", "seed", "test_fraction", "overwrite"))
    print(summary(ds))


def _show(args: argparse.Namespace) -> None:
    from diffscape.data.dataset import load_dataset
    from diffscape.data.imagefolder import save_image
    from diffscape.data.show import show_dataset

    out = check_out(args.out, "image", overwrite=args.overwrite)
    ds = load_dataset(args.dataset)
    sheet = show_dataset(ds, split=args.split, per_class=args.per_class, seed=args.seed)
    save_image(sheet, out)
    rows = ds.num_classes or 1
    print(f"wrote {out}: {rows} rows of up to {args.per_class} {args.split} images")


def summary(ds: Dataset) -> str:
    """A few lines: where, image size, classes, and per split the count per class."""
    classes = ", ".join(ds.classes) if ds.labelled else "none (unlabelled)"
    lines = [f"dataset {ds.root}: {ds.size}x{ds.size} px, classes: {classes}"]
    for split in ds.splits:
        counts = ds.manifest["splits"][split]["counts"]
        per_class = ", ".join(f"{c} {n}" for c, n in counts.items())
        lines.append(
            f"  {split:5} {ds.count(split):6d}" + (f"  ({per_class})" if per_class else "")
        )
    if skipped := ds.manifest.get("skipped"):
        lines.append(f"  skipped {len(skipped)} file(s), listed in {ds.root / MANIFEST}")
    return "\n".join(lines)
