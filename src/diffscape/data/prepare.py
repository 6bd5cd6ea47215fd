"""Turn a folder or ``.zip`` of photos into a prepared dataset folder (see ``dataset.py``).

Accepted layouts of ``SRC`` (a folder, or a ``.zip`` read in place, never unpacked):

- class folders: ``SRC/<class>/**/<image>``;
- split folders: ``SRC/<split>/<class>/**/<image>`` where ``<split>`` is one of the names in
  :data:`SPLIT_NAMES` (the Kaggle "Landscape Recognition" layout, ``Training Data/Coast/...``,
  is one), possibly below wrapper folders such as
  ``Landscape Classification/Landscape Classification/``;
- a flat folder of images: unlabelled (no classes, labels -1).

Wrapper folders (one folder holding everything) are stripped, so a zip of ``photos/<class>/...``
reads like ``photos/`` itself. A consequence: a single class folder reads as unlabelled images,
which is what one class amounts to anyway.

Images are decoded one at a time (memory stays flat). Files with an image suffix that cannot be
used are skipped and listed with a reason in ``manifest["skipped"]``; other files are ignored.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import time
import warnings
import zipfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from diffscape.core.layout import MANIFEST, check_out, is_dataset_dir, safe_component
from diffscape.data.dataset import (
    MAX_SIZE,
    UNLABELLED,
    Dataset,
    DatasetError,
    building,
    load_dataset,
    write_manifest_and_publish,
)
from diffscape.data.imagefolder import to_chw

# Bump when preprocessing changes, so that re-running `prepare` rebuilds instead of a no-op.
PREPARE_VERSION = 1
PHOTO_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
)
# Folder name (case-insensitive) -> split. Kaggle's "Landscape Recognition" uses the long names.
SPLIT_NAMES = {
    "training data": "train",
    "train": "train",
    "training": "train",
    "validation data": "val",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "testing data": "test",
    "test": "test",
    "testing": "test",
}
# OS litter that is never a photo: macOS resource forks in zips, hidden files.
_JUNK_DIRS = frozenset({"__MACOSX"})
DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own default decompression-bomb limit (~ 9459^2)
RESIZE = (
    "EXIF orientation applied; RGB (transparency composited over white, 16-bit grey scaled "
    "by 1/257); centre crop to a square; PIL bicubic, antialiased (large JPEGs first DCT-scaled "
    "to at least 2x the size)"
)


# --- one image ------------------------------------------------------------------------------


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB.

    Transparent pixels become white: ``convert("RGB")`` would just drop alpha and expose whatever
    colour sits under it (often black or garbage), while white is how such images are shown.
    16-bit grey is scaled by 1/257 (65535 -> 255); Pillow's own conversion clips it to 255.
    """
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # Mode "I" is how Pillow reads most 16-bit grey files besides "I;16": assume that range.
        grey = np.clip(np.rint(np.asarray(image, dtype=np.float64) / 257.0), 0, 255)
        return Image.fromarray(grey.astype(np.uint8), "L").convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def preprocess_image(image: Image.Image, size: int) -> np.ndarray:
    """A decoded photo -> uint8 (3, size, size): EXIF-rotated, RGB, centre-cropped, resized.

    Pure: ``image`` is not modified.
    """
    image = ImageOps.exif_transpose(image)  # a copy; applies and drops the Orientation tag
    rgb = to_rgb(image)
    w, h = rgb.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    # Crop before resizing: resize(box=...) lets the filter read pixels outside the box.
    # The large-JPEG speed-up is done by the decoder (see _decode), not by the resize.
    return to_chw(rgb.crop((left, top, left + side, top + side)), size)


class _Unusable(Exception):
    """A file with an image suffix that cannot be used; the message is the manifest reason."""


def _decode(fp: IO[bytes], size_bytes: int, size: int) -> np.ndarray:
    if size_bytes == 0:
        raise _Unusable("empty file: 0 bytes")
    try:
        with Image.open(fp) as im:
            if im.format == "JPEG":
                # libjpeg scales by 1/2, 1/4 or 1/8 while decoding, keeping both sides >= the
                # request: ~10x faster on camera photos, and 2x headroom (as Image.thumbnail's
                # reducing_gap=2) leaves the final antialiased resize to bicubic.
                im.draft(None, (2 * size, 2 * size))
            im.load()
            return preprocess_image(im, size)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise _Unusable(f"too large: {e}") from None
    except UnidentifiedImageError:
        raise _Unusable("not an image: Pillow cannot identify the format") from None
    except Exception as e:  # Pillow raises many types on corrupt data (OSError, SyntaxError, ...)
        raise _Unusable(f"truncated or corrupt: {type(e).__name__}: {e}") from None


