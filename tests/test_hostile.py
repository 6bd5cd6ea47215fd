"""Careless and hostile input (issue 13), as one table.

Every case builds its fixture (a damaged copy of a shared tiny dataset, run, samples folder or
judge), runs the real command line and asserts: the exit code (2 for a refusal, 0 where the right
behaviour is a fallback that succeeds); no traceback; for a refusal, stderr is one line
``diffscape...: error: ...`` (matching the case's reason), for a fallback no error line and the
damage named on one line; and nothing it may not touch changed: the case's folder (with a file
beside --out, a "thesis" folder and any copies it damaged) and the shared fixtures are
byte-identical afterwards (lock files aside), except --out itself when the command succeeds.
Planted pickles would create a file if ever loaded.

Most cases call ``diffscape.cli.main`` in this process (a subprocess costs ~4 s of imports);
cases marked ``proc`` run ``python -m diffscape`` in a subprocess under a 8 GiB address-space
limit (those that would otherwise try to allocate far more), and DIFFSCAPE_HOSTILE_PROCESSES=1
runs every case that way.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import pickle
import re
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from fixtures_data import colour_dataset
from PIL import Image

from diffscape import cli
from diffscape.core import layout
from diffscape.core.errors import DiffscapeError

ALL_PROCESSES = os.environ.get("DIFFSCAPE_HOSTILE_PROCESSES", "") not in ("", "0")
ENV = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1"}
ENV.pop("DIFFSCAPE_DEBUG", None)
MEMORY_LIMIT = 8 << 30  # bytes of address space for subprocess cases
TINY = [
    *("--set", "model.image_size=16", "--set", "model.channels=[16,32]"),
    *("--set", "model.attention_resolutions=[]", "--set", "train.batch_size=8"),
    *("--set", "train.sample_every_steps=0", "--set", "train.checkpoint_every_steps=2"),
    *("--conditional", "--no-progress"),
]
FAST = ["--sampler", "ddim", "--steps", "2", "--n", "2", "--no-progress"]
PROGRESS = re.compile(r"\d+%\||\d+/\d+ \[|it/s|img/s")


# ---- running the command line -------------------------------------------------------------------


@dataclass
class Result:
    rc: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        """stderr without blank lines and progress-bar updates."""
        return [x for x in self.err.splitlines() if x.strip() and not PROGRESS.search(x)]


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def run_process(argv: list[str], timeout: float = 120, env: dict[str, str] | None = None) -> Result:
    p = subprocess.run(
        [sys.executable, "-m", "diffscape", *argv],
        capture_output=True,
        text=True,
        env={**ENV, **(env or {})},
        timeout=timeout,
        preexec_fn=_limit_memory,
    )
    return Result(p.returncode, p.stdout, p.stderr)


def run_inprocess(argv: list[str], capfd: pytest.CaptureFixture[str]) -> Result:
    capfd.readouterr()
    try:
        rc = cli.main(argv)
    except SystemExit as e:  # argparse
        rc = e.code if isinstance(e.code, int) else 1
    except BaseException as e:  # noqa: BLE001 - main() must never let one escape
        pytest.fail(f"{type(e).__name__} escaped diffscape.cli.main: {e}")
    captured = capfd.readouterr()
    return Result(rc, captured.out, captured.err)


# ---- sentinels ----------------------------------------------------------------------------------


def digest(root: Path, skip: Path | tuple[Path, ...] | None = None) -> dict[str, str]:
    """sha256 of every file below ``root`` (lock files aside: taking a lock is not a change),
    leaving out the folder(s) ``skip``."""
    skips = skip if isinstance(skip, tuple) else (() if skip is None else (skip,))
    found = {}
    for p in sorted(root.rglob("*")):
        if any(p == s or s in p.parents for s in skips):
            continue
        if p.is_file() and not p.name.endswith(layout.LOCK):
            found[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return found


# ---- the shared fixtures: one tiny dataset, run, samples folder and judge ----------------------


@dataclass(frozen=True)
class World:
    root: Path
    ds: Path
    run: Path
    samples: Path
    judge: Path


def _ok(argv: list[str]) -> None:
    assert cli.main(argv) == 0, argv


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("world")
    w = World(root, root / "ds", root / "run", root / "samples", root / "judge")
    _ok(["data", "synth", "--n", "60", "--size", "16", "--out", str(w.ds)])
    _ok(["train", str(w.ds), "--out", str(w.run), "--steps", "4", *TINY])
    _ok(["sample", str(w.run), *FAST, "--n", "1", "--per-class", "--out", str(w.samples)])
    _ok(["judge", "train", str(w.ds), "--kind", "svc", "--no-progress", "--out", str(w.judge)])
    before = digest(root)
    yield w
    assert digest(root) == before, "a case changed the shared fixtures"


@dataclass
class Ctx:
    """One case's folder ``t``: --out is nested three levels deep, beside a file, next to a
    thesis; ``w`` holds the shared fixtures (read only)."""

    w: World
    t: Path
    out: Path = field(init=False)
    holders: list[subprocess.Popen] = field(default_factory=list)
    mounts: list[Path] = field(default_factory=list)  # small file systems, unmounted after
    undo: list[Callable[[], None]] = field(default_factory=list)  # in-process patches

    def __post_init__(self) -> None:
        self.out = self.t / "a" / "b" / "c" / "out"
        self.out.parent.mkdir(parents=True)
        (self.out.parent / "beside.txt").write_text("a file beside --out\n")
        (self.t / "thesis").mkdir()
        (self.t / "thesis" / "thesis.tex").write_text("\\chapter{Results}\n")

    def copy(self, what: str) -> Path:
        """A copy of a shared fixture (ds, run, samples, judge) in the case folder."""
        dst = self.t / what
        shutil.copytree(getattr(self.w, what), dst)
        return dst

    def hold(self, folder: Path, how: str = "hold") -> int:
        """Start a process that holds ``folder``'s lock; returns its PID."""
        code = textwrap.dedent(
            f"""
            import sys, time
            from diffscape.core import lock
            with lock.{how}(sys.argv[1], "folder"):
                print("held", flush=True)
                time.sleep(600)
            """
        )
        p = subprocess.Popen(
            [sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True, env=ENV
        )
        self.holders.append(p)
        assert p.stdout is not None and p.stdout.readline().strip() == "held"
        return p.pid


# ---- fixture damage -----------------------------------------------------------------------------


def edit_json(path: Path, change: Callable[[dict], None]) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def edit_every(root: Path, name: str, change: Callable[[dict], None]) -> None:
    """Apply ``change`` to every JSON file called ``name`` below ``root`` (a run's own file and
    its checkpoints' copies, so that no copy contradicts the hostile one)."""
    for p in [root / name, *root.rglob(name)]:
        if p.is_file():
            edit_json(p, change)


def resign(run: Path) -> None:
    """Rewrite every checkpoint's COMPLETE file list after an edit, as someone crafting a
    hostile run would: the damage is then in the contents, not caught by the checksums."""
    from diffscape.checkpoint import write_marker

    for ckpt in (run / layout.CHECKPOINTS).iterdir():
        write_marker(ckpt)


def set_first_class(name: str) -> Callable[[dict], None]:
    def change(d: dict) -> None:
        for holder in (d, d.get("dataset") or {}):
            if "classes" in holder:
                holder["classes"][0] = name

    return change


def hostile_model(run_key: str, value: int, unet_key: str) -> Callable[[dict], None]:
    def change(d: dict) -> None:
        if "model" in d:  # the run's config.json
            d["model"][run_key] = value
        if d.get("_class_name") == "UNet2DModel":  # the diffusers config of model/ and ema/
            d[unet_key] = value

    return change


def checkpoint_weights(run: Path, step: int | None = None) -> list[Path]:
    ckpts = sorted((run / layout.CHECKPOINTS).iterdir())
    chosen = [c for c in ckpts if step is None or c.name == layout.checkpoint_name(step)]
    return sorted(p for c in chosen for p in c.rglob("*.safetensors"))


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


class Planted:
    """A pickle that, if ever unpickled, creates the file it names."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (open, (str(self.marker), "w"))


PWNED = "PWNED"  # the file a planted pickle creates in the case folder if it is ever loaded


def plant_pickle(path: Path, ctx: Ctx) -> None:
    path.write_bytes(pickle.dumps(Planted(ctx.t / PWNED)))


def one_png(samples: Path) -> Path:
    return sorted(samples.rglob("0*.png"))[0]


def hostile_zip(ctx: Ctx) -> Path:
    z = ctx.t / "photos.zip"
    buf = ctx.t / "img.png"
    with zipfile.ZipFile(z, "w") as f:
        for i, (cls, colour) in enumerate([("Coast", "blue")] * 3 + [("Desert", "yellow")] * 3):
            Image.new("RGB", (16, 16), colour).save(buf)
            f.write(buf, f"{cls}/{i}.png")
        f.writestr(zipfile.ZipInfo("/tmp/evil/abs.png"), buf.read_bytes())
        f.writestr(zipfile.ZipInfo("Coast/../../../evil/up.png"), buf.read_bytes())
    buf.unlink()
    return z


def labels(ds: Path, values: list[int]) -> None:
    np.save(ds / layout.labels_file("train"), np.resize(np.array(values, np.int64), 50))


# ---- checks after a successful fallback ---------------------------------------------------------


def says_step_4_damaged_using_step_2(r: Result) -> None:
    """One line names the damaged checkpoint and the one used instead."""
    names = layout.checkpoint_name(4), layout.checkpoint_name(2)
    said = (r.out + r.err).splitlines()
    assert any(all(n in line for n in names) for line in said), said


def fell_back_to_step_2(ctx: Ctx, r: Result) -> None:
    says_step_4_damaged_using_step_2(r)
    info = json.loads((ctx.out / layout.SAMPLES_JSON).read_text())
    assert str(info["checkpoint"]).endswith(layout.checkpoint_name(2))


def exported_from_step_2(ctx: Ctx, r: Result) -> None:
    says_step_4_damaged_using_step_2(r)
    assert (ctx.out / "unet").is_dir()


def resumed_from_step_2(ctx: Ctx, r: Result) -> None:
    says_step_4_damaged_using_step_2(r)
    assert (ctx.t / "run" / layout.CHECKPOINTS / layout.checkpoint_name(6)).is_dir()


def only_the_new_images(ctx: Ctx, r: Result) -> None:
    pngs = sorted(p.relative_to(ctx.out) for p in ctx.out.rglob("0*.png"))
    info = json.loads((ctx.out / layout.SAMPLES_JSON).read_text())
    assert len(pngs) == info["n"] == 2, pngs  # replaced whole, never merged with the old five


def run_named_x(ctx: Ctx, r: Result) -> None:
    """A sweep makes run names safe (letters, digits, ``._=-``) instead of refusing them."""
    assert re.search(r"^\s+X\s", r.out, re.M) and "../" not in r.out, r.out


def safe_classes_only(ctx: Ctx, r: Result) -> None:
    manifest = json.loads((ctx.out / layout.MANIFEST).read_text())
    assert manifest["classes"] == ["Coast", "Desert"]
    assert not (Path("/tmp/evil")).exists()


# ---- the table ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    argv: Callable[[Ctx], list[str]]  # builds the fixture, returns the command line
    rc: int = 2
    says: str = ""  # a regex the error line must match (the refusal is for the right reason)
    check: Callable[[Ctx, Result], None] | None = None  # after the command, whatever its rc
    proc: bool = False  # in a subprocess, under the memory limit
    changes: Callable[[Ctx], Path] | None = None  # a folder the command may change too
    late: bool = False  # fails after work began: status lines first, the error line last
    env: Callable[[Ctx], dict[str, str]] | None = None  # extra variables: runs in a subprocess


Part = str | Callable[[Ctx], "Path | str | list[str]"]


def cmd(*parts: Part) -> Callable[[Ctx], list[str]]:
    """A command line from words ("sample --n 2" is split) and fixture builders, which are
    called in order when the case runs."""

    def argv(c: Ctx) -> list[str]:
        words: list[str] = []
        for part in parts:
            value = part(c) if callable(part) else part.split()
            words += value if isinstance(value, list) else [str(value)]
        return words

    return argv


# fixture builders
def OUT(c: Ctx) -> Path:  # noqa: N802 - read as constants in the table
    return c.out


def THESIS(c: Ctx) -> Path:  # noqa: N802
    return c.t / "thesis"


def RUN(c: Ctx) -> Path:  # noqa: N802
    return c.w.run


def DS(c: Ctx) -> Path:  # noqa: N802
    return c.w.ds


def copy(what: str) -> Callable[[Ctx], Path]:
    return lambda c: c.copy(what)


def damaged(what: str, change: Callable[[Path, Ctx], object]) -> Callable[[Ctx], Path]:
    """A copy of a shared fixture, then ``change(copy, ctx)``."""

    def build(c: Ctx) -> Path:
        dst = c.copy(what)
        change(dst, c)
        return dst

    return build


def held(how: str, folder: Callable[[Ctx], Path]) -> Callable[[Ctx], Path]:
    """``folder``, locked by another process (lock.hold)."""

    def build(c: Ctx) -> Path:
        path = folder(c)
        c.hold(path, how)
        return path

    return build


def locked_partial(c: Ctx) -> Path:
    """--out, whose images another sampler is making (it holds the partial folder's lock)."""
    from diffscape.sample.folder import partial_dir

    c.hold(partial_dir(c.out), "hold")
    return c.out


def read_only_out(c: Ctx) -> Path:
    """A folder nobody may write into: chmod, or for root (whom chmod does not stop) the
    file system's immutable flag."""
    ro = c.t / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    if os.access(ro, os.W_OK):
        subprocess.run(["chattr", "+i", str(ro)], capture_output=True, check=False)
        try:
            (ro / "probe").mkdir()
        except OSError:
            pass
        else:
            pytest.skip("cannot make a folder read-only for this user")
    return ro / "out"


def one_class_ds(c: Ctx) -> Path:
    return colour_dataset(c.t / "ds1", n_train=12, n_test=4, classes=1, size=16).root


def corrupt_png(s: Path, c: Ctx) -> None:
    one_png(s).write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)


def truncated_latest(r: Path, c: Ctx) -> None:
    for p in checkpoint_weights(r, 4):
        truncate(p)


def garbage_weights(r: Path, c: Ctx) -> None:
    for p in checkpoint_weights(r):
        p.write_bytes(b"garbage" * 100)


def pickled_weights(r: Path, c: Ctx) -> None:
    for p in checkpoint_weights(r):
        plant_pickle(p, c)
    resign(r)


def hostile_unet(key: str, value: int) -> Callable[[Path, Ctx], None]:
    """Only the diffusers config.json of model/ and ema/ made hostile; the run's agrees."""

    def change(r: Path, c: Ctx) -> None:
        for p in r.rglob(layout.CONFIG_JSON):
            if p.parent.name in (layout.MODEL_DIR, layout.EMA_DIR):
                edit_json(p, lambda d: d.update({key: value}))
        resign(r)

    return change


def huge_array_in_skops(j: Path, c: Ctx) -> None:
    """A .skops judge of trusted types only, whose largest array claims 10**11 float64s
    (800 GB) in its .npy header."""
    model = j / "model.skops"
    with zipfile.ZipFile(model) as z:
        members = {i.filename: z.read(i.filename) for i in z.infolist()}
    biggest = max((n for n in members if n.endswith(".npy")), key=lambda n: len(members[n]))
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f8", "fortran_order": False, "shape": (10**11,)}
    )
    old = io.BytesIO(members[biggest])
    np.lib.format.read_magic(old)
    np.lib.format.read_array_header_1_0(old)
    members[biggest] = header.getvalue() + old.read()
    with zipfile.ZipFile(model, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)


