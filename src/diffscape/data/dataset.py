"""The prepared-dataset format: one folder, read memory-mapped.

A dataset folder holds

- ``manifest.json``: classes (stable order), image size, per-split counts (overall and per class),
  source, resize method, skipped files with reasons, and a content hash;
- ``<split>_images.npy``: uint8 array (N, 3, H, W), written with ``numpy.lib.format`` so that
  ``np.load(..., mmap_mode="r")`` maps it without reading it;
- ``<split>_labels.npy``: int64 array (N,), class indices into ``classes`` (-1 when unlabelled).

Writers stream images into a :class:`SplitWriter` one at a time, so memory stays flat however
many images there are.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from diffscape.atomic import publish_dir
from diffscape.errors import DiffscapeError

FORMAT = "diffscape-dataset"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SPLITS = ("train", "val", "test")
UNLABELLED = -1


def images_file(split: str) -> str:
    return f"{split}_images.npy"


def labels_file(split: str) -> str:
    return f"{split}_labels.npy"


class DatasetError(DiffscapeError, ValueError):
    """A dataset folder that is missing, incomplete or not of this format."""


@dataclass(frozen=True)
class Dataset:
    """A prepared dataset folder, opened read-only. Arrays are memory-mapped on access."""

    root: Path
    manifest: dict[str, Any]

    @property
    def classes(self) -> list[str]:
        return list(self.manifest["classes"])

    @property
    def num_classes(self) -> int:
        return len(self.manifest["classes"])

    @property
    def labelled(self) -> bool:
        return self.num_classes > 0

    @property
    def size(self) -> int:
        return int(self.manifest["size"])

    @property
    def splits(self) -> list[str]:
        return [s for s in SPLITS if s in self.manifest["splits"]]

    @property
    def content_hash(self) -> str:
        return str(self.manifest["content_hash"])

    def count(self, split: str) -> int:
        return int(self._split(split)["n"])

    def images(self, split: str) -> np.ndarray:
        """uint8 (N, 3, H, W), memory-mapped (no pixel is read until it is indexed)."""
        self._split(split)
        return np.load(self.root / images_file(split), mmap_mode="r")

    def labels(self, split: str) -> np.ndarray:
        """int64 (N,): indices into :attr:`classes`, or -1 for unlabelled images."""
        self._split(split)
        return np.load(self.root / labels_file(split), mmap_mode="r")

    def _split(self, split: str) -> dict[str, Any]:
        try:
            return self.manifest["splits"][split]
        except KeyError:
            raise DatasetError(
                f"{self.root} has no split {split!r}; it has: {', '.join(self.splits)}"
            ) from None


def load_dataset(root: str | os.PathLike[str]) -> Dataset:
    """Open a prepared dataset folder, checking that it is complete."""
    root = Path(root)
    path = root / MANIFEST
    if not path.is_file():
        raise DatasetError(
            f"{root} is not a prepared dataset (no {MANIFEST}). Make one with "
            "`diffscape data prepare SRC --out DIR` or `diffscape data synth --out DIR`."
        )
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise DatasetError(f"{path} is not a {FORMAT} manifest")
    if manifest.get("version") != FORMAT_VERSION:
        raise DatasetError(
            f"{path} has format version {manifest.get('version')}, this diffscape reads "
            f"{FORMAT_VERSION}; prepare the data again"
        )
    for split in manifest["splits"]:
        for name in (images_file(split), labels_file(split)):
            if not (root / name).is_file():
                raise DatasetError(f"{root} is incomplete: {name} is missing; prepare it again")
    return Dataset(root=root, manifest=manifest)


def parse_dataset_spec(spec: str, default_split: str = "train") -> tuple[Dataset, str]:
    """``DIR`` or ``DIR:split`` -> (dataset, split)."""
    path, split = spec, default_split
    head, sep, tail = spec.rpartition(":")
    if sep and tail in SPLITS:
        path, split = head, tail
    ds = load_dataset(path)
    ds._split(split)
    return ds, split


@dataclass
class SplitWriter:
    """Streams images of one split into ``<split>_images.npy`` without holding them in memory.

    The number of images is not known up front (unreadable files are skipped), so pixels go to a
    raw temporary file first and are copied behind an ``.npy`` header in chunks at the end.
    """

    tmp_dir: Path
    split: str
    size: int
    _n: int = 0
    _labels: list[int] = field(default_factory=list)
    _raw: Any = None

    def __post_init__(self) -> None:
        self._raw = open(self.tmp_dir / f"{self.split}_images.raw", "wb")  # noqa: SIM115

    def add(self, image_chw: np.ndarray, label: int) -> None:
        if image_chw.dtype != np.uint8 or image_chw.shape != (3, self.size, self.size):
            raise ValueError(
                f"expected uint8 (3, {self.size}, {self.size}), got {image_chw.dtype} "
                f"{image_chw.shape}"
            )
        self._raw.write(np.ascontiguousarray(image_chw).tobytes())
        self._labels.append(int(label))
        self._n += 1

    @property
    def n(self) -> int:
        return self._n

    @property
    def labels(self) -> list[int]:
        return list(self._labels)

    def close(self) -> None:
        """Close the raw file without finishing, e.g. when giving up on a failed build."""
        if not self._raw.closed:
            self._raw.close()

    def finish(self) -> None:
        """Write the ``.npy`` files into ``tmp_dir`` and delete the raw file."""
        self._raw.close()
        raw_path = self.tmp_dir / f"{self.split}_images.raw"
        shape = (self._n, 3, self.size, self.size)
        out = np.lib.format.open_memmap(
            self.tmp_dir / images_file(self.split), mode="w+", dtype=np.uint8, shape=shape
        )
        per_image = 3 * self.size * self.size
        chunk = max(1, (64 << 20) // per_image)  # copy 64 MiB at a time
        with open(raw_path, "rb") as f:
            for start in range(0, self._n, chunk):
                stop = min(self._n, start + chunk)
                buf = f.read((stop - start) * per_image)
                out[start:stop] = np.frombuffer(buf, np.uint8).reshape(stop - start, *shape[1:])
        out.flush()
        del out
        raw_path.unlink()
        np.save(self.tmp_dir / labels_file(self.split), np.asarray(self._labels, np.int64))


def hash_dataset_files(root: Path, splits: list[str]) -> str:
    """sha256 over every split's arrays (streamed), so equal content gives an equal hash."""
    h = hashlib.sha256()
    for split in splits:
        for name in (images_file(split), labels_file(split)):
            h.update(name.encode())
            with open(root / name, "rb") as f:
                while block := f.read(1 << 20):
                    h.update(block)
    return h.hexdigest()


