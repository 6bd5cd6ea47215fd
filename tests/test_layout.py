"""The foundations every command stands on: the --out rule and safe names (layout), the folder
lock (lock) and atomic files and folders (atomic). Locks are tested across real processes, and a
holder is really killed."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from diffscape.core import atomic, layout, lock
from diffscape.core.errors import DiffscapeError


def digest(root: Path) -> str:
    """Every path below ``root`` with its bytes: equal digests, nothing changed."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


# ---- layout.check_out ---------------------------------------------------------------------------


def make_run(p: Path) -> Path:
    p.mkdir(parents=True)
    (p / layout.RUN_JSON).write_text("{}")
    (p / layout.METRICS_JSONL).write_text('{"step": 1}\n')
    return p


def make_dataset(p: Path) -> Path:
    p.mkdir(parents=True)
    (p / layout.MANIFEST).write_text("{}")
    return p


def test_check_out_accepts_new_empty_and_same_kind(tmp_path):
    assert layout.check_out(tmp_path / "new" / "deeper", "run") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # checking creates nothing
    (tmp_path / "empty").mkdir()
    assert layout.check_out(tmp_path / "empty", "dataset") == tmp_path / "empty"
    (tmp_path / "locked").mkdir()
    (tmp_path / "locked" / layout.LOCK).touch()  # a lock file alone still counts as empty
    layout.check_out(tmp_path / "locked", "samples")
    layout.check_out(make_run(tmp_path / "run"), "run")
    layout.check_out(str(make_dataset(tmp_path / "ds")), "dataset", overwrite=True)
    with pytest.raises(layout.OutError, match="add --overwrite"):
        layout.check_out(tmp_path / "ds", "dataset")


@pytest.mark.parametrize(
    ("setup", "kind", "said"),
    [
        (lambda p: make_run(p), "dataset", "is a run folder"),
        (lambda p: make_dataset(p), "samples", "is a dataset folder"),
        (lambda p: p.write_text("a file"), "run", "is a file"),
        (
            lambda p: (p.mkdir(), (p / "thesis.tex").write_text("\\chapter{Results}")),
            "dataset",
            "not empty and not a diffscape folder",
        ),
        (
            lambda p: (p.mkdir(), (p / "chapters").mkdir(), (p / "chapters" / "1.tex").touch()),
            "judge",
            "not empty and not a diffscape folder",
        ),
        (
            lambda p: (
                p.mkdir(),
                (p.parent / "papers").mkdir(),
                (p.parent / "papers" / "a.tex").touch(),
                (p / "papers").symlink_to(p.parent / "papers"),
            ),
            "dataset",
            "not empty and not a diffscape folder",
        ),
        (lambda p: (p.mkdir(), (p / "empty").mkdir()), "dataset", "not empty"),
    ],
    ids=[
        "run-as-dataset",
        "dataset-as-samples",
        "file",
        "thesis",
        "thesis-subfolder",
        "only-a-link-to-a-folder",
        "only-an-empty-folder",
    ],  # fmt: skip
)
def test_check_out_refuses_other_things_naming_them(tmp_path, setup, kind, said):
    out = tmp_path / "thesis"
    setup(out)
    before = digest(tmp_path)
    with pytest.raises(layout.OutError) as e:
        layout.check_out(out, kind)
    message = str(e.value)
    assert said in message and str(out) in message and "\n" not in message
    assert isinstance(e.value, DiffscapeError)
    assert digest(tmp_path) == before


def test_overwrite_never_replaces_a_folder_holding_a_link(tmp_path):
    """A link inside a dataset (to a folder or a file, even named like diffscape's own) is a
    person's: --overwrite would delete it."""
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "notes.txt").write_text("mine")
    ds = make_dataset(tmp_path / "ds")
    (ds / "extra").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(layout.OutError, match="holds extra"):
        layout.check_out(ds, "dataset", overwrite=True)
    (ds / "extra").unlink()
    (ds / layout.images_file("val")).symlink_to(tmp_path / "elsewhere" / "notes.txt")
    with pytest.raises(layout.OutError, match="holds val_images.npy"):
        layout.check_out(ds, "dataset", overwrite=True)


def test_check_out_refuses_broken_link(tmp_path):
    (tmp_path / "link").symlink_to(tmp_path / "gone")
    with pytest.raises(layout.OutError, match="broken symbolic link"):
        layout.check_out(tmp_path / "link", "run")


