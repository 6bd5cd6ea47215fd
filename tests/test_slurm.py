"""Studies on a Slurm cluster, for real: a one-node Slurm (munged, slurmctld, slurmd) started for
these tests, a two-run sweep submitted with --launcher slurm, one job cancelled mid-training
(recorded as failed with its log), then the same command resubmits only that run, which resumes
to the losses of the run never stopped. Needs root and the Debian packages slurm-wlm and munge
(skips, saying why, without them). And the --dry-run of jobs, which needs neither.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fixtures_data import colour_dataset

from diffscape import checkpoint
from diffscape.cli import main
from diffscape.core import layout
from diffscape.core.errors import DiffscapeError

DAEMONS = ("munged", "slurmctld", "slurmd")

SWEEP = """
dataset = "DATA"
preset = "tiny"
[base]
model = { channels = [16, 32], attention_resolutions = [16], conditional = true }
train = { steps = STEPS, batch_size = 8, log_every_steps = 1, sample_every_steps = 0, checkpoint_every_steps = 4, warmup_steps = 2 }
[sample]
n = 2
steps = 3
[evaluate]
enabled = false
[judge]
enabled = false
[slurm]
cpus = 1
minutes = 10
[[runs]]
name = "a"
[[runs]]
name = "b"
"""


def sweep_file(tmp: Path, data: Path, steps: int) -> Path:
    """Two trainings, the same but for their names: their losses must be equal."""
    path = tmp / "sweep.toml"
    path.write_text(SWEEP.replace("DATA", str(data)).replace("STEPS", str(steps)))
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _slurm_conf(root: Path, sock: Path) -> str:
    host = socket.gethostname().split(".")[0]
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    mem_kb = next(int(ln.split()[1]) for ln in meminfo if ln.startswith("MemTotal"))
    return f"""\