def hostile_sweep(c: Ctx) -> Path:
    path = c.t / "sweep.toml"
    path.write_text(
        'name = "hostile"\npreset = "tiny"\n[base]\nmodel.image_size = 16\n'
        '[[runs]]\nname = "../../../X"\ntrain = { steps = 2 }\n'
    )
    return path


def hostile_config(run_key: str, value: int, unet_key: str) -> Callable[[Path, Ctx], None]:
    def change(r: Path, c: Ctx) -> None:
        edit_every(r, layout.CONFIG_JSON, hostile_model(run_key, value, unet_key))
        resign(r)

    return change


# -- issue 24's one rule for every output path: builders and checks
MINE = b"the user's own file, not diffscape's\n"


def users(*names: str, where: Callable[[Ctx], Path] = OUT) -> Callable[[Ctx], Path]:
    """``where`` (default --out, a folder) holding files of the user's called ``names``
    (pictures are real PNGs, written by someone else); returns ``where``."""

    def build(c: Ctx) -> Path:
        folder = where(c)
        folder.mkdir(parents=True, exist_ok=True)
        for name in names:
            if name.endswith(".png"):
                Image.new("RGB", (8, 8), "red").save(folder / name)
            else:
                (folder / name).write_bytes(MINE)
        return folder

    return build


