"""``diffscape judge {train,score,cas}``: classifiers that check generated images' classes."""

from __future__ import annotations

import argparse
from pathlib import Path

from diffscape.cli import add_out, add_overwrite, options
from diffscape.core import layout
from diffscape.settings.engine import value_text
from diffscape.settings.flags import Flags
from diffscape.settings.sections import JUDGE_VAL_FRACTION, CNNSettings, JudgeSettings, SVCSettings

KIND_FLAGS = Flags(JudgeSettings, ["kind"])
CNN_FLAGS = Flags(CNNSettings, rename={"max_epochs": "epochs", "patience_epochs": "patience"})
SVC_FLAGS = Flags(SVCSettings)
GRID_C = value_text(SVCSettings.model_fields["grid_C"].default)
GRID_GAMMA = value_text(SVCSettings.model_fields["grid_gamma"].default)

TRAIN_EXAMPLES = f"""\
examples:
  diffscape judge train data/synth --kind cnn --out judges/synth-cnn
  diffscape judge train data/photos32 --kind svc --grid --out judges/photos-svc
  diffscape judge train data/photos64 --kind svc --size 32 --out judges/photos-svc32

Validation (early stopping for the CNN, (C, gamma) choice for the SVC grid) uses the dataset's
val split, or --val-fraction of each class of train, held out with --seed, when it has none. The
test split is only measured. The SVC grid is the report's: C in {GRID_C} x gamma in
{GRID_GAMMA}, on pixels / 255 (z-scored per pixel with --standardize).
Writes JUDGE/judge.json (kind, classes, size, accuracies, settings) and the model
(model.skops or model.safetensors; neither is ever unpickled).
"""

SCORE_EXAMPLES = """\
examples:
  diffscape judge score judges/synth-cnn samples/a
  diffscape judge score judges/synth-cnn samples/a --real data/synth:test --out reports/a

SAMPLES holds SAMPLES/<class>/<i>.png (as `diffscape sample --per-class` writes); each image is
counted correct when the judge predicts the class of its folder. Folder names must be the
judge's classes. Writes accuracy.json, confusion.json and confusion.png. A generated accuracy far
above the judge's real test accuracy usually means the samples are less varied than real photos,
not better.
"""

CAS_EXAMPLES = """\
examples:
  diffscape judge cas samples/a data/synth
  diffscape judge cas samples/a data/photos32:test --out reports/a --seed 1

Classification Accuracy Score (Ravuri & Vinyals, 2019): the judge CNN is trained on the
generated images only and tested on real test images, beside the same CNN trained on as many
real training images per class. Close to the real baseline = samples right and varied; near
chance (1 / classes) = the samples teach nothing about the real classes. Writes cas.json.
"""

# the group's: the first example of each command
JUDGE_EXAMPLES = "examples:\n" + "".join(
    e.splitlines(keepends=True)[1] for e in (TRAIN_EXAMPLES, SCORE_EXAMPLES, CAS_EXAMPLES)
)