def test_kind_of(tmp_path):
    assert layout.kind_of(make_run(tmp_path / "r")) == "run"
    assert layout.kind_of(tmp_path) is None
    assert layout.checkpoint_step(layout.checkpoint_name(42)) == 42
    assert layout.checkpoint_step("step-x") is None


# ---- layout.safe_component ----------------------------------------------------------------------

GOOD_NAMES = ["Coast", "Glacier Bay", "été", "a.b", "ratio 3:2", "0", "-", "猫", "a" * 200]
BAD_NAMES = [
    "../../../X",
    "/",
    "/tmp",
    "a/b",
    "a\\b",
    "..",
    ".",
    ".lock",
    ".out.tmp-12",
    "",
    "C:",
    "c:x",
    "a\x00b",
    "a\nb",
    "tab\t",
    "\x7f",
    "a" * 201,
    "é" * 101,  # 202 bytes in UTF-8
    "x" * 300,
    " lead",
    "trail ",
    "\u3000wide",
    3,
    None,
    b"Coast",
]


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_safe_component_keeps_good_names(name):
    assert layout.safe_component(name, "class name") == name


@pytest.mark.parametrize("name", BAD_NAMES, ids=[repr(n)[:20] for n in BAD_NAMES])
def test_safe_component_refuses_bad_names(name):
    with pytest.raises(DiffscapeError) as e:
        layout.safe_component(name, "class name")
    message = str(e.value)
    assert message.startswith("class name ") and "\n" not in message


# ---- lock ---------------------------------------------------------------------------------------

HOLDER = textwrap.dedent(
    """
    import sys, time
    from diffscape.core import lock
    how, folder = sys.argv[1], sys.argv[2]
    with lock.hold(folder, "run folder"):
        print("held", flush=True)
        time.sleep(600)
    """
)


def start_holder(how: str, folder: Path) -> subprocess.Popen:
    p = subprocess.Popen(
        [sys.executable, "-c", HOLDER, how, str(folder)], stdout=subprocess.PIPE, text=True
    )
    assert p.stdout is not None and p.stdout.readline().strip() == "held"
    return p


def hold_once(how: str, folder: Path) -> None:
    with lock.hold(folder, "run folder"):
        pass


@pytest.mark.parametrize("how", ["hold"])
def test_second_holder_in_another_process_is_refused_until_the_first_is_killed(tmp_path, how):
    folder = tmp_path / "runs" / "a"
    holder = start_holder(how, folder)
    try:
        with pytest.raises(lock.FolderBusy) as e:
            hold_once(how, folder)
        message = str(e.value)
        assert f"process {holder.pid} " in message and str(folder) in message
        assert "\n" not in message and isinstance(e.value, DiffscapeError)
    finally:
        holder.send_signal(signal.SIGKILL)  # no chance to clean up: the kernel drops the lock
        holder.wait()
    hold_once(how, folder)  # never a stale lock
    hold_once(how, folder)  # and released again after a normal exit


def test_hold_creates_the_folder_and_a_lone_lock_keeps_it_empty(tmp_path):
    with lock.hold(tmp_path / "new", "run folder") as folder:
        assert folder.is_dir()
        assert (folder / layout.LOCK).read_text().startswith(f"{os.getpid()} ")
    layout.check_out(tmp_path / "new", "dataset")  # only the lock file in it: still "empty"


# ---- atomic -------------------------------------------------------------------------------------