@contextmanager
def _pixel_limit(max_pixels: int) -> Iterator[None]:
    """Refuse images over ``max_pixels`` while Pillow reads only their header.

    Pillow warns above ``MAX_IMAGE_PIXELS`` and raises only above twice that; the warning is
    made an error. Pillow keeps the limit in a module global, restored on exit.
    """
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


# --- the source: a folder or a zip, read in place -------------------------------------------


@dataclass(frozen=True)
class SourceFile:
    rel: str  # POSIX path relative to SRC (the member name in a zip)
    size_bytes: int
    mtime: float  # seconds since the epoch (a zip stores 2-second resolution)


def _unsafe_member(rel: str) -> str | None:
    """Why a zip member's path must not be used (it points outside the archive's own tree, so
    a folder in it would not be a class), or None."""
    p = PurePosixPath(rel)
    if p.is_absolute() or rel.startswith("\\") or (len(rel) >= 2 and rel[1] == ":"):
        return "unsafe path in the archive: absolute"
    if ".." in p.parts:
        return "unsafe path in the archive: contains .."
    return None


def _is_candidate(rel: str) -> bool:
    parts = PurePosixPath(rel).parts
    if any(p.startswith(".") or p in _JUNK_DIRS for p in parts):
        return False
    return PurePosixPath(rel).suffix.lower() in PHOTO_SUFFIXES


class _Source:
    """Lists and opens the image files of SRC without changing or unpacking anything."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._zip: zipfile.ZipFile | None = None
        # files skipped by files() (unsafe zip members, FIFOs and devices), with the reason
        self.unsafe: list[dict[str, str]] = []
        if path.is_dir():
            return
        if path.exists() and not path.is_file():  # a FIFO or device: opening it could block
            raise DatasetError(f"{path} is not a regular file; pass a folder of photos or a .zip")
        if not path.is_file():
            raise DatasetError(f"{path} does not exist; pass a folder of photos or a .zip")
        try:
            self._zip = zipfile.ZipFile(path)
        except zipfile.BadZipFile:
            raise DatasetError(
                f"{path} is neither a folder nor a .zip archive; pass a folder of photos or a .zip"
            ) from None

    def files(self) -> list[SourceFile]:
        """Image files (by suffix), sorted by relative path."""
        found: list[SourceFile] = []
        if self._zip is not None:
            for info in self._zip.infolist():
                name = info.filename
                if info.is_dir() or PurePosixPath(name).suffix.lower() not in PHOTO_SUFFIXES:
                    continue
                if why := _unsafe_member(name):
                    self.unsafe.append(_skip(name, why))
                elif _is_candidate(name):
                    mtime = time.mktime((*info.date_time, 0, 0, -1))  # local time, 2 s steps
                    found.append(SourceFile(info.filename, info.file_size, mtime))
        else:
            for dirpath, dirnames, filenames in os.walk(self.path):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for name in filenames:
                    path = Path(dirpath, name)
                    rel = path.relative_to(self.path).as_posix()
                    if _is_candidate(rel):
                        try:
                            st = path.stat()
                        except OSError:  # a broken link: listed, then skipped when opened
                            found.append(SourceFile(rel, -1, 0.0))
                        else:
                            if stat.S_ISREG(st.st_mode):
                                found.append(SourceFile(rel, st.st_size, st.st_mtime))
                            else:  # reading a FIFO blocks forever, a device may never end
                                self.unsafe.append(_skip(rel, NOT_REGULAR))
        return sorted(found, key=lambda f: f.rel)

    def open(self, rel: str) -> IO[bytes]:
        if self._zip is not None:
            return self._zip.open(rel)  # seekable: Pillow re-reads the header
        return _open_regular(self.path / rel)

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()


NOT_REGULAR = "not a regular file (a FIFO, socket or device): never opened"


def _open_regular(path: Path) -> IO[bytes]:
    """``path`` opened for reading, only if it is a regular file. O_NONBLOCK: should a FIFO have
    replaced the file since it was listed, opening it returns at once instead of waiting for a
    writer, and fstat then refuses it before a byte is read."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _Unusable(NOT_REGULAR)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


# --- layout: which split and class each file belongs to -------------------------------------


@dataclass(frozen=True)
class _Item:
    file: SourceFile
    split: str
    class_name: str | None


@dataclass(frozen=True)
class _Plan:
    layout: str  # "split-folders", "class-folders" or "flat"
    classes: list[str]  # sorted; [] when unlabelled
    splits: list[str]  # in SPLITS order
    items: list[_Item]  # files to decode, in output order (sorted by path)
    skipped: list[dict[str, str]]  # image files the layout leaves out, with the reason