def _add_cnn_options(p: argparse.ArgumentParser, val_help: str) -> None:
    CNN_FLAGS.add_to(p, "the CNN (cnn.* in docs/settings.md)")
    p.add_argument(
        "--val-fraction", type=float, default=JUDGE_VAL_FRACTION, help=val_help + ", in (0, 1)"
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seeds hold-out, weights, order, augmentation"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def register(subparsers: argparse._SubParsersAction) -> None:
    judge = subparsers.add_parser(
        "judge",
        help="train class judges, score samples against them, CAS",
        description="Classifiers trained on real images that check whether generated images "
        "belong to the class\nthey were requested as, and the Classification Accuracy Score.",
        epilog=JUDGE_EXAMPLES,
    )
    judge.set_defaults(func=lambda args: judge.print_help() or 2)
    sub = judge.add_subparsers(dest="judge_command", metavar="SUBCOMMAND")
    _add_train(sub)
    _add_score(sub)
    _add_cas(sub)


def _add_train(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser(
        "train",
        help="dataset folder -> judge folder (SVC or small CNN)",
        description="Train a judge on a dataset's train split: an RBF SVC on raw pixels (the "
        "report's judge)\nor a small CNN with augmentation and early stopping (much better on "
        "photos).",
        epilog=TRAIN_EXAMPLES,
    )
    t.add_argument("dataset", metavar="DATASET", help="dataset folder (data prepare / data synth)")
    KIND_FLAGS.add_to(t)
    add_out(t, "judge folder to write: new, empty or an older judge")
    t.add_argument("--grid", action="store_true", help="SVC: search the report's (C, gamma) grid")
    t.add_argument(
        "--size",
        type=int,
        default=argparse.SUPPRESS,  # None would print "(default: None)"
        help="resize images to this side (default: the dataset's size)",
    )
    SVC_FLAGS.add_to(t, "the SVC (svc.* in docs/settings.md)")
    _add_cnn_options(t, "share of each class held out for validation when there is no val split")
    add_overwrite(t, "a judge folder --out")
    t.set_defaults(func=_train)


def _add_score(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser(
        "score",
        help="judge + samples folder -> accuracy per class, confusion matrix",
        description="Classify generated images with a judge and compare with the class each was "
        "requested as.",
        epilog=SCORE_EXAMPLES,
    )
    s.add_argument("judge", metavar="JUDGE", help="judge folder (judge train)")
    s.add_argument("samples", metavar="SAMPLES", help="samples folder: SAMPLES/<class>/<i>.png")
    s.add_argument(
        "--real",
        metavar="DATASET[:SPLIT]",
        default=argparse.SUPPRESS,
        help="recompute the judge's real accuracy on this split (default split test) "
        "(default: the test accuracy recorded in judge.json)",
    )
    s.add_argument(
        "--out", default=argparse.SUPPRESS, help="folder for the results (default: SAMPLES)"
    )
    add_overwrite(s, "accuracy.json, confusion.json and confusion.png")
    s.set_defaults(func=_score)


def _add_cas(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser(
        "cas",
        help="Classification Accuracy Score: train on samples, test on real",
        description="Train the judge CNN on generated images only, test it on real test images, "
        "and compare\nwith the same CNN trained on an equal number of real images.",
        epilog=CAS_EXAMPLES,
    )
    c.add_argument("samples", metavar="SAMPLES", help="samples folder: SAMPLES/<class>/<i>.png")
    c.add_argument(
        "dataset",
        metavar="DATASET[:SPLIT]",
        help="real dataset: scored on SPLIT (default test), baseline drawn from train",
    )
    c.add_argument(
        "--out", default=argparse.SUPPRESS, help="folder for cas.json (default: SAMPLES)"
    )
    _add_cnn_options(c, "share of each class of each training set held out for early stopping")
    add_overwrite(c, layout.CAS_JSON)
    c.set_defaults(func=_cas)


def _train(args: argparse.Namespace) -> None:
    from diffscape.judge.svc import format_grid
    from diffscape.judge.train import train_judge

    kind, cnn, svc = KIND_FLAGS.build(args).kind, CNN_FLAGS.build(args), SVC_FLAGS.build(args)
    names = ("grid", "seed", "size", "val_fraction", "progress", "overwrite")
    result = train_judge(args.dataset, kind, args.out, svc=svc, cnn=cnn, **options(args, *names))
    if result.grid:
        selected = result.info["selected"]
        best = next(r for r in result.grid if (r.C, r.gamma) == (selected["C"], selected["gamma"]))
        print(format_grid(result.grid, best))
    acc = result.accuracy
    parts = [f"{k} {100 * v:.1f}%" for k, v in acc.items() if v is not None]
    print(f"{result.kind} judge -> {result.judge_dir}: accuracy " + ", ".join(parts))


def _score(args: argparse.Namespace) -> None:
    from diffscape.judge.score import format_score, score

    result = score(args.judge, args.samples, **options(args, "real", "out", "overwrite"))
    print(format_score(result))
    print(f"wrote accuracy.json, confusion.json, confusion.png to {Path(result_dir(args))}")


def _cas(args: argparse.Namespace) -> None:
    from diffscape.judge.cas import cas, format_cas

    names = ("out", "seed", "val_fraction", "progress", "overwrite")
    result = cas(
        args.samples, args.dataset, settings=CNN_FLAGS.build(args), **options(args, *names)
    )
    print(format_cas(result))
    print(f"wrote {Path(result_dir(args)) / layout.CAS_JSON}")


def result_dir(args: argparse.Namespace) -> str:
    """Where score and cas write: --out, else the samples folder."""
    return getattr(args, "out", None) or args.samples