def user_file(name: str, beside: str | None = None) -> Callable[[Ctx], Path]:
    """The path ``name`` in --out's parent: the user's own file, or (``beside``) a new name
    next to a user's file called ``beside``."""

    def build(c: Ctx) -> Path:
        users(beside or name, where=lambda c: c.out.parent)(c)
        return c.out.parent / name

    return build


def scored(c: Ctx) -> Path:
    """A copy of the samples, judged once already (accuracy.json etc. are diffscape's)."""
    dst = c.copy("samples")
    _ok(["judge", "score", str(c.w.judge), str(dst)])
    return dst


def with_notes(what: str) -> Callable[[Ctx], Path]:
    """A copy of a shared fixture (or an export of the run) with the user's NOTES.txt in it."""

    def build(c: Ctx) -> Path:
        if what == "export":
            dst = c.t / "export"
            _ok(["export", str(c.w.run), "--out", str(dst)])
        else:
            dst = c.copy(what)
        (dst / "NOTES.txt").write_bytes(MINE)
        return dst

    return build


def user_temporaries_beside_out(c: Ctx) -> Path:
    """The user's own folder and file, named like old-style temporaries of dead processes."""
    (c.out.parent / ".b.tmp-424242").mkdir()
    (c.out.parent / ".b.tmp-424242" / "draft.tex").write_bytes(MINE)
    (c.out.parent / ".mydata.tmp-999999").write_bytes(MINE)
    return c.out