def write_manifest_and_publish(
    tmp_dir: Path,
    out_dir: Path,
    *,
    classes: list[str],
    size: int,
    split_labels: dict[str, list[int]],
    source: str,
    resize: str,
    skipped: list[dict[str, str]],
    extra: dict[str, Any] | None = None,
) -> Dataset:
    """Finish a dataset built in ``tmp_dir``: write the manifest, then move it to ``out_dir``.

    The manifest is written last, so a folder without one is never mistaken for a dataset;
    an existing ``out_dir`` is replaced only once the new one is complete.
    """
    splits = [s for s in SPLITS if s in split_labels]
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "classes": classes,
        "size": size,
        "splits": {},
        "source": source,
        "resize": resize,
        "skipped": skipped,
        "content_hash": hash_dataset_files(tmp_dir, splits),
    }
    for split in splits:
        labels = split_labels[split]
        counts = {c: 0 for c in classes}
        for lab in labels:
            if lab >= 0:
                counts[classes[lab]] += 1
        manifest["splits"][split] = {"n": len(labels), "counts": counts}
    if extra:
        manifest.update(extra)
    (tmp_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    publish_dir(tmp_dir, out_dir)
    return load_dataset(out_dir)


def make_tmp_dir(out_dir: Path) -> Path:
    """A fresh temporary folder beside ``out_dir`` (same file system, so rename is atomic)."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    return tmp


def iter_batches(
    images: np.ndarray, batch: int
) -> Iterator[tuple[int, np.ndarray]]:  # pragma: no cover - tiny helper
    """(start, uint8 batch) over a (memory-mapped) array, ``batch`` at a time."""
    for start in range(0, len(images), batch):
        yield start, np.asarray(images[start : start + batch])
