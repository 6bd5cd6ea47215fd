"""The training step's cores follow the load (train.threads=0): all of them while the machine is
otherwise idle, one while another process keeps a core busy; fixed counts and OMP_NUM_THREADS
turn it off."""

import subprocess
import sys
import time

import pytest
import torch

from diffscape.train import threads as T

CPU = torch.device("cpu")


@pytest.fixture
def two_threads(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def fake_clock(monkeypatch, others_per_second: list[float]):
    """/proc/stat and our own CPU time as if other processes used these cores, in turn."""
    state = {"t": 0.0, "busy": 0.0, "i": 0}
    monkeypatch.setattr(T.time, "perf_counter", lambda: state["t"])
    monkeypatch.setattr(T.time, "sleep", lambda s: state.update(t=state["t"] + s))
    monkeypatch.setattr(T, "_own_seconds", lambda: 0.0)

    def busy() -> float:
        return state["busy"]

    def advance(seconds: float) -> None:
        state["busy"] += others_per_second[min(state["i"], len(others_per_second) - 1)] * seconds
        state["t"] += seconds
        state["i"] += 1

    monkeypatch.setattr(T, "_busy_seconds", busy)
    return advance


def test_one_thread_beside_a_busy_process_and_all_again_when_it_leaves(two_threads, monkeypatch):
    advance = fake_clock(monkeypatch, [1.0, 1.0, 0.0])
    said = []
    # the first look (0.2 s at start) sees 1 core busy: one thread from the first step
    monkeypatch.setattr(T.time, "sleep", lambda s: advance(s))
    cores = T.CoreSharing(0, CPU, said.append)
    assert torch.get_num_threads() == 1 and "1 thread" in said[-1]
    advance(T.EVERY_S + 0.1)
    cores.check()  # still busy: no change, nothing said
    assert torch.get_num_threads() == 1 and len(said) == 1
    advance(T.EVERY_S + 0.1)
    cores.check()
    assert torch.get_num_threads() == 2 and "2 threads" in said[-1]
    cores.close()
    assert torch.get_num_threads() == 2


def test_fixed_threads_and_omp_num_threads_turn_it_off(two_threads, monkeypatch):
    advance = fake_clock(monkeypatch, [1.0])
    cores = T.CoreSharing(1, CPU, print)
    assert torch.get_num_threads() == 1 and not cores.active
    advance(T.EVERY_S + 0.1)
    cores.check()
    cores.close()
    assert torch.get_num_threads() == 2  # what it found
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert not T.CoreSharing(0, CPU, print).active


def test_a_real_busy_process_is_seen(two_threads):
    """Against the real /proc/stat: a pure-Python loop keeps a core busy."""
    if not T._readable():
        pytest.skip("no /proc/stat here")
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)  # let it start
        said = []
        T.CoreSharing(0, CPU, said.append).close()
        assert said and "1 thread" in said[0], said
    finally:
        hog.kill()
        hog.wait()


def test_train_says_when_it_drops_to_one_thread(two_threads, monkeypatch, tmp_path, capsys):
    """Through train(): a neighbour seen at the start is said before the first step."""
    from fixtures_data import colour_dataset

    from diffscape.settings import presets
    from diffscape.train import train

    calls = {"n": 0}

    def busy() -> float:  # one core's worth more every time it is read
        calls["n"] += 1
        return float(calls["n"])

    monkeypatch.setattr(T, "_busy_seconds", busy)
    monkeypatch.setattr(T, "_own_seconds", lambda: 0.0)
    monkeypatch.setattr(T.time, "sleep", lambda s: None)
    ds = colour_dataset(tmp_path / "ds", n_train=16)
    over = ["model.channels=[16, 32]", "model.attention_resolutions=[16]", "train.steps=2",
            "train.batch_size=8", "train.sample_every_steps=0", "train.precision=fp32"]  # fmt: skip
    train(presets.resolve("tiny", over), ds.root, tmp_path / "r", progress=False)
    assert "training on 1 thread" in capsys.readouterr().err
    assert torch.get_num_threads() == 2  # given back at the end