def link_to(target: Callable[[Ctx], Path]) -> Callable[[Ctx], Path]:
    """--out as a symbolic link to ``target``."""

    def build(c: Ctx) -> Path:
        c.out.symlink_to(target(c), target_is_directory=True)
        return c.out

    return build


def empty_folder(c: Ctx) -> Path:
    (c.t / "real").mkdir()
    return c.t / "real"


def link_kept(kind: str, target: str) -> Callable[[Ctx, Result], None]:
    def check(c: Ctx, r: Result) -> None:
        assert c.out.is_symlink() and os.readlink(c.out) == str(c.t / target)
        assert layout.is_kind(c.t / target, kind)
        assert sorted(p.name for p in c.out.parent.iterdir()) == ["beside.txt", "out"]

    return check


def small_disk(c: Ctx, size: int) -> Path:
    """A file system of ``size`` bytes (tmpfs), mounted in the case folder; skips where this
    user cannot mount one."""
    d = c.t / "small"
    d.mkdir(exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(d)],
                       capture_output=True, text=True, check=False)  # fmt: skip
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small file system here ({r.stderr.strip()[:80]})")
    c.mounts.append(d)
    return d


def tree_bytes(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def run_on_a_full_disk(c: Ctx) -> Path:
    """A copy of the run on a disk with room for less than one more checkpoint."""
    ckpt = sorted((c.w.run / layout.CHECKPOINTS).iterdir())[-1]
    disk = small_disk(c, tree_bytes(c.w.run) + tree_bytes(ckpt) // 2 + (64 << 10))
    shutil.copytree(c.w.run, disk / "run")
    return disk / "run"


def checkpoints_intact(c: Ctx, r: Result) -> None:
    ckpts = c.t / "small" / "run" / layout.CHECKPOINTS
    assert sorted(p.name for p in ckpts.iterdir()) == sorted(
        p.name for p in (c.w.run / layout.CHECKPOINTS).iterdir()
    )  # the previous checkpoints, and no temporary left behind
    assert "no space left" in r.err and str(ckpts) in r.err


def nothing_left_on_the_disk(c: Ctx, r: Result) -> None:
    assert list((c.t / "small").iterdir()) == [] and "no space left" in r.err


def pruned_while_read(c: Ctx) -> Path:
    """A copy of the run whose latest checkpoint a trainer deletes as sample reads it."""
    import diffscape.sample.load as sample_load

    run = c.copy("run")
    real = sample_load.load_unet

    def load_then_gone(folder: Path, *args: object, **kwargs: object) -> object:
        if folder.parent.name == layout.checkpoint_name(4) and folder.parent.exists():
            shutil.rmtree(folder.parent)  # the trainer pruned it
        return real(folder, *args, **kwargs)

    sample_load.load_unet = load_then_gone
    c.undo.append(lambda: setattr(sample_load, "load_unet", real))
    return run


def sampled_step_2_after_pruning(c: Ctx, r: Result) -> None:
    assert "removed while it was being read" in r.err
    info = json.loads((c.out / layout.SAMPLES_JSON).read_text())
    assert str(info["checkpoint"]).endswith(layout.checkpoint_name(2))


def no_lock_beside(c: Ctx, r: Result) -> None:
    assert sorted(p.name for p in c.out.parent.iterdir()) == ["beside.txt", "out"]
    assert sorted(p.name for p in c.out.iterdir() if p.name.startswith(".")) == []


# -- issue 24's hangs, unbounded work, user text in plots and late refusals: builders and checks
def fifo_source(c: Ctx) -> Path:
    """Class folders of tiny PNGs, and a FIFO named like a photo (opening it would block)."""
    src = c.t / "photos"
    for cls, colour in (("Coast", "blue"), ("Desert", "yellow")):
        (src / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (16, 16), colour).save(src / cls / f"{i}.png")
    os.mkfifo(src / "Coast" / "p.png")
    return src


def fifo_skipped(c: Ctx, r: Result) -> None:
    skipped = json.loads((c.out / layout.MANIFEST).read_text())["skipped"]
    assert [s["path"] for s in skipped] == ["Coast/p.png"], skipped
    assert "not a regular file" in skipped[0]["reason"], skipped


def sweep_file(text: str) -> Callable[[Ctx], Path]:
    def build(c: Ctx) -> Path:
        path = c.t / "sweep.toml"
        path.write_text(f'name = "hostile"\npreset = "tiny"\n{text}\n')
        return path

    return build


def sweep_run_named(name: str) -> Callable[[Ctx], Path]:
    return sweep_file(f"[[runs]]\nname = {json.dumps(name)}\ntrain = {{ steps = 2 }}")


GRID_1E6 = sweep_file(
    f'[grid]\n"train.steps" = {list(range(1, 1001))}\n"train.seed" = {list(range(1000))}'
)
DOLLAR = "$x^$"  # mathtext would parse it (and fail: "^" needs an argument)


def dollar_run(c: Ctx) -> Path:
    """A copy of the run named ``$x^$``, with two log lines so that its loss curve is drawn."""
    run = c.t / "runs" / DOLLAR
    shutil.copytree(c.w.run, run)
    log = run / layout.METRICS_JSONL
    rec = json.loads(log.read_text().splitlines()[0])
    with log.open("a") as f:
        f.write(json.dumps({**rec, "step": rec["step"] + 4}) + "\n")
    return run


def dollar_class(what: str) -> Callable[[Ctx], Path]:
    """A copy of the judge or samples whose first class is called ``$x^$``."""

    def build(c: Ctx) -> Path:
        dst = c.copy(what)
        if what == "samples":
            first = json.loads((dst / layout.SAMPLES_JSON).read_text())["classes"][0]
            (dst / first).rename(dst / DOLLAR)
            edit_json(dst / layout.SAMPLES_JSON, lambda d: d["counts"].update(
                {DOLLAR: d["counts"].pop(first)}))  # fmt: skip
        edit_json(dst / (layout.JUDGE_JSON if what == "judge" else layout.SAMPLES_JSON),
                  set_first_class(DOLLAR))  # fmt: skip
        return dst

    return build


def report_written(c: Ctx, r: Result) -> None:
    assert DOLLAR in (c.out / layout.REPORT_HTML).read_text()


def confusion_written(c: Ctx, r: Result) -> None:
    assert (c.out / layout.CONFUSION_PNG).is_file() and (c.out / layout.ACCURACY_JSON).is_file()


def formula_run(c: Ctx) -> Path:
    run = c.t / "runs" / "=1+2"
    shutil.copytree(c.w.run, run)
    return run


def formula_quoted(c: Ctx, r: Result) -> None:
    import csv

    with (c.out / layout.RESULTS_CSV).open(newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert row["name"] == "'=1+2", row


def cache_file(c: Ctx) -> dict[str, str]:
    (c.t / "cachefile").write_text("not a folder\n")
    return {"DIFFSCAPE_CACHE": str(c.t / "cachefile")}


SAMPLE = ("sample", RUN, *FAST)  # sample the shared run into --out (options follow)
SYNTH = "data synth --n 20 --size 16 --out"
TRAIN_ARGS = ("--steps 4", *TINY)
SVC = "--kind svc --no-progress --out"
ESCAPE = "../../../X"
RUN_T = lambda c: c.t / "run"  # noqa: E731 - the run copied into the case folder


# fmt: off
CASES = [
    # -- data loss: a command replaces only a folder of its own kind
    Case("synth-over-run", cmd(SYNTH, copy("run")), says="run"),
    Case("synth-over-thesis", cmd(SYNTH, THESIS), proc=True, says="thesis"),
    Case("synth-over-file", cmd(SYNTH, lambda c: c.out.parent / "beside.txt")),
    Case("train-into-thesis", cmd("train", DS, "--out", THESIS, *TRAIN_ARGS)),
    Case("sample-over-run", cmd(*SAMPLE, "--out", copy("run"))),
    Case("sample-into-thesis", cmd(*SAMPLE, "--out", THESIS)),
    Case("export-over-thesis", cmd("export", RUN, "--out", THESIS)),
    Case("judge-over-dataset", cmd("judge train", DS, SVC, copy("ds"))),
    Case("interpolate-out-is-folder", cmd("interpolate", RUN, "--frames 2 --sampler ddim",
         "--steps 2 --out", THESIS)),
    Case("show-out-is-folder", cmd("data show", DS, "--out", THESIS)),
    Case("evaluate-out-is-folder", cmd("evaluate --real", DS, "--fake", lambda c: c.w.samples,
         "--out", THESIS)),
    Case("report-out-is-folder", cmd("report", RUN, "--out", THESIS)),
    # -- writing outside --out: names read from files are single safe path components
    Case("sample-class-escapes", cmd("sample", damaged("run", lambda r, c: (edit_every(
        r, layout.RUN_JSON, set_first_class(ESCAPE)), resign(r))), *FAST, "--out", OUT),
        says="X"),
    Case("train-manifest-class-escapes", cmd("train", damaged("ds", lambda d, c: edit_json(
        d / layout.MANIFEST, set_first_class(ESCAPE))), "--out", OUT, *TRAIN_ARGS), says="X"),
    Case("sweep-run-name-escapes", cmd("sweep", hostile_sweep, "--data", DS, "--dry-run",
         "--no-progress --out", OUT), rc=0, check=run_named_x),
    Case("prepare-zip-absolute-member", cmd("data prepare", hostile_zip,
         "--size 16 --no-progress --out", OUT), rc=0, check=safe_classes_only),
    # -- one writer per folder
    Case("train-into-locked-run", cmd("train", DS, "--out", held("hold", copy("run")),
         *TRAIN_ARGS, "--steps 6"), says="process"),
    Case("sample-into-locked-out", cmd(*SAMPLE, "--out", locked_partial),
         says="process"),
    # -- silent garbage
    Case("sample-batch-negative", cmd(*SAMPLE, "--batch -3 --out", OUT), says="batch"),
    Case("sample-guidance-nan", cmd(*SAMPLE, "--guidance nan --out", OUT), says="guidance"),
    Case("sample-guidance-inf", cmd(*SAMPLE, "--guidance inf --out", OUT), says="guidance",
         proc=True),
    Case("sample-eta-nan", cmd(*SAMPLE, "--eta nan --out", OUT), says="eta"),
    Case("sample-steps-0", cmd(*SAMPLE, "--steps 0 --out", OUT), says="steps"),
    Case("sample-over-samples", cmd(*SAMPLE, "--out", copy("samples")), says="overwrite"),
    Case("sample-overwrite-replaces", cmd(*SAMPLE, "--overwrite --out",
         lambda c: shutil.copytree(c.w.samples, c.out)), rc=0, check=only_the_new_images),
    # -- damaged checkpoints: the newest complete checkpoint that verifies, saying so
    Case("sample-truncated-latest", cmd("sample", damaged("run", truncated_latest), *FAST,
         "--out", OUT), rc=0, check=fell_back_to_step_2),
    Case("export-truncated-latest", cmd("export", damaged("run", truncated_latest),
         "--out", OUT), rc=0, check=exported_from_step_2),
    Case("resume-truncated-latest", cmd("train", DS, "--out", damaged("run", truncated_latest),
         *TRAIN_ARGS, "--resume --steps 6"), rc=0, check=resumed_from_step_2, changes=RUN_T),
    Case("sample-all-checkpoints-garbage", cmd("sample", damaged("run", garbage_weights),
         *FAST, "--out", OUT)),
    # -- unbounded sizes: refused before anything is allocated
    Case("dry-run-timesteps-1e9", cmd("train", DS, "--out", OUT, *TRAIN_ARGS, "--dry-run",
         "--set diffusion.timesteps=1000000000"), says="timesteps"),
    Case("dry-run-channels-1e6", cmd("train", DS, "--out", OUT, *TRAIN_ARGS, "--dry-run",
         "--set", "model.channels=[1000000,1000000]"), says="channels"),
    Case("config-image-size-4096", cmd("sample", damaged("run", hostile_config(
        "image_size", 4096, "sample_size")), *FAST, "--out", OUT), says="image_size", proc=True),
    Case("config-num-classes-1e9", cmd("sample", damaged("run", hostile_config(
        "num_classes", 10**9, "num_class_embeds")), *FAST, "--out", OUT), says="num_classes",
        proc=True),
    Case("unet-config-num-class-embeds-1e9", cmd("sample", damaged("run", hostile_unet(
        "num_class_embeds", 10**9)), *FAST, "--out", OUT), proc=True),
    Case("unet-config-sample-size-4096", cmd("sample", damaged("run", hostile_unet(
        "sample_size", 4096)), *FAST, "--out", OUT), proc=True),
    Case("skops-array-1e11", cmd("judge score", damaged("judge", huge_array_in_skops),
         lambda c: c.w.samples, "--out", OUT), proc=True),
    # -- one line where a traceback was
    Case("manifest-bad-json", cmd("train", damaged("ds", lambda d, c: (
        d / layout.MANIFEST).write_text('{"classes": [')), "--out", OUT, *TRAIN_ARGS)),
    Case("npy-truncated", cmd("train", damaged("ds", lambda d, c: truncate(
        d / layout.images_file("train"))), "--out", OUT, *TRAIN_ARGS)),
    Case("npy-garbage", cmd("train", damaged("ds", lambda d, c: (
        d / layout.labels_file("train")).write_bytes(b"not numpy")), "--out", OUT, *TRAIN_ARGS)),
    Case("labels-beyond-classes", cmd("train", damaged("ds", lambda d, c: labels(
        d, [0, 1, 2, 3, 4, 9])), "--out", OUT, *TRAIN_ARGS)),
    Case("svc-one-class", cmd("judge train", one_class_ds, SVC, OUT)),
    Case("train-lr-nan", cmd("train", DS, "--out", OUT, *TRAIN_ARGS, "--set train.lr=nan"),
         says="lr"),
    Case("sample-n-0", cmd(*SAMPLE, "--n 0 --out", OUT), says="--n|n "),
    Case("sample-n-negative", cmd(*SAMPLE, "--n -1 --out", OUT), says="--n|n "),
    Case("sample-batch-0", cmd(*SAMPLE, "--batch 0 --out", OUT), says="batch"),
    Case("sample-seed-negative", cmd(*SAMPLE, "--seed -1 --out", OUT), says="seed"),
    Case("sample-read-only-out", cmd(*SAMPLE, "--out", read_only_out)),
    Case("judge-model-is-pickle", cmd("judge score", damaged("judge", lambda j, c: plant_pickle(
        j / "model.skops", c)), lambda c: c.w.samples, "--out", OUT)),
    Case("judge-model-is-garbage", cmd("judge score", damaged("judge", lambda j, c: (
        j / "model.skops").write_bytes(b"\x00garbage" * 64)), lambda c: c.w.samples,
        "--out", OUT)),
    Case("judge-json-garbage", cmd("judge score", damaged("judge", lambda j, c: (
        j / layout.JUDGE_JSON).write_text("{not json")), lambda c: c.w.samples, "--out", OUT)),
    Case("model-file-is-pickle", cmd("sample", damaged("run", pickled_weights), *FAST,
         "--out", OUT)),
    Case("samples-corrupt-png", cmd("judge score", lambda c: c.w.judge,
         damaged("samples", corrupt_png), "--out", OUT)),
    # -- issue 24: every output path under one rule (files as well as folders)
    # 1. files a command writes on their own or into someone's folder
    Case("judge-score-over-user-files", cmd("judge score", lambda c: c.w.judge,
         lambda c: c.w.samples, "--out", users("accuracy.json", "confusion.json",
         "confusion.png")), says="not written by diffscape"),
    Case("judge-score-again", cmd("judge score", lambda c: c.w.judge, scored),
         says="--overwrite"),
    Case("judge-score-again-overwrite", cmd("judge score", lambda c: c.w.judge, scored,
         "--overwrite"), rc=0, changes=lambda c: c.t / "samples"),
    Case("judge-cas-over-user-file", cmd("judge cas", lambda c: c.w.samples, DS, "--out",
         users("cas.json")), says="not written by diffscape"),
    Case("evaluate-over-user-file", cmd("evaluate --real", DS, "--fake", lambda c: c.w.samples,
         "--out", user_file("notes.txt")), says="notes.txt"),
    Case("evaluate-overwrite-user-file", cmd("evaluate --real", DS, "--fake",
         lambda c: c.w.samples, "--overwrite --out", user_file("notes.txt")), says="notes.txt"),
    Case("evaluate-pairs-over-user-png", cmd("evaluate --real", DS, "--fake",
         lambda c: c.w.samples, "--out", user_file("m.json", beside="closest-pairs.png")),
         says="closest-pairs.png"),
    Case("report-over-user-html", cmd("report", RUN, "--out", user_file("index.html")),
         says="index.html"),
    Case("report-csv-over-user-csv", cmd("report", RUN, "--out",
         user_file("r.html", beside="results.csv")), says="results.csv"),
    Case("interpolate-over-user-png", cmd("interpolate", RUN, "--frames 2 --sampler ddim",
         "--steps 2 --out", user_file("photo.png")), says="photo.png"),
    Case("show-over-user-png", cmd("data show", DS, "--out", user_file("grid.png")),
         says="grid.png"),
    # 2. temporaries: only this program's, recognisably, are ever removed
    Case("synth-beside-user-temporaries", cmd(SYNTH, user_temporaries_beside_out), rc=0),
    # 3. a folder holding anything this program did not write is not empty
    Case("synth-into-user-sweep-log", cmd(SYNTH, users("sweep.log")), says="not empty"),
    Case("train-into-user-sweep-log", cmd("train", DS, "--out", users("sweep.log"),
         *TRAIN_ARGS), says="not empty"),
    # 4. a folder of the same kind: replaced only with --overwrite, and never with a user's file
    Case("synth-over-dataset", cmd(SYNTH, with_notes("ds")), says="--overwrite"),
    Case("synth-overwrite-dataset-with-notes", cmd(SYNTH, with_notes("ds"), "--overwrite"),
         says="NOTES.txt"),
    Case("synth-overwrite-dataset", cmd(SYNTH, copy("ds"), "--overwrite"), rc=0,
         changes=lambda c: c.t / "ds"),
    Case("judge-overwrite-judge-with-notes", cmd("judge train", DS, SVC, with_notes("judge"),
         "--overwrite"), says="NOTES.txt"),
    Case("export-overwrite-export-with-notes", cmd("export", RUN, "--overwrite --out",
         with_notes("export")), says="NOTES.txt"),
    # 5. --out a symbolic link: followed (the link stays), never replaced
    Case("synth-out-link-to-empty", cmd(SYNTH, link_to(empty_folder)), rc=0,
         check=link_kept("dataset", "real"), changes=lambda c: c.t / "real"),
    Case("synth-out-link-to-dataset", cmd(SYNTH, link_to(copy("ds")), "--overwrite"), rc=0,
         check=link_kept("dataset", "ds"), changes=lambda c: c.t / "ds"),
    Case("sample-out-link-to-empty", cmd(*SAMPLE, "--out", link_to(empty_folder)), rc=0,
         check=link_kept("samples", "real"), changes=lambda c: c.t / "real"),
    # 8. a huge --n is refused before any work when the disk cannot hold it
    Case("sample-n-1e6-small-disk", cmd(*SAMPLE, "--n 1000000 --per-class --out",
         lambda c: small_disk(c, 1 << 20) / "s"), says="need about"),
    # 10. disk full: one line with the path and the space; nothing half-written left
    Case("resume-on-a-full-disk", cmd("train", DS, "--out", run_on_a_full_disk, *TRAIN_ARGS,
         "--resume --steps 6"), says="no space left", check=checkpoints_intact, late=True,
         changes=lambda c: c.t / "small" / "run"),
    Case("export-on-a-full-disk", cmd("export", RUN, "--out",
         lambda c: small_disk(c, 256 << 10) / "exp"), says="no space left",
         check=nothing_left_on_the_disk),
    # 12. the checkpoint being read is pruned by a trainer: the newest intact one, said
    Case("sample-checkpoint-pruned-while-read", cmd("sample", pruned_while_read, *FAST,
         "--out", OUT), rc=0, check=sampled_step_2_after_pruning,
         changes=lambda c: c.t / "run"),
    # 13. no lock file left beside --out
    Case("sample-leaves-no-lock", cmd(*SAMPLE, "--out", OUT), rc=0, check=no_lock_beside),
    # -- issue 24: hangs, unbounded work, user text in plots, late refusals
    Case("prepare-fifo-in-source", cmd("data prepare", fifo_source,
         "--size 16 --no-progress --out", OUT), rc=0, check=fifo_skipped, proc=True),
    Case("sweep-grid-1e6", cmd("sweep", GRID_1E6, "--data", DS, "--dry-run --out", OUT),
         says="limit", proc=True),
    Case("sweep-run-named-_judge", cmd("sweep", sweep_run_named("_judge"), "--data", DS,
         "--dry-run --out", OUT), says="_judge"),
    Case("sweep-run-named-sweep.json", cmd("sweep", sweep_run_named("sweep.json"), "--data",
         DS, "--dry-run --out", OUT), says="sweep.json"),
    Case("sweep-run-named-report.html", cmd("sweep", sweep_run_named("report.html"), "--data",
         DS, "--dry-run --out", OUT), says="report.html"),
    Case("sweep-run-name-300-bytes", cmd("sweep", sweep_run_named("a" * 300), "--data", DS,
         "--dry-run --out", OUT), says="bytes"),
    Case("report-dollar-in-run-name", cmd("report", dollar_run, "--out",
         lambda c: c.out / layout.REPORT_HTML), rc=0, check=report_written),
    Case("judge-score-dollar-in-class", cmd("judge score", dollar_class("judge"),
         dollar_class("samples"), "--out", OUT), rc=0, check=confusion_written),
    Case("evaluate-cache-is-a-file", cmd("evaluate --real", DS, "--fake",
         lambda c: c.w.samples, "--out", lambda c: c.out / layout.EVAL_JSON), says="cachefile",
         env=cache_file),
    Case("report-csv-formula", cmd("report", formula_run, "--out",
         lambda c: c.out / layout.REPORT_HTML), rc=0, check=formula_quoted),
    Case("evaluate-n-0-names-flag", cmd("evaluate --real", DS, "--fake", lambda c: c.w.samples,
         "--n 0 --out", lambda c: c.out / layout.EVAL_JSON), says="--n"),
]
# fmt: on


@contextlib.contextmanager
def case_folder(w: World, t: Path) -> Iterator[Ctx]:
    ctx = Ctx(w, t)
    try:
        yield ctx
    finally:
        for p in ctx.holders:
            p.send_signal(signal.SIGKILL)
            p.wait()
        for undo in ctx.undo:
            undo()
        for m in ctx.mounts:
            subprocess.run(["umount", "-l", str(m)], capture_output=True, check=False)
        if (t / "ro").exists():
            subprocess.run(["chattr", "-i", str(t / "ro")], capture_output=True, check=False)
            (t / "ro").chmod(0o755)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile(case: Case, world: World, tmp_path: Path, capfd: pytest.CaptureFixture[str]):
    with case_folder(world, tmp_path) as ctx:
        argv = case.argv(ctx)
        env = case.env(ctx) if case.env is not None else None
        may_change: tuple[Path, ...] = (ctx.out,) if case.rc == 0 else ()
        if case.changes is not None:
            may_change += (case.changes(ctx),)
        before, shared = digest(tmp_path, skip=may_change), digest(world.root)
        in_process = not (case.proc or env or ALL_PROCESSES)
        r = run_inprocess(argv, capfd) if in_process else run_process(argv, env=env)
        shown = f"argv={argv}\nrc={r.rc}\nstdout={r.out[-2000:]}\nstderr={r.err[-3000:]}"
        assert "Traceback" not in r.err, shown
        assert r.rc == case.rc, shown
        lines = r.err_lines
        if case.check is not None:
            case.check(ctx, r)
        if case.rc == 0:  # status lines may go to stderr too, but no error
            assert not any("error" in x for x in lines), shown
        else:
            if case.late:  # the work's status lines, then the error
                assert not any("error" in x for x in lines[:-1]), shown
                lines = lines[-1:]
            assert len(lines) == 1 and lines[0].startswith("diffscape"), shown
            assert "error" in lines[0] and "internal error" not in lines[0], shown
            if case.says:
                assert re.search(case.says, lines[0]), shown
        assert not (tmp_path / PWNED).exists(), "a planted pickle was loaded"
        assert digest(tmp_path, skip=may_change) == before, shown
        assert digest(world.root) == shared, "the shared fixtures changed"
    print(f"{case.id}: rc {r.rc}: {' | '.join(lines)}")  # shown by pytest -rP


# ---- the error path itself ----------------------------------------------------------------------


def boom_command(monkeypatch: pytest.MonkeyPatch) -> None:
    """Add a command ``boom`` whose handler fails in a way nobody planned for."""
    import types

    def fail(args):
        raise ValueError("something nobody planned for\nsecond line")

    def strict(text: str) -> str:  # an argument type that raises our own error
        if text == "bad":
            raise DiffscapeError("--level bad is not a level; use good")
        return text

    def register(sub):
        p = sub.add_parser("boom")
        p.add_argument("--level", type=strict)
        p.set_defaults(func=fail)

    module = types.ModuleType("diffscape.cli.boom")
    module.register = register  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "diffscape.cli.boom", module)
    monkeypatch.setattr(cli, "COMMAND_MODULES", (*cli.COMMAND_MODULES, "boom"))


def test_unanticipated_exception_is_one_line_with_the_traceback_file(monkeypatch, capfd):
    boom_command(monkeypatch)
    r = run_inprocess(["boom"], capfd)
    assert r.rc == 1
    (line,) = r.err_lines
    prefix = "diffscape: internal error: ValueError: something nobody planned for second line"
    assert line.startswith(prefix), line
    where = re.search(r"full traceback in (\S+?);", line)
    assert where, line
    text = Path(where.group(1)).read_text()
    assert "Traceback" in text and "def fail" not in text and "in fail" in text
    Path(where.group(1)).unlink()


def test_debug_lets_the_unanticipated_exception_through(monkeypatch):
    boom_command(monkeypatch)
    with pytest.raises(ValueError, match="nobody planned"):
        cli.main(["--debug", "boom"])
    with pytest.raises(ValueError, match="nobody planned"):
        cli.main(["boom", "--debug"])  # also after the command
    monkeypatch.setenv("DIFFSCAPE_DEBUG", "1")
    with pytest.raises(ValueError, match="nobody planned"):
        cli.main(["boom"])


def test_error_while_parsing_arguments_is_one_line(monkeypatch, capfd):
    boom_command(monkeypatch)
    r = run_inprocess(["boom", "--level", "bad"], capfd)
    assert r.rc == 2 and r.err_lines == ["diffscape: error: --level bad is not a level; use good"]


def test_debug_shows_the_traceback_of_an_anticipated_error(tmp_path, capfd):
    missing = str(tmp_path / "no-such-run")
    plain = run_inprocess(["sample", missing, "--out", str(tmp_path / "s")], capfd)
    assert plain.rc == 2 and len(plain.err_lines) == 1 and "Traceback" not in plain.err
    debug = run_process(["--debug", "sample", missing, "--out", str(tmp_path / "s")])
    assert debug.rc == 1 and "Traceback" in debug.err and missing in debug.err


def test_debug_before_the_command_runs_it(tmp_path, capfd):
    r = run_inprocess(
        ["--debug", "data", "synth", "--n", "10", "--size", "16", "--out", str(tmp_path / "d")],
        capfd,
    )
    assert r.rc == 0 and layout.is_dataset_dir(tmp_path / "d")


@pytest.mark.parametrize(
    "argv",
    [
        ["sample", "x", "--n", "abc"],
        ["data", "synth"],
        ["bogus"],
        ["train", "x", "--set"],
        ["sample", "x", "--sampler", "euler"],
    ],
    ids=["bad-int", "missing-required", "unknown-command", "missing-value", "bad-choice"],
)
def test_usage_errors_are_one_line(argv, capfd):
    r = run_inprocess(argv, capfd)
    assert r.rc == 2
    (line,) = r.err_lines
    assert "error:" in line and "--help" in line


@pytest.mark.parametrize(
    ("error", "said"),
    [
        (OSError(28, "No space left on device", "/data/x.npy"), "no space left on /data/x.npy"),
        (RuntimeError("I/O error: No space left on device (os error 28)"), "its --out"),
    ],
    ids=["oserror", "wrapped"],
)
def test_a_full_disk_anywhere_is_one_line_not_an_internal_error(error, said):
    line = cli.error_line(error)
    assert line.startswith("error: no space left") and said in line and "internal" not in line