ClusterName=diffscape-test
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={sock}
CredType=cred/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
ReturnToService=2
NodeName={host} CPUs={os.cpu_count()} RealMemory={max(512, mem_kb // 1024 - 2048)} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
"""


def _stop(root: Path) -> None:
    """Every job cancelled, then each daemon (slurmd, slurmctld, munged) ended by its pid file."""
    subprocess.run(["scancel", "--partition=debug"], capture_output=True)
    for name in reversed(DAEMONS):
        pid_file = root / f"{name}.pid"
        if not pid_file.is_file():
            continue
        pid = int(pid_file.read_text())
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                break
            for _ in range(50):
                if not Path(f"/proc/{pid}").exists():
                    break
                time.sleep(0.2)
            else:
                continue  # still there: SIGKILL
            break


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A one-node Slurm for this module's tests; SLURM_CONF names it meanwhile."""
    missing = [b for b in (*DAEMONS, "sbatch", "squeue", "scancel") if shutil.which(b) is None]
    if missing:
        pytest.skip(f"no {', '.join(missing)}: apt-get install slurm-wlm munge")
    if os.geteuid() != 0:
        pytest.skip("a test Slurm needs root (its daemons run jobs as any user)")
    root = tmp_path_factory.mktemp("slurm")
    for sub in ("state", "spool"):
        (root / sub).mkdir()
    key, sock = root / "munge.key", root / "munge.sock"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    conf = root / "slurm.conf"
    conf.write_text(_slurm_conf(root, sock))
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(conf)
    try:
        files = [f"--{k}-file={root / f'munged.{k}'}" for k in ("pid", "log", "seed")]
        subprocess.run(["munged", "--force", f"--socket={sock}", f"--key-file={key}", *files],
                       check=True)  # fmt: skip
        subprocess.run(["slurmctld"], check=True)
        subprocess.run(["slurmd"], check=True)
        for _ in range(150):
            state = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
            if state.stdout.strip() == "idle":
                break
            time.sleep(0.2)
        else:
            logs = "\n".join((root / f"{d}.log").read_text()[-2000:] for d in DAEMONS[1:])
            pytest.fail(f"the test Slurm's node is not idle: {state.stdout}{state.stderr}\n{logs}")
        yield root
    finally:
        _stop(root)
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return colour_dataset(tmp_path_factory.mktemp("data") / "ds", n_train=24, n_test=6)


def losses(run: Path) -> list[float]:
    rows = [json.loads(x) for x in (run / layout.METRICS_JSONL).read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def _sweep(cmd: list[str], **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **kw)  # fmt: skip


def _job_id(name: str) -> str:
    out = subprocess.run(["squeue", "-h", "-n", name, "-o", "%i"], capture_output=True, text=True)
    return out.stdout.split()[0]


def test_a_cancelled_job_is_recorded_and_its_run_resumes_exactly(slurm, ds, tmp_path):
    steps = 80
    spec, runs = sweep_file(tmp_path, ds.root, steps), tmp_path / "runs"
    cmd = [sys.executable, "-m", "diffscape", "sweep", str(spec), "--out", str(runs),
           "--launcher", "slurm", "--no-progress"]  # fmt: skip
    first = _sweep(cmd)
    deadline = time.monotonic() + 90
    while not checkpoint.list_checkpoints(runs / "b"):  # b has trained: cancel it
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.1)
    job = _job_id("b")
    subprocess.run(["scancel", job], check=True)
    out, err = first.communicate(timeout=120)
    assert first.returncode == 1, out + err
    assert "a: job " in err and f"b: job {job} on Slurm" in err  # the narrator: which job runs what
    log = runs / layout.SWEEP_LOGS / "b" / f"{job}_0_log.out"
    assert "1 of 2 runs finished" in out
    line = next(ln for ln in out.splitlines() if ln.startswith("  b: failed"))
    assert f"job {job} (CANCELLED): stopped by SIGTERM after step" in line and str(log) in line
    assert "checkpoint saved; the same sweep command resumes it" in line
    assert "stopped by SIGTERM" in log.read_text()
    stopped = checkpoint.list_checkpoints(runs / "b")[-1][0]
    assert 4 <= stopped < steps
    page = (runs / layout.REPORT_HTML).read_text()
    assert "CANCELLED" in page  # the report shows the failure

    again = _sweep(cmd)
    out, err = again.communicate(timeout=120)
    assert again.returncode == 0, out + err
    assert "2 of 2 runs finished" in out
    assert "a: job" not in err and "b: job" in err  # only the unfinished run is resubmitted
    assert f"from step-{stopped:07d}" in job_log_text(runs, "b")
    assert len(losses(runs / "b")) == steps
    assert losses(runs / "a") == losses(runs / "b")  # bit-identical: the same run, resumed
    ema = Path("ema") / "diffusion_pytorch_model.safetensors"
    weights = [(checkpoint.latest_checkpoint(runs / r) / ema).read_bytes() for r in "ab"]
    assert weights[0] == weights[1]


def job_log_text(runs: Path, training: str) -> str:
    return "".join(p.read_text() for p in (runs / layout.SWEEP_LOGS / training).glob("*.out"))


def test_dry_run_lists_the_jobs(ds, tmp_path, capsys):
    """--dry-run says which jobs would be submitted and how (no cluster needed); the flags win
    over the file's [slurm]; options of the other launcher are refused."""
    spec = str(sweep_file(tmp_path, ds.root, 4))
    assert main(["sweep", spec, "--dry-run", "--launcher", "slurm", "--slurm-partition", "gpu",
                 "--slurm-gpus", "1"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "2 Slurm jobs, all submitted at once" in out
    assert (
        "  a: sbatch --job-name=a --partition=gpu --cpus-per-task=1 --gpus-per-node=1 --time=10"
        in out
    )
    assert main(["sweep", spec, "--dry-run", "--jobs", "2"]) == 0
    out = capsys.readouterr().out
    assert "2 jobs on this machine, 2 at a time" in out and "  b: on " in out
    assert main(["sweep", spec, "--dry-run"]) == 0
    assert "one after another in this process" in capsys.readouterr().out
    assert main(["sweep", spec, "--dry-run", "--slurm-cpus", "2"]) == 2
    assert "--slurm-* options are for --launcher slurm" in capsys.readouterr().err
    assert main(["sweep", spec, "--dry-run", "--launcher", "slurm", "--jobs", "2"]) == 2
    assert "--jobs is for --launcher local" in capsys.readouterr().err


def test_slurm_needs_sbatch(ds, tmp_path, monkeypatch):
    from diffscape.sweep import run_sweep

    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch on it
    with pytest.raises(DiffscapeError, match="no sbatch"):
        run_sweep(sweep_file(tmp_path, ds.root, 4), tmp_path / "runs", launcher="slurm")
    assert not (tmp_path / "runs").exists()
