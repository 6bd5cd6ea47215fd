"""Where a training step's images come from: the memory-mapped split, gathered on the host
(:class:`HostSource`), or the whole split held as a uint8 tensor on the training device and
gathered there (:class:`DeviceSource`, ``train.data_on_device``).

Both give the same images for a step: the data order is :func:`batch_indices`, a pure function
of (seed, step), and process ``rank`` of ``world`` takes ``idx[rank::world]`` of the global
batch. On the CPU the two are bit-identical (tests/test_device_data.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

# "auto" holds the split on the GPU when it takes at most this share of the free memory: the
# rest is for the network, its activations and the optimizer.
DEVICE_DATA_FRACTION = 0.25
_UPLOAD_CHUNK = 1 << 28  # bytes per host-to-device copy: a memmap is never read whole into RAM


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The order of epoch ``epoch``: a permutation of ``range(n)`` seeded by (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def batch_spans(step: int, batch_size: int, n: int) -> list[tuple[int, int, int]]:
    """The global batch of ``step`` as (epoch, offset, count) runs of consecutive epochs."""
    start, spans, filled = step * batch_size, [], 0
    while filled < batch_size:
        epoch, offset = divmod(start + filled, n)
        take = min(batch_size - filled, n - offset)
        spans.append((epoch, offset, take))
        filled += take
    return spans


def batch_indices(seed: int, step: int, batch_size: int, n: int) -> np.ndarray:
    """The global batch of ``step``: epochs are seeded permutations of the data, consumed in
    order, so the data order is a pure function of (seed, step)."""
    parts = [
        epoch_permutation(seed, e, n)[o : o + k] for e, o, k in batch_spans(step, batch_size, n)
    ]
    return np.concatenate(parts).astype(np.int64, copy=False)


def to_unit_range(x: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float32 in [-1, 1] (the same ops on every device: bit-identical)."""
    return x.float().div_(127.5).sub_(1.0)


@dataclass
class HostSource:
    """Batches gathered from the (memory-mapped) arrays on the host, as float CPU tensors; the
    step's random draws then come from a CPU generator and everything is copied to the device."""

    images: np.ndarray  # uint8 (N, 3, H, W), memory-mapped or not
    labels: np.ndarray  # (N,) ints
    seed: int
    batch_size: int  # the global batch, summed over processes
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def batch(self, step: int, rank: int = 0, world: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        idx = batch_indices(self.seed, step, self.batch_size, len(self.images))[rank::world]
        # Sorted reads keep the access pattern friendly to the page cache; inv restores the order.
        rows, inv = np.unique(idx, return_inverse=True)
        x, y = np.asarray(self.images[rows])[inv], np.asarray(self.labels[rows])[inv]
        return to_unit_range(torch.from_numpy(x)), torch.from_numpy(y.astype(np.int64))


class DeviceSource:
    """The whole split as one uint8 tensor on ``device`` (copied once, in chunks), gathered
    there each step; the step's random draws come from a generator on the same device, so a step
    copies nothing between host and device. The epoch's permutation is computed on the host (the
    same :func:`epoch_permutation`) and uploaded once per epoch."""

    def __init__(
        self, images: np.ndarray, labels: np.ndarray, seed: int, batch_size: int,
        device: torch.device | str,
    ) -> None:  # fmt: skip
        self.device = torch.device(device)
        self.seed, self.batch_size = seed, batch_size
        self.images = upload(images, self.device)
        self.labels = torch.from_numpy(np.asarray(labels).astype(np.int64)).to(self.device)
        self._perms: dict[int, torch.Tensor] = {}  # the current and the next epoch at most

    def __len__(self) -> int:
        return self.images.shape[0]

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            for old in [e for e in self._perms if e < epoch - 1]:
                del self._perms[old]
            perm = torch.from_numpy(epoch_permutation(self.seed, epoch, len(self)))
            if self.device.type == "cuda":  # pinned + non_blocking: no wait for the GPU queue
                perm = perm.pin_memory()
            self._perms[epoch] = perm.to(self.device, non_blocking=True)
        return self._perms[epoch]

    def indices(self, step: int) -> torch.Tensor:
        """:func:`batch_indices` of ``step``, as a tensor on the device."""
        spans = batch_spans(step, self.batch_size, len(self))
        parts = [self._perm(e)[o : o + k] for e, o, k in spans]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def batch(self, step: int, rank: int = 0, world: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.indices(step)[rank::world]
        return to_unit_range(self.images.index_select(0, idx)), self.labels.index_select(0, idx)


BatchSource = HostSource | DeviceSource


def upload(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """A uint8 array (memory-mapped or not) as one tensor on ``device``, copied in chunks of
    about 256 MiB so that a memory-mapped split is never read into host memory whole."""
    out = torch.empty(images.shape, dtype=torch.uint8, device=device)
    per_row = max(1, int(np.prod(images.shape[1:])))
    rows = max(1, _UPLOAD_CHUNK // per_row)
    for i in range(0, len(images), rows):
        out[i : i + rows].copy_(torch.from_numpy(np.array(images[i : i + rows])))  # writable
    return out


def data_on_device(
    choice: str, device_type: str, data_bytes: int, free_bytes: int | None
) -> tuple[bool, str | None]:
    """``train.data_on_device`` -> (hold the split on the device, a note for the user or None).

    "on"/"off" are obeyed ("on" on a CPU: the split in memory as a tensor). "auto" is on for
    CUDA when the split takes at most :data:`DEVICE_DATA_FRACTION` of the free device memory,
    and says so when it does not fit; elsewhere off (on a CPU the memmap keeps memory flat)."""
    if choice in ("on", "off"):
        return choice == "on", None
    if device_type != "cuda":
        return False, None
    if free_bytes is not None and data_bytes <= DEVICE_DATA_FRACTION * free_bytes:
        return True, None
    free = "unknown" if free_bytes is None else f"{free_bytes / 2**20:.0f} MiB"
    return False, (
        f"train.data_on_device=auto: the training split ({data_bytes / 2**20:.0f} MiB) is more "
        f"than {DEVICE_DATA_FRACTION:.0%} of the GPU's free memory ({free}); reading batches from "
        "the memory-mapped file instead (slower; set train.data_on_device=on to force it)"
    )


def make_source(
    choice: str, images: np.ndarray, labels: np.ndarray, seed: int, batch_size: int,
    device: torch.device,
) -> tuple[BatchSource, str | None]:  # fmt: skip
    """The batch source ``train.data_on_device`` picks for ``device`` (and the note, if any)."""
    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else None
    on, note = data_on_device(choice, device.type, images.nbytes + np.asarray(labels).nbytes, free)
    if on:
        return DeviceSource(images, labels, seed, batch_size, device), note
    return HostSource(images, labels, seed, batch_size), note