def test_write_json_leaves_no_temporaries(tmp_path):
    atomic.write_json(tmp_path / "a.json", {"x": 1, "p": tmp_path})
    atomic.write_json(tmp_path / "a.json", {"x": 2})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 2}
    assert (tmp_path / "a.json").read_text().endswith("}\n")
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_failing_writer_leaves_the_old_file_intact(tmp_path):
    path = tmp_path / "a.json"
    atomic.write_json(path, {"x": 1})
    before = path.read_bytes()
    with pytest.raises(RuntimeError), atomic.atomic_path(path) as tmp:
        tmp.write_text('{"x": ')  # half written, then the writer fails
        raise RuntimeError("disk on fire")
    circular: list = []
    circular.append(circular)
    with pytest.raises(ValueError):
        atomic.write_json(path, circular)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_atomic_path_keeps_the_suffix_for_writers_that_need_it(tmp_path):
    from PIL import Image

    with atomic.atomic_path(tmp_path / "x.npy") as tmp:
        np.save(tmp, np.arange(3))  # np.save appends ".npy" to names without it
    with atomic.atomic_path(tmp_path / "x.png") as tmp:
        Image.new("RGB", (2, 2)).save(tmp)  # PIL picks the format from the suffix
    assert np.load(tmp_path / "x.npy").tolist() == [0, 1, 2]
    assert Image.open(tmp_path / "x.png").size == (2, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npy", "x.png"]


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_clean_stale_tmp_removes_dead_writers_leftovers_only(tmp_path):
    dead = dead_pid()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    t = layout.TMP_INFIX
    try:
        names = {
            f".ds{t}{dead}": "ours",  # a folder with the marker
            f".a.npy{t}{dead}.npy": "file",
            f".b.json{t}{dead}": "file",
            f".ds{t}{live.pid}": "ours",
            f".c.json{t}{live.pid}": "file",
            f".d.json{t}{os.getpid()}": "file",
            f".e{t}{dead}": "dir",  # the name, but no marker: not ours
            f".b.tmp-{dead}": "dir",  # a person's folders and files, named like old temporaries
            f".mydata.tmp-{dead}": "file",
            "keep.tmp-1": "file",
            ".keep": "file",
        }
        for name, what in names.items():
            if what in ("dir", "ours"):
                (tmp_path / name).mkdir()
                (tmp_path / name / "half.npy").write_bytes(b"x")
                if what == "ours":
                    (tmp_path / name / layout.TMP_MARKER).write_text("1\n")
            else:
                (tmp_path / name).write_bytes(b"x")
        removed = atomic.clean_stale_tmp(tmp_path)
        gone = {f".ds{t}{dead}", f".a.npy{t}{dead}.npy", f".b.json{t}{dead}"}
        assert {p.name for p in removed} == gone
        assert {p.name for p in tmp_path.iterdir()} == set(names) - gone
    finally:
        live.kill()
        live.wait()
    assert atomic.clean_stale_tmp(tmp_path / "missing") == []


def test_tmp_dir_beside_and_publish_dir_replace_a_folder_whole(tmp_path):
    out = tmp_path / "samples"
    out.mkdir()
    (out / "old.png").write_bytes(b"old")
    stale = atomic.make_tmp_dir(tmp_path / f".samples{layout.TMP_INFIX}{dead_pid()}")
    tmp = atomic.tmp_dir_beside(out)
    assert not stale.exists()  # a killed writer's leftover is cleaned first
    assert tmp.parent == out.parent and tmp.is_dir()
    assert [p.name for p in tmp.iterdir()] == [layout.TMP_MARKER]
    (tmp / "new.png").write_bytes(b"new")
    assert (out / "old.png").is_file()  # readers see the old folder until the rename
    atomic.publish_dir(tmp, out)
    assert [p.name for p in out.iterdir()] == ["new.png"]  # replaced, never merged; no marker
    assert [p.name for p in tmp_path.iterdir()] == ["samples"]
    tmp2 = atomic.tmp_dir_beside(tmp_path / "fresh" / "ds")  # parents are created
    atomic.publish_dir(tmp2, tmp_path / "fresh" / "ds")
    assert (tmp_path / "fresh" / "ds").is_dir()


def test_publish_dir_puts_the_old_folder_back_when_the_rename_fails(tmp_path):
    out = tmp_path / "samples"
    out.mkdir()
    (out / "old.png").write_bytes(b"old")
    tmp = atomic.tmp_dir_beside(out)
    shutil.rmtree(tmp)  # the new folder vanished: its rename fails
    with pytest.raises(FileNotFoundError):
        atomic.publish_dir(tmp, out)
    assert [p.name for p in out.iterdir()] == ["old.png"]
    assert [p.name for p in tmp_path.iterdir()] == ["samples"]


def test_publish_dir_refuses_a_link(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(ValueError, match="symbolic link"):
        atomic.publish_dir(atomic.tmp_dir_beside(tmp_path / "x"), tmp_path / "link")


def test_tmp_dir_beside_current_folder(tmp_path, monkeypatch):
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    tmp = atomic.tmp_dir_beside(".")
    assert tmp.parent == tmp_path and tmp.name.startswith(f".here{layout.TMP_INFIX}")


def test_atomic_write_onto_a_folder_names_the_folder(tmp_path):
    (tmp_path / "thesis").mkdir()
    with pytest.raises(IsADirectoryError) as e:
        atomic.write_text(tmp_path / "thesis", "x")
    assert e.value.filename == str(tmp_path / "thesis")
    assert [p.name for p in tmp_path.iterdir()] == ["thesis"]
