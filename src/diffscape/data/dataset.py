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
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from diffscape.core.atomic import publish_dir, tmp_dir_beside, write_json
from diffscape.core.errors import DiffscapeError
from diffscape.core.layout import (
    MANIFEST,
    check_class_names,
    images_file,
    labels_file,
    raw_images_file,
)
from diffscape.data.memory import check_fits

FORMAT = "diffscape-dataset"
FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")
UNLABELLED = -1
MAX_SIZE = 1024  # pixels per side; a 1024 px image is already 3 MiB of uint8


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

    def read_images(self, split: str, copies: float = 1.0) -> np.ndarray:
        """The images of ``split`` read into memory, once it is clear that they fit (with
        ``copies`` times their size on top for what the caller derives from them)."""
        nbytes = self.count(split) * 3 * self.size * self.size
        check_fits(
            int(nbytes * (1 + copies)),
            f"reading {self.root}:{split} ({self.count(split)} images of {self.size} px)",
            "use a smaller dataset (or --size), or free memory",
        )
        return np.array(self.images(split))

    def _split(self, split: str) -> dict[str, Any]:
        try:
            return self.manifest["splits"][split]
        except KeyError:
            raise DatasetError(
                f"{self.root} has no split {split!r}; it has: {', '.join(self.splits)}"
            ) from None


def load_dataset(root: str | os.PathLike[str]) -> Dataset:
    """Open a prepared dataset folder, checking that its manifest is sound and that its arrays
    are complete and agree with it (shapes, counts, label range); reads only the labels."""
    root = Path(root)
    path = root / MANIFEST
    if not path.is_file():
        raise DatasetError(
            f"{root} is not a prepared dataset (no {MANIFEST}). Make one with "
            "`diffscape data prepare SRC --out DIR` or `diffscape data synth --out DIR`."
        )
    ds = Dataset(root=root, manifest=_read_manifest(path))
    for split in ds.splits:
        _check_split(ds, split)
    return ds


