"""Verifiable checkpoints: the marker lists every file with size and sha256, loading verifies it,
damaged checkpoints are skipped (named on stderr) in favour of the newest intact one, and no file
in a checkpoint can make the tool unpickle, trace back or allocate without bound. The CLI cases
run the real ``diffscape`` command (``diffscape.cli.main``) on a tiny trained run."""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fixtures_data import colour_dataset

from diffscape import checkpoint
from diffscape.checkpoint import verify
from diffscape.cli import main
from diffscape.core import layout
from diffscape.settings import presets
from diffscape.train import train

TINY = [
    "model.channels=[16, 32]",
    "model.attention_resolutions=[16]",
    "model.conditional=true",
    "train.batch_size=8",
    "train.log_every_steps=1",
    "train.sample_every_steps=0",
    "train.warmup_steps=2",
    "train.steps=4",
    "train.checkpoint_every_steps=2",
    "train.keep_last=2",
]
MODEL_WEIGHTS = f"{layout.MODEL_DIR}/{layout.UNET_WEIGHTS}"


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return colour_dataset(tmp_path_factory.mktemp("data") / "ds", n_train=24)


@pytest.fixture(scope="module")
def trained(ds, tmp_path_factory):
    """A tiny run with checkpoints at steps 2 and 4 (copied by each test before damage)."""
    run = tmp_path_factory.mktemp("runs") / "r"
    train(presets.resolve("tiny", TINY), ds.root, run, progress=False)
    assert [s for s, _ in checkpoint.list_checkpoints(run)] == [2, 4]
    return run


