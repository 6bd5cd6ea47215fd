"""One trainer per run folder (issue 13): two `diffscape train` into the same --out at once, one
refuses in one line; leftovers of killed writers are cleaned; --out of another kind is refused."""

import json
import os
import subprocess

import pytest
from fixtures_data import colour_dataset
from test_train import ENV, _train_cmd, cfg

from diffscape import checkpoint
from diffscape.core import layout
from diffscape.train import train


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return colour_dataset(tmp_path_factory.mktemp("data") / "ds", n_train=40)


def _steps(run) -> list[int]:
    return [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.timeout(600)
def test_two_trainers_one_folder_one_refuses_and_the_run_resumes(ds, tmp_path):
    run = tmp_path / "r"
    # A budget (not a step count) ends the winner, so that it still trains whenever the loser,
    # started at the same moment, reaches the lock, however loaded the machine is.
    cmd = _train_cmd(ds.root, run, "train.steps=100000", "train.checkpoint_every_steps=0",
                     "train.lr_schedule=constant") + ["--minutes", "0.25"]  # fmt: skip
    procs = [subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]  # fmt: skip
    outs = [p.communicate(timeout=300) for p in procs]
    done = [(p.returncode, out, err) for p, (out, err) in zip(procs, outs, strict=True)]
    codes = sorted(rc for rc, _, _ in done)
    assert codes == [0, 2], done
    _, _, refused = next(d for d in done if d[0] == 2)
    lines = refused.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in refused, refused
    winner = next(p for p, d in zip(procs, done, strict=True) if d[0] == 0)
    print(lines[0])
    assert "in use by process" in lines[0] and f"process {winner.pid} " in lines[0], lines[0]

    steps = _steps(run)
    assert steps == list(range(1, len(steps) + 1))  # one writer: no doubled lines
    assert [s for s, _ in checkpoint.list_checkpoints(run)] == [steps[-1]]
    total = steps[-1] + 2
    more = subprocess.run(
        _train_cmd(ds.root, run, f"train.steps={total}", "train.checkpoint_every_steps=0",
                   "train.lr_schedule=constant") + ["--resume"],
        env=ENV, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert more.returncode == 0, more.stderr
    assert _steps(run) == list(range(1, total + 1))
    assert [s for s, _ in checkpoint.list_checkpoints(run)] == [steps[-1], total]


def test_lock_is_held_while_training_and_leftovers_are_cleaned(ds, tmp_path):
    from diffscape.core.lock import FolderBusy, hold

    run = tmp_path / "r"
    run.mkdir()
    dead = 2**22 + 12345  # above the default pid_max: no such process
    t = layout.TMP_INFIX  # this program's temporaries, of a killed writer
    stale = [run / f".run.json{t}{dead}", run / f".metrics.jsonl{t}{dead}"]
    for p in stale:
        p.write_text("half-written")
    seen = []

    def on_log(record: dict) -> None:  # called mid-run, while train() holds the folder
        busy = pytest.raises(FolderBusy, match=f"in use by process {os.getpid()}")
        with busy, hold(run, "run folder"):
            pass
        seen.append(record["step"])

    train(cfg("train.steps=2"), ds.root, run, progress=False, on_log=on_log)
    assert seen == [1, 2]
    assert not any(p.exists() for p in stale)
    with hold(run, "run folder"):  # released at the end
        pass


def test_out_of_another_kind_is_refused_untouched(ds, tmp_path):
    before = {p.name: p.read_bytes() for p in ds.root.iterdir() if p.is_file()}
    with pytest.raises(layout.OutError, match="dataset folder"):
        train(cfg("train.steps=1"), ds.root, ds.root, progress=False)
    assert {p.name: p.read_bytes() for p in ds.root.iterdir() if p.is_file()} == before
    thesis = tmp_path / "thesis"
    thesis.mkdir()
    (thesis / "chapter1.tex").write_text("precious")
    with pytest.raises(layout.OutError, match="not a diffscape folder"):
        train(cfg("train.steps=1"), ds.root, thesis, progress=False)
    assert sorted(p.name for p in thesis.iterdir()) == ["chapter1.tex"]