def _read_manifest(path: Path) -> dict[str, Any]:
    again = "prepare the data again"
    try:
        manifest = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path} is not valid JSON ({e}); {again}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DatasetError(f"{path} is not a {FORMAT} manifest; {again}")
    if manifest.get("version") != FORMAT_VERSION:
        raise DatasetError(
            f"{path} has format version {manifest.get('version')}, this diffscape reads "
            f"{FORMAT_VERSION}; {again}"
        )
    classes, size, splits = (manifest.get(k) for k in ("classes", "size", "splits"))
    check_class_names(classes, path, error=DatasetError, hint=again)
    if not _is_int(size) or not 1 <= size <= MAX_SIZE:
        raise DatasetError(f"{path}: size must be 1 to {MAX_SIZE} pixels, got {size!r}; {again}")
    if not isinstance(splits, dict) or not splits or not set(splits) <= set(SPLITS):
        raise DatasetError(f"{path}: splits must be some of {', '.join(SPLITS)}; {again}")
    for split, entry in splits.items():
        if not isinstance(entry, dict) or not _is_int(entry.get("n")) or entry["n"] < 0:
            raise DatasetError(f"{path}: split {split} has no image count n; {again}")
    if not isinstance(manifest.get("content_hash"), str):
        raise DatasetError(f"{path} has no content_hash; {again}")
    return manifest


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) of an .npy file, mapped without reading its data; DatasetError when the
    file is missing, not an .npy file, or shorter than its header says (numpy refuses to map
    it, and to load object arrays)."""
    if not path.is_file():
        raise DatasetError(f"{path.parent} is incomplete: {path.name} is missing; prepare it again")
    try:
        with np.errstate(over="ignore"):  # an absurd shape is an error below, not a warning
            array = np.load(path, mmap_mode="r")
    except (ValueError, OSError, EOFError, SyntaxError, ArithmeticError) as e:
        raise DatasetError(
            f"{path} is truncated or not a readable .npy array ({e}); prepare the data again"
        ) from None
    return array.shape, array.dtype


def _check_split(ds: Dataset, split: str) -> None:
    n, k, s = ds.count(split), ds.num_classes, ds.size
    bad = f"{ds.root}: {split} split disagrees with {MANIFEST}"
    shape, dtype = _npy_header(ds.root / images_file(split))
    if dtype != np.uint8 or shape != (n, 3, s, s):
        raise DatasetError(f"{bad}: images are {dtype} {shape}, expected uint8 {(n, 3, s, s)}")
    shape, dtype = _npy_header(ds.root / labels_file(split))
    if dtype != np.int64 or shape != (n,):
        raise DatasetError(f"{bad}: labels are {dtype} {shape}, expected int64 ({n},)")
    labels = np.asarray(ds.labels(split))
    if n and (labels.min() < UNLABELLED or labels.max() >= k):
        raise DatasetError(
            f"{bad}: labels range from {labels.min()} to {labels.max()} but there are {k} "
            "classes; prepare the data again"
        )
    counts = ds.manifest["splits"][split].get("counts")
    if k and isinstance(counts, dict):
        per_class = np.bincount(labels[labels >= 0], minlength=k).tolist()
        found = dict(zip(ds.classes, per_class, strict=True))
        if {c: counts.get(c) for c in ds.classes} != found:
            raise DatasetError(f"{bad}: per-class counts differ from the labels")


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
    raw temporary file first and are copied behind an ``.npy`` header at the end.
    """

    tmp_dir: Path
    split: str
    size: int
    labels: list[int] = field(default_factory=list)  # one per image added
    _raw: Any = None

    def __post_init__(self) -> None:
        self._raw = open(self.tmp_dir / raw_images_file(self.split), "wb")  # noqa: SIM115

    def add(self, image_chw: np.ndarray, label: int) -> None:
        """``image_chw``: uint8 (3, size, size), as both writers (prepare, synth) make it."""
        self._raw.write(np.ascontiguousarray(image_chw).tobytes())
        self.labels.append(int(label))

    def finish(self) -> None:
        """Write the ``.npy`` files into ``tmp_dir`` and delete the raw file."""
        self._raw.close()
        raw_path = self.tmp_dir / raw_images_file(self.split)
        shape = (len(self.labels), 3, self.size, self.size)
        header = {"descr": "|u1", "fortran_order": False, "shape": shape}
        with open(self.tmp_dir / images_file(self.split), "wb") as f, open(raw_path, "rb") as raw:
            np.lib.format.write_array_header_1_0(f, header)
            shutil.copyfileobj(raw, f, 64 << 20)  # 64 MiB at a time
        raw_path.unlink()
        np.save(self.tmp_dir / labels_file(self.split), np.asarray(self.labels, np.int64))


@contextmanager
def building(
    out_dir: Path, size: int, splits: Iterable[str]
) -> Iterator[tuple[Path, dict[str, SplitWriter]]]:
    """A temporary folder beside ``out_dir`` and a writer per split in it. On any exception, Ctrl-C
    included, the writers are closed and the folder removed: no half-written folder is left."""
    tmp = tmp_dir_beside(out_dir)
    writers: dict[str, SplitWriter] = {}
    try:
        for split in splits:
            writers[split] = SplitWriter(tmp, split, size)
        yield tmp, writers
    except BaseException:
        for w in writers.values():
            w._raw.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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
    h = hashlib.sha256()  # over every split's arrays (streamed): equal content, equal hash
    for split in splits:
        for name in (images_file(split), labels_file(split)):
            h.update(name.encode())
            with open(tmp_dir / name, "rb") as f:
                while block := f.read(1 << 20):
                    h.update(block)
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "classes": classes,
        "size": size,
        "splits": {},
        "source": source,
        "resize": resize,
        "skipped": skipped,
        "content_hash": h.hexdigest(),
    }
    for split in splits:
        found = Counter(classes[lab] for lab in split_labels[split] if lab >= 0)
        counts = {c: found[c] for c in classes}
        manifest["splits"][split] = {"n": len(split_labels[split]), "counts": counts}
    manifest.update(extra or {})
    write_json(tmp_dir / MANIFEST, manifest)
    publish_dir(tmp_dir, out_dir)
    return load_dataset(out_dir)