@pytest.fixture
def run(trained, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(trained, copy)
    return copy


def ckpt(run: Path, step: int) -> Path:
    return run / layout.CHECKPOINTS / layout.checkpoint_name(step)


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def cli(capsys, *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_marker_lists_every_file_with_size_and_sha256(run):
    folder = ckpt(run, 4)
    marker = json.loads((folder / layout.COMPLETE).read_text())
    on_disk = {
        p.relative_to(folder).as_posix(): p
        for p in folder.rglob("*")
        if p.is_file() and p.name != layout.COMPLETE
    }
    assert set(marker["files"]) == set(on_disk) and set(verify.REQUIRED) <= set(on_disk)
    for name, path in on_disk.items():
        data = path.read_bytes()
        assert marker["files"][name] == {
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
    assert checkpoint.checkpoint_problem(folder) is None


@pytest.mark.parametrize(
    "damage, problem",
    [
        (truncate, r"size \d+ != \d+"),
        (lambda p: p.write_bytes(p.read_bytes()[:-1] + b"\0"), "sha256 differs"),
        (lambda p: p.unlink(), "missing"),
    ],
)
def test_damaged_latest_is_skipped_and_named(run, capsys, damage, problem):
    damage(ckpt(run, 4) / MODEL_WEIGHTS)
    assert checkpoint.latest_checkpoint(run) == ckpt(run, 2)
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"checkpoint step-0000004 is damaged ({MODEL_WEIGHTS}: ")
    assert line.endswith("; using step-0000002")
    assert re.search(problem, line)
    assert checkpoint.resolve_checkpoint(run) == ckpt(run, 2)
    with pytest.raises(checkpoint.CheckpointError, match="damaged"):
        checkpoint.resolve_checkpoint(ckpt(run, 4))  # named explicitly: no silent substitute


def test_truncated_latest_sample_export_resume_use_previous(run, ds, tmp_path, capsys):
    truncate(ckpt(run, 4) / MODEL_WEIGHTS)
    code, err = cli(capsys, "sample", run, "--out", tmp_path / "s", "--n", "2", "--steps", "2")
    assert code == 0, err
    assert "checkpoint step-0000004 is damaged" in err and "using step-0000002" in err
    made = json.loads((tmp_path / "s" / layout.SAMPLES_JSON).read_text())
    assert Path(made["checkpoint"]).name == "step-0000002"

    code, err = cli(capsys, "export", run, "--out", tmp_path / "e")
    assert code == 0, err
    assert "checkpoint step-0000004 is damaged" in err and "using step-0000002" in err
    assert (tmp_path / "e").is_dir() and any((tmp_path / "e").rglob("*.safetensors"))

    sets = [a for s in TINY for a in ("--set", s)]
    code, err = cli(capsys, "train", ds.root, "--out", run, "--resume", "--no-progress", *sets)
    assert code == 0, err
    assert "checkpoint step-0000004 is damaged" in err and "from step-0000002" in err
    # the resumed run wrote step 4 again, intact
    assert checkpoint.latest_checkpoint(run) == ckpt(run, 4)
    assert checkpoint.checkpoint_problem(ckpt(run, 4)) is None


def test_no_intact_checkpoint_is_one_line(run, tmp_path, capsys):
    truncate(ckpt(run, 4) / MODEL_WEIGHTS)
    (ckpt(run, 2) / layout.STATE_JSON).write_text("{}")
    with pytest.raises(checkpoint.CheckpointError, match="no checkpoint of .* is intact"):
        checkpoint.latest_checkpoint(run)
    code, err = cli(capsys, "sample", run, "--out", tmp_path / "s", "--n", "2")
    assert code == 2
    line = one_line(err)
    assert "step-0000004" in line and "step-0000002" in line and "backup" in line
    assert not (tmp_path / "s").exists()


class Evil:
    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return (os.system, (f"touch {self.sentinel}",))


def _garbage(folder: Path, sentinel: Path) -> None:
    (folder / MODEL_WEIGHTS).write_bytes(os.urandom(5000))


def _pickle_rehashed(folder: Path, sentinel: Path) -> None:
    """An attacker who also rewrites the marker to match."""
    torch.save({"x": Evil(sentinel)}, folder / MODEL_WEIGHTS)
    checkpoint.write_marker(folder)


@pytest.mark.parametrize("plant", [_garbage, _pickle_rehashed])
@pytest.mark.parametrize("command", ["sample", "export", "train"])
def test_garbage_or_pickle_as_weights_is_one_line(run, ds, tmp_path, capsys, plant, command):
    shutil.rmtree(ckpt(run, 2))  # the only checkpoint is the planted one
    sentinel = tmp_path / "PWNED"
    plant(ckpt(run, 4), sentinel)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    if command == "train":
        sets = [a for s in [*TINY, "train.steps=6"] for a in ("--set", s)]
        argv = ["train", ds.root, "--out", run, "--resume", "--no-progress", *sets]
    else:
        argv = [command, run, "--out", tmp_path / "o"] + (
            ["--n", "2"] if command == "sample" else []
        )
    code, err = cli(capsys, *argv)
    assert code == 2
    line = one_line(err)
    assert "step-0000004" in line and "safetensors" in line
    assert not sentinel.exists()
    assert not (tmp_path / "o").exists()
    after = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != layout.LOCK}
    assert after == {p: b for p, b in before.items() if p.name != layout.LOCK}


def test_marker_that_is_not_json_is_damaged_in_one_line(run, tmp_path, capsys):
    # e.g. the plain "complete" of diffscape before 2 December 2026: nothing to verify against
    for step in (2, 4):
        (ckpt(run, step) / layout.COMPLETE).write_text("complete\n")
    with pytest.raises(checkpoint.CheckpointError, match="not JSON.*train again"):
        checkpoint.latest_checkpoint(run)
    code, err = cli(capsys, "sample", run, "--out", tmp_path / "s", "--n", "2", "--steps", "2")
    assert code == 2
    line = one_line(err)
    assert "step-0000004" in line and "not JSON" in line and "train again" in line
    assert not (tmp_path / "s").exists()


def test_each_file_is_read_once(run, monkeypatch):
    reads: list[Path] = []
    real = verify._sha256

    def counting(path, **kw):
        reads.append(path)
        return real(path, **kw)

    monkeypatch.setattr(verify, "_sha256", counting)
    verify._verify.cache_clear()
    latest = checkpoint.latest_checkpoint(run)
    n_files = len(json.loads((latest / layout.COMPLETE).read_text())["files"])
    assert len(reads) == len(set(reads)) == n_files
    checkpoint.checkpoint_problem(latest)  # as load_training_state does after the look-up
    assert len(reads) == n_files
    truncate(latest / layout.RNG_TENSORS)  # a change after the first check is still seen
    assert "rng.safetensors: size" in checkpoint.checkpoint_problem(latest)


def test_leftovers_of_dead_savers_are_removed(run):
    folder = run / layout.CHECKPOINTS
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    from diffscape.core.atomic import tmp_name

    dead_tmp = folder / f".step-0000006{layout.TMP_INFIX}{dead.pid}"
    live_tmp = folder / tmp_name("step-0000010")  # this process: still writing
    incomplete = folder / "step-0000012"  # no marker
    for p in (dead_tmp, live_tmp, incomplete):
        (p / "model").mkdir(parents=True)
    for p in (dead_tmp, live_tmp):
        (p / layout.TMP_MARKER).write_text("1\n")
    checkpoint.prune_checkpoints(run, keep_last=5)
    assert live_tmp.is_dir()
    assert not dead_tmp.exists() and not incomplete.exists()
    assert [s for s, _ in checkpoint.list_checkpoints(run)] == [2, 4]


def test_hostile_model_config_fails_before_allocating(run, tmp_path, capsys, monkeypatch):
    """A checkpoint whose config.json files ask for 10**9 class embeddings (marker rehashed, as
    an attacker would): one line, and diffusers is never asked to build it."""
    from diffusers import UNet2DModel

    def never(*a, **k):
        raise AssertionError("from_pretrained reached")

    monkeypatch.setattr(UNet2DModel, "from_pretrained", never)
    folder = ckpt(run, 4)
    for name in (f"{layout.MODEL_DIR}/config.json", f"{layout.EMA_DIR}/config.json"):
        data = json.loads((folder / name).read_text())
        data["num_class_embeds"] = 10**9
        (folder / name).write_text(json.dumps(data))
    data = json.loads((folder / layout.CONFIG_JSON).read_text())
    data["model"]["num_classes"] = 10**9 - 1
    (folder / layout.CONFIG_JSON).write_text(json.dumps(data))
    checkpoint.write_marker(folder)
    code, err = cli(capsys, "sample", folder, "--out", tmp_path / "s", "--n", "2")
    assert code == 2
    line = one_line(err)
    assert "num_class" in line or "GiB" in line


def test_marker_cannot_point_outside_or_at_special_files(run, tmp_path):
    folder = ckpt(run, 4)
    marker = json.loads((folder / layout.COMPLETE).read_text())
    marker["files"]["../../outside"] = {"size": 1, "sha256": "0" * 64}
    (folder / layout.COMPLETE).write_text(json.dumps(marker))
    assert "not a safe path" in checkpoint.checkpoint_problem(folder)
    weights = folder / MODEL_WEIGHTS
    weights.unlink()
    weights.symlink_to(ckpt(run, 2) / MODEL_WEIGHTS)
    checkpoint.write_marker(folder)  # rehashed through the link, as an attacker would
    assert checkpoint.checkpoint_problem(folder) == f"{MODEL_WEIGHTS}: a symbolic link"
    weights.unlink()
    os.mkfifo(weights)  # reading it would block forever
    assert checkpoint.checkpoint_problem(folder) == f"{MODEL_WEIGHTS}: not a regular file"
