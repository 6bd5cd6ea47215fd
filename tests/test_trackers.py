"""Training logs in the trackers people use, through Accelerate's tracker API (train.log_with):
TensorBoard files where they always were, W&B offline files in the run, and a real MLflow tracking
server (SQLite store, on 127.0.0.1) that lists the run with its losses, LR, img/s, config and grid.
Each skips with the reason when its package is not installed (`pip install 'diffscape[mlflow]'`)."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from fixtures_data import colour_dataset

from diffscape.settings import presets
from diffscape.settings.engine import ConfigError
from diffscape.train import train

TINY = [
    "model.channels=[16, 32]",
    "model.attention_resolutions=[16]",
    "model.conditional=true",
    "train.batch_size=8",
    "train.log_every_steps=2",
    "train.warmup_steps=2",
    "train.steps=4",
    "train.sample_every_steps=4",
    "train.sample_steps=2",
]


def cfg(*extra: str):
    return presets.resolve("tiny", TINY + list(extra))


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return colour_dataset(tmp_path_factory.mktemp("data") / "ds", n_train=24)


def _installed(name: str) -> bool:
    try:
        __import__(name)
    except ImportError:
        return False
    return True


def train_cli(ds, run: Path, tracker: str, env: dict[str, str]) -> None:
    """`diffscape train` in its own process, as a user runs it, logging to ``tracker``."""
    sets = [a for s in [*TINY, f"train.log_with={tracker}"] for a in ("--set", s)]
    cmd = [sys.executable, "-m", "diffscape", "train", str(ds.root), "--out", str(run),
           "--no-progress", *sets]  # fmt: skip
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]


def test_tensorboard_default_writes_the_same_files_as_before(ds, tmp_path):
    if not _installed("tensorboard"):
        pytest.skip("tensorboard is not installed (pip install 'diffscape[tensorboard]')")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert cfg().train.log_with == "tensorboard"  # the default
    train(cfg(), ds.root, tmp_path / "r", progress=False)
    tb = tmp_path / "r" / "tensorboard"
    files = [p.relative_to(tb) for p in tb.rglob("*") if p.is_file()]
    # one event file directly in RUN/tensorboard/, as the hand-written SummaryWriter wrote it:
    # no hparams.yml or hparams sub-run from Accelerate's store_init_configuration
    assert len(files) == 1 and files[0].name.startswith("events.out.tfevents"), files
    acc = EventAccumulator(str(tb))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/grad_norm", "train/images_per_second"} <= tags
    assert [e.step for e in acc.Scalars("train/loss")] == [2, 4]


def test_off_writes_no_tracker_files_and_a_missing_package_is_one_line(ds, tmp_path, monkeypatch):
    train(cfg("train.log_with=off"), ds.root, tmp_path / "r", progress=False)
    assert not (tmp_path / "r" / "tensorboard").exists()
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    with pytest.raises(ConfigError, match=r"pip install 'diffscape\[wandb\]'"):
        train(cfg("train.log_with=wandb"), ds.root, tmp_path / "w", progress=False)
    assert not (tmp_path / "w").exists()  # refused before anything was written


def test_wandb_offline_files_appear_in_the_run(ds, tmp_path):
    if not _installed("wandb"):
        pytest.skip("wandb is not installed (pip install 'diffscape[wandb]')")
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true",
           "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"), "OMP_NUM_THREADS": "1"}  # fmt: skip
    run = tmp_path / "r"
    train_cli(ds, run, "wandb", env)
    runs = list((run / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list((run / "wandb").iterdir())
    (log,) = runs[0].glob("*.wandb")  # the run's log, what `wandb sync` uploads
    records = log.read_bytes()  # protobuf records: the names are there as bytes
    for name in (b"train.lr", b"model.channels", b"train/loss", b"train/images_per_second"):
        assert name in records, name


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    """A real MLflow tracking server on 127.0.0.1 with a SQLite store, stopped after the test."""
    if not _installed("mlflow"):
        pytest.skip("mlflow is not installed (pip install 'diffscape[mlflow]')")
    port = _free_port()
    store = tmp_path / "mlflow"
    store.mkdir()
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
           "--artifacts-destination", str(store / "artifacts"), "--workers", "1"]  # fmt: skip
    log = open(store / "server.log", "w")  # noqa: SIM115 - closed below
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        t0 = time.time()
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.time() - t0 > 120:
                pytest.skip(
                    f"the MLflow server did not start: {(store / 'server.log').read_text()[-500:]}"
                )
            time.sleep(0.5)
        yield uri
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
        log.close()


def test_mlflow_server_lists_the_run_with_metrics_config_and_grid(ds, tmp_path, mlflow_server):
    from mlflow.tracking import MlflowClient

    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server, "OMP_NUM_THREADS": "1"}
    run = tmp_path / "my-run"
    train_cli(ds, run, "mlflow", env)

    client = MlflowClient(tracking_uri=mlflow_server)
    exp = client.get_experiment_by_name("diffscape")
    (found,) = client.search_runs([exp.experiment_id])
    assert found.info.run_name == "my-run" and found.info.status == "FINISHED"
    ours = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    for key in ("loss", "lr", "images_per_second"):
        history = client.get_metric_history(found.info.run_id, f"train/{key}")
        assert [m.step for m in history] == [r["step"] for r in ours]
        assert [m.value for m in history] == pytest.approx([r[key] for r in ours])
    params = found.data.params
    assert params["train.batch_size"] == "8" and params["model.channels"] == "[16, 32]"
    artifacts = [a.path for a in client.list_artifacts(found.info.run_id)]
    assert any(a.endswith(".png") for a in artifacts), artifacts
    grid = Path(client.download_artifacts(found.info.run_id, artifacts[0], str(tmp_path / "dl")))
    assert grid.read_bytes() == next((run / "samples").glob("*.png")).read_bytes()