def _skip(rel: str, reason: str) -> dict[str, str]:
    return {"path": rel, "reason": reason}


def _plan(
    files: list[SourceFile], test_fraction: float, seed: int, skipped: list[dict[str, str]]
) -> _Plan:
    """Where each file goes; ``skipped`` (files already left out, with reasons) is extended."""
    parts = [PurePosixPath(f.rel).parts for f in files]
    skipped = list(skipped)
    # (file, split or None, path below the split folder / wrapper folders)
    placed: list[tuple[SourceFile, str | None, tuple[str, ...]]] = []
    # Split folders count at the shallowest depth where any folder has a split name, so that a
    # wrapper (Kaggle nests everything in "Landscape Classification/" twice) may precede them.
    split_depth = min(
        (i for p in parts for i, folder in enumerate(p[:-1]) if folder.lower() in SPLIT_NAMES),
        default=None,
    )
    if split_depth is not None:
        for f, p in zip(files, parts, strict=True):
            split = SPLIT_NAMES.get(p[split_depth].lower()) if len(p) > split_depth + 1 else None
            if split is None:
                skipped.append(_skip(f.rel, "outside the split folders: not below train/val/test"))
            else:
                placed.append((f, split, p[split_depth + 1 :]))
    else:
        depth = 0  # strip wrapper folders: one folder that holds every file
        while all(len(p) > depth + 1 for p in parts) and len({p[depth] for p in parts}) == 1:
            depth += 1
        placed = [(f, None, p[depth:]) for f, p in zip(files, parts, strict=True)]

    classes = sorted({rest[0] for _, _, rest in placed if len(rest) > 1})
    for name in classes:  # folder names become path components of samples later: check now
        safe_component(name, "class name")
    items: list[_Item] = []
    for f, split, rest in placed:
        if classes and len(rest) == 1:
            skipped.append(_skip(f.rel, "not in a class folder: loose beside class folders"))
            continue
        items.append(_Item(f, split or "train", rest[0] if classes else None))

    # Split folders found are kept even when empty; a held-out test split is kept when asked.
    if split_depth is not None:
        layout, found = "split-folders", {split for _, split, _ in placed}
    else:
        layout = "class-folders" if classes else "flat"
        found = {"train", "test"} if test_fraction > 0 else {"train"}
        items = _hold_out(items, test_fraction, seed)  # a no-op at test_fraction 0
    splits = [s for s in ("train", "val", "test") if s in found]
    return _Plan(layout, classes, splits, items, skipped)


def _hold_out(items: list[_Item], test_fraction: float, seed: int) -> list[_Item]:
    """Move a seeded ``test_fraction`` of each class to "test" (stratified), rounding to the
    nearest image but leaving every class at least one training image."""
    rng = np.random.default_rng(seed)
    by_class: dict[str, list[int]] = {}
    for i, it in enumerate(items):
        by_class.setdefault(it.class_name or "", []).append(i)
    to_test: set[int] = set()
    for name in sorted(by_class):
        group = by_class[name]
        n_test = min(int(len(group) * test_fraction + 0.5), len(group) - 1)
        to_test.update(group[j] for j in rng.permutation(len(group))[:n_test])
    return [
        _Item(it.file, "test", it.class_name) if i in to_test else it for i, it in enumerate(items)
    ]


# --- the command ----------------------------------------------------------------------------


def prepare_dataset(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    size: int = 32,  # output side in pixels: a multiple of 8, >= 8
    test_fraction: float = 0.1,  # held out per class when SRC has no split folders
    seed: int = 0,  # seeds the held-out split
    progress: bool = True,  # tqdm bar over files
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,  # larger images are skipped (decompression bombs)
    overwrite: bool = False,  # replace a dataset in ``out`` made from other files or options
) -> Dataset:
    """Prepare ``src`` (folder or .zip of photos) into the dataset folder ``out``.

    Re-running with the same input files (paths, sizes, mtimes) and options is a no-op that
    returns the existing dataset; another dataset in ``out`` is replaced only with
    ``overwrite``. Raises :class:`DatasetError` when no image is usable.
    """
    src, out = Path(src), Path(out)
    _check_options(size, test_fraction, max_pixels)
    _check_out(src, out)
    if not is_dataset_dir(out):  # anything but a dataset is refused before SRC is listed
        check_out(out, "dataset")
    source = _Source(src)
    try:
        files = source.files()
        if not files:
            raise DatasetError(
                f"no images in {src}: expected class folders, split folders (train/val/test) "
                f"or loose images with a suffix among {', '.join(sorted(PHOTO_SUFFIXES))}"
            )
        options = {
            "size": size,
            "test_fraction": test_fraction,
            "seed": seed,
            "max_pixels": max_pixels,
            "prepare_version": PREPARE_VERSION,
        }
        fingerprint = _fingerprint(src, files, options)
        try:
            existing = load_dataset(out)
        except (DatasetError, OSError, ValueError):  # absent, incomplete or unreadable: rebuild
            existing = None
        if existing is not None and existing.manifest.get("input_fingerprint") == fingerprint:
            print(f"{out} is up to date (same input files and options); nothing rewritten")
            return existing
        out = check_out(out, "dataset", overwrite=overwrite)
        plan = _plan(files, test_fraction, seed, source.unsafe)
        extra = {"prepare_options": options, "input_fingerprint": fingerprint}
        with _pixel_limit(max_pixels):
            return _write(source, plan, out, size, progress, extra)
    finally:
        source.close()


