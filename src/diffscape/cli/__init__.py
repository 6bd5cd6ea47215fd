"""The ``diffscape`` command line. It only parses arguments and calls library functions.

Each command group lives in its own module exposing ``register(subparsers)``; heavy libraries
(torch, diffusers, ...) are imported inside the handlers so that ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Any, NoReturn

from diffscape.core.allocator import restart_with_tcmalloc
from diffscape.core.atomic import is_disk_full
from diffscape.core.errors import DiffscapeError

# Modules that register subcommands, in the order `diffscape --help` lists them.
COMMAND_MODULES = (
    "data",
    "train",
    "sample",
    "evaluate",
    "judge",
    "sweep",
    "demo",
)


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the hand-wrapped examples in descriptions and shows every default."""


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (argparse prints the whole usage first) and
    whose help is :class:`HelpFormatter`'s; sub-commands inherit it through ``add_subparsers``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, formatter_class=HelpFormatter, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {_one_line(message)} (see {self.prog} --help)\n")


def add_overwrite(p: argparse.ArgumentParser, what: str) -> None:
    """--overwrite, worded the same for every command (the rule:
    diffscape.core.layout.check_out)."""
    p.add_argument(
        "--overwrite",
        action="store_true",
        help=f"replace {what} written before by diffscape (anything diffscape did not write is "
        "never replaced)",
    )


def add_out(p: argparse.ArgumentParser, what: str) -> None:
    """A required --out; its help says what it is, with no "(default: None)"."""
    p.add_argument("--out", required=True, default=argparse.SUPPRESS, help=what)


def options(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    """The options ``names`` as a library call's keyword arguments: None for an option that was
    not given and has no default; ``progress`` is the opposite of --no-progress."""
    values = {name: getattr(args, name, None) for name in names}
    if "progress" in values:
        values["progress"] = not args.no_progress
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="diffscape",
        description=(
            "Train, sample and judge small-image diffusion models.\n\n"
            "Typical flow:\n"
            "  diffscape data synth --out data/synth          # or: data prepare photos.zip\n"
            "  diffscape train data/synth --out runs/a --conditional\n"
            "  diffscape sample runs/a --n 20 --per-class --out samples/a\n"
            "  diffscape evaluate --real data/synth:test --fake samples/a\n"
            "  diffscape demo                                 # all of it, in minutes on a CPU\n"
        ),
    )
    from diffscape import __version__

    parser.add_argument("--version", action="version", version=f"diffscape {__version__}")
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show the full traceback of any error (also after the command, or set "
        "DIFFSCAPE_DEBUG=1)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"diffscape.cli.{name}").register(sub)
    return parser


SPINNING = ("train", "demo")  # commands whose training shares the cores by the load


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # the command line itself, not a call from Python: tcmalloc before torch
        restart_with_tcmalloc(sys.argv[1:])
    argv = sys.argv[1:] if argv is None else list(argv)
    # Idle OpenMP threads spin by default (libgomp: a bounded spin, then sleep) and starve a
    # busy 2-core machine (tiny, one core busy: 7 img/s spinning against 37 passive); passive
    # waiting halves what two threads gain on a quiet one (bf16: 70 against 112 img/s;
    # bench/cpu_speed.py). Training reads the load and drops to one thread beside a busy
    # process (train.threads=0, diffscape.train.threads), so train and demo keep libgomp's
    # spin; every other command waits passively. Set before torch (and libgomp) is imported.
    if next((a for a in argv if not a.startswith("-")), "") not in SPINNING:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # --debug is taken anywhere, also after the command (where users add it when retrying).
    debug = "--debug" in argv or os.environ.get("DIFFSCAPE_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    try:
        parser = build_parser()
        args = parser.parse_args(argv)  # inside: an argument's type check may raise too
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("diffscape: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if debug:
            raise
        print(f"diffscape: {error_line(e)}", file=sys.stderr)
        return 2 if isinstance(e, DiffscapeError | OSError | MemoryError) else 1


def error_line(e: BaseException) -> str:
    """One line for an exception: the message of an anticipated one (DiffscapeError, or what
    the operating system refused), else its type and message plus where the full traceback
    was written."""
    if isinstance(e, DiffscapeError):
        return "error: " + _one_line(str(e))
    if is_disk_full(e):  # a write the commands do not wrap themselves (they name path and size)
        where = getattr(e, "filename", None) or "the disk this command writes to (its --out)"
        return f"error: no space left on {where}: free some space, then run the same command again"
    if isinstance(e, OSError) and e.strerror:
        where = f" {e.filename}" if e.filename else ""
        return f"error: cannot use{where}: {e.strerror} (check the path, its permissions and free space)"
    if isinstance(e, MemoryError):
        return "error: out of memory; use a smaller --batch, model or dataset"
    path = _write_traceback(e)
    return (
        f"internal error: {type(e).__name__}: {_one_line(str(e))[:300]} (full traceback in {path}; "
        "please report it)"
    )


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _write_traceback(e: BaseException) -> str:
    import tempfile
    import traceback

    text = "".join(traceback.format_exception(type(e), e, e.__traceback__))
    try:
        fd, path = tempfile.mkstemp(prefix="diffscape-traceback-", suffix=".txt")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        return path
    except OSError:
        return "(could not be written; run with --debug)"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