def _check_options(size: int, test_fraction: float, max_pixels: int) -> None:
    if size < 8 or size % 8 or size > MAX_SIZE:
        raise DatasetError(
            f"--size must be a multiple of 8 from 8 to {MAX_SIZE} (got {size}), e.g. 32"
        )
    if not 0 <= test_fraction < 1:
        raise DatasetError(f"--test-fraction must be in [0, 1) (got {test_fraction}), e.g. 0.1")
    if max_pixels < 1:
        raise DatasetError(f"--max-pixels must be positive (got {max_pixels})")


def _check_out(src: Path, out: Path) -> None:
    src_abs, out_abs = src.resolve(), out.resolve()
    if src_abs.is_dir() and (out_abs == src_abs or src_abs in out_abs.parents):
        raise DatasetError(
            f"--out {out} is inside SRC {src}; SRC is never written to: pick another"
        )
    if out_abs == src_abs:
        raise DatasetError(f"--out {out} is SRC itself; pick another folder")


def _fingerprint(src: Path, files: list[SourceFile], options: dict[str, Any]) -> str:
    """sha256 over the listing (path, bytes, mtime) and the options: cheap (no file is read)
    and changes whenever a file is added, removed, renamed or rewritten."""
    st = src.stat()
    archive = [st.st_size, st.st_mtime] if src.is_file() else None
    listing = [[f.rel, f.size_bytes, f.mtime] for f in files]
    blob = json.dumps({"options": options, "archive": archive, "files": listing}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _write(
    source: _Source, plan: _Plan, out: Path, size: int, progress: bool, extra: dict[str, Any]
) -> Dataset:
    """Decode ``plan``'s images into the dataset ``out``; ``extra`` goes into its manifest."""
    from tqdm.auto import tqdm

    class_index = {name: i for i, name in enumerate(plan.classes)}
    skipped = list(plan.skipped)
    with building(out, size, plan.splits) as (tmp, writers):
        for item in tqdm(plan.items, desc="prepare", unit="img", disable=not progress):
            try:
                with source.open(item.file.rel) as fp:
                    image = _decode(fp, item.file.size_bytes, size)
            except _Unusable as e:
                skipped.append(_skip(item.file.rel, str(e)))
                continue
            except Exception as e:  # open failed: permissions, broken link, zip member
                skipped.append(_skip(item.file.rel, f"cannot read: {type(e).__name__}: {e}"))
                continue
            label = UNLABELLED if item.class_name is None else class_index[item.class_name]
            writers[item.split].add(image, label)
        for w in writers.values():
            w.finish()
        skipped.sort(key=lambda s: s["path"])
        n_files = len(plan.items) + len(plan.skipped)
        if not any(w.labels for w in writers.values()):
            raise DatasetError(
                f"nothing usable in {source.path}: all {n_files} image files were skipped "
                f"({_reason_counts(skipped)}); e.g. {skipped[0]['path']}: {skipped[0]['reason']}"
            )
        if skipped:
            print(
                f"skipped {len(skipped)} of {n_files} image files ({_reason_counts(skipped)}), "
                f'e.g. {skipped[0]["path"]}; all listed under "skipped" in {out / MANIFEST}'
            )
        return write_manifest_and_publish(
            tmp,
            out,
            classes=plan.classes,
            size=size,
            split_labels={s: w.labels for s, w in writers.items()},
            source=str(source.path.resolve()),
            resize=RESIZE,
            skipped=skipped,
            extra={"layout": plan.layout, **extra},
        )


def _reason_counts(skipped: list[dict[str, str]]) -> str:
    counts = Counter(s["reason"].split(":")[0] for s in skipped)
    return ", ".join(f"{kind} {n}" for kind, n in sorted(counts.items()))
