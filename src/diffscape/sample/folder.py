"""Samples folders: ``out/<class>/<index>.png`` + ``grid.png`` + ``samples.json``."""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import diffusers
import numpy as np
import torch

from diffscape import __version__
from diffscape.core import atomic, layout, lock
from diffscape.core.errors import DiffscapeError
from diffscape.core.timefmt import duration
from diffscape.data.imagefolder import read_image, to_pil
from diffscape.model import diffusion
from diffscape.sample.generate import default_batch, grid_image, iter_images, sample_settings
from diffscape.sample.load import LoadedModel, load_for_sampling
from diffscape.settings.sections import SampleSettings


def chosen_classes(model: LoadedModel, classes: Sequence[str] | None) -> tuple[int | None, ...]:
    """The class indices to sample, in the order given (each once): ``classes`` or all of a
    conditional model's; ``(None,)`` for an unconditional model, which refuses a class."""
    if not model.cfg.model.conditional:
        if classes:
            raise DiffscapeError(
                "this model is unconditional (trained without --conditional): it cannot make "
                f"images of class {', '.join(classes)}; drop --class"
            )
        return (None,)
    chosen = [layout.safe_component(c, "class name") for c in classes or model.classes]
    unknown = [c for c in chosen if c not in model.classes]
    if unknown:
        raise DiffscapeError(
            f"unknown class {', '.join(unknown)}; this model knows {', '.join(model.classes)}"
        )
    return tuple(dict.fromkeys(model.classes.index(c) for c in chosen))


@dataclass(frozen=True)
class Plan:
    """Which image the j-th of ``total`` is, without a list per image (``--n`` may be 10**6 per
    class): conditional ``per_class``: ``n`` of each chosen class in turn; conditional in all:
    ``n`` spread round-robin over the chosen classes; unconditional: ``n`` into
    ``unconditional/``."""

    ks: tuple[int | None, ...]  # class indices chosen (None: unconditional)
    names: tuple[str, ...]  # their folders
    n: int
    per_class: bool

    @property
    def total(self) -> int:
        return self.n * len(self.ks) if self.per_class else self.n

    def pairs(self, js: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(positions in ks, indices within their class) of images ``js``."""
        return np.divmod(js, self.n) if self.per_class else (js % len(self.ks), js // len(self.ks))

    def position(self, k: int, i: int) -> int:
        """The j of :meth:`pairs`' (k, i)."""
        return k * self.n + i if self.per_class else i * len(self.ks) + k

    def counts(self) -> dict[str, int]:
        """Images per folder, for every folder that gets one."""
        if self.per_class:
            return dict.fromkeys(self.names, self.n)
        k = len(self.ks)
        counts = {name: self.n // k + (p < self.n % k) for p, name in enumerate(self.names)}
        return {name: c for name, c in counts.items() if c}


class Todo(Sequence):
    """The (class, index) pairs of the positions ``js`` of a plan, made a slice at a time."""

    def __init__(self, p: Plan, js: np.ndarray) -> None:
        self.p, self.js = p, js

    def __len__(self) -> int:
        return len(self.js)

    def __getitem__(self, s):  # noqa: ANN001, ANN204 - a slice, as iter_images asks
        ks, idx = self.p.pairs(self.js[s])
        return [(self.p.ks[int(k)], int(i)) for k, i in zip(ks, idx, strict=True)]


def make_plan(model: LoadedModel, n: int, per_class: bool, classes: Sequence[str] | None) -> Plan:
    ks = chosen_classes(model, classes)
    names = tuple(layout.UNCONDITIONAL if k is None else model.classes[k] for k in ks)
    return Plan(ks, names, n, per_class)


def sample_to_folder(
    source: str | Path,
    out: str | Path,
    settings: SampleSettings | None = None,
    *,
    per_class: bool = False,
    classes: Sequence[str] | None = None,
    use_ema: bool = True,
    progress: bool = True,
    overwrite: bool = False,
    say: Callable[[str], None] | None = None,
    **changes: Any,
) -> dict:
    """Sample from a run or checkpoint into ``out`` with ``settings`` (the defaults, those of
    ``diffscape sample`` and of a study, when None) and ``changes`` to them (n=, sampler=, ...:
    :func:`~diffscape.sample.generate.sample_settings`); returns the samples.json record.

    Images are written as they are made into the partial folder beside ``out``; the same call
    again makes only the missing ones (an image depends only on (seed, class, index), so the
    result is the uninterrupted one). An existing samples folder is replaced only with
    ``overwrite``, never mixed with new images.
    """
    s = sample_settings(settings, changes)
    say = say or (lambda text: print(text, file=sys.stderr))
    out = samples_out(out, overwrite)
    partial, held = partial_dir(out), False
    try:
        with lock.hold(partial, "samples folder"):
            held = True
            samples_out(out, overwrite)  # again: another writer may have finished meanwhile
            model = load_for_sampling(source, use_ema=use_ema)
            if not model.cfg.model.conditional and s.guidance not in (0.0, 1.0):
                raise DiffscapeError(
                    "this model is unconditional: --guidance needs a model trained with "
                    "--conditional"
                )
            p = make_plan(model, s.n, per_class, classes)
            record = samples_record(model, p, s, per_class)
            todo = resume_partial(partial, record, p, say)
            if len(todo):
                say(estimate(model, p, len(todo), record, s, partial))
            make_images(model, p, todo, partial, s, progress=progress, say=say)
            publish(partial, out, p, record)
    except BaseException:
        if held and partial.is_dir() and not any(partial.glob(f"*/{layout.SAMPLE_PNG}")):
            atomic.remove_tmp(partial)  # no image made: nothing to continue from, nothing left
        raise
    return record


def publish(partial: Path, out: Path, p: Plan, record: dict) -> None:
    """The finished partial folder, with its grid and samples.json (last), renamed to ``out``;
    grid.png: one labelled row of up to 8 images per class, read back from the folder."""
    counts = p.counts()
    per_row = min(8, max(1, min(counts.values())))
    rows = [
        read_image(partial / name / layout.sample_name(i))
        for name in counts
        for i in range(per_row)
    ]
    grid_image(np.stack(rows), list(counts), per_row).save(partial / layout.GRID_PNG)
    atomic.write_json(partial / layout.SAMPLES_JSON, record)
    (partial / layout.LOCK).unlink(missing_ok=True)  # held until the fd closes
    (partial / layout.PARTIAL_JSON).unlink(missing_ok=True)
    atomic.publish_dir(partial, out)


# n is recorded as the total made and with the counts per class; batch does not change the images
NOT_RECORDED = ("n", "batch")


def settings_record(s: SampleSettings, conditional: bool, timesteps: int) -> dict[str, Any]:
    """The sampling settings as samples.json records them: what makes the images, and what a
    study compares before it skips a sampling (:func:`same_sampling`). steps as the sampler
    runs them; guidance None for an unconditional model; guidance_interval only where w guides.
    Settings added after the first samples.json (guidance_interval) are recorded only when set,
    so that the records from before them still match."""
    guided = conditional and s.guidance not in (0.0, 1.0)
    record = {
        "sampler": s.sampler,
        "steps": diffusion.sampler_steps(timesteps, s.sampler, s.steps),
        "eta": s.eta,
        "guidance": s.guidance if conditional else None,
        "seed": s.seed,
    }
    later = s.with_changes(guidance_interval=s.guidance_interval if guided else None)
    for key, value in later.model_dump(mode="json").items():
        if key not in record and key not in NOT_RECORDED and value is not None:
            record[key] = value
    return record


def same_sampling(
    record: dict[str, Any], s: SampleSettings, conditional: bool, timesteps: int
) -> bool:
    """Whether a samples.json ``record`` holds the images these settings make (checkpoint,
    classes and counts aside)."""
    wanted = settings_record(s, conditional, timesteps)
    keys = [k for k in SampleSettings.model_fields if k not in NOT_RECORDED]
    return all(record.get(k) == wanted.get(k) for k in keys)


def samples_record(model: LoadedModel, p: Plan, s: SampleSettings, per_class: bool) -> dict:
    """What samples.json says of the images (and, less versions, what a re-run must match)."""
    cfg = model.cfg
    return {
        "checkpoint": str(model.checkpoint.resolve()),
        "weights": model.weights,
        **settings_record(s, cfg.model.conditional, cfg.diffusion.timesteps),
        "n": p.total,
        "per_class": per_class,
        "classes": list(p.counts()),
        "counts": p.counts(),
        "image_size": cfg.model.image_size,
        "versions": {
            "diffscape": __version__,
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "python": platform.python_version(),
        },
    }


def make_images(
    model: LoadedModel, p: Plan, todo: np.ndarray, partial: Path, s: SampleSettings, *,
    progress: bool, say: Callable[[str], None],
) -> None:  # fmt: skip
    """Make the images at positions ``todo`` into ``partial``, each written as soon as its batch
    is done; when stopped, say how many are kept for the next run."""
    try:
        for start, images in iter_images(
            model.unet, model.cfg, Todo(p, todo), s, progress=progress
        ):
            for img, j in zip(images, todo[start : start + len(images)], strict=True):
                k, i = p.pairs(int(j))
                save_png_atomically(partial / p.names[k] / layout.sample_name(i), img)
    except BaseException:
        made = sum(1 for _ in partial.glob(f"*/{layout.SAMPLE_PNG}"))
        if made:
            say(f"sample: stopped; {made} of {p.total} images are kept in {partial}: the same "
                "command makes the rest")  # fmt: skip
        raise


def partial_dir(out: Path) -> Path:
    """The hidden folder beside ``out`` where its images are made, marked as this program's
    temporary (a folder of that name that is not one is refused, never reused)."""
    full = Path(os.path.abspath(out))
    partial = full.with_name(layout.partial_dir_name(full.name))
    if partial.is_symlink() or (partial.exists() and not layout.is_our_temporary(partial)):
        raise layout.OutError(
            f"{partial} exists and is not diffscape's; move it away (nothing was changed)"
        )
    if not partial.exists():
        partial.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):  # another sampler made it: its lock decides
            atomic.make_tmp_dir(partial)
    return partial


def _identity(record: dict) -> dict:
    """What makes the images: two records that agree here make the same images."""
    return {k: v for k, v in record.items() if k not in ("versions", "counts")}


def resume_partial(partial: Path, record: dict, p: Plan, say: Callable[[str], None]) -> np.ndarray:
    """The positions j still to make: all of them in a fresh partial folder, or those without a
    finished image when the partial folder was left by the same settings (a re-run continues);
    a partial folder of other settings is emptied first. An array: --n may be 10**6 a class."""
    spec_path = partial / layout.PARTIAL_JSON
    before = atomic.read_json(spec_path)
    if before != _identity(record):
        if before is not None:
            say(f"sample: {partial} held images of other settings; starting again")
        for child in partial.iterdir():
            if child.name not in (layout.LOCK, layout.TMP_MARKER):
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        atomic.write_json(spec_path, _identity(record))
        return np.arange(p.total)
    done = np.zeros(p.total, bool)
    counts = p.counts()
    for k, name in enumerate(p.names):
        folder = partial / name
        for f in os.listdir(folder) if folder.is_dir() else []:
            stem, _, ext = f.partition(".")
            if ext == "png" and stem.isdigit() and int(stem) < counts.get(name, 0):
                done[p.position(k, int(stem))] = True
    todo = np.flatnonzero(~done)
    if len(todo) < p.total:
        say(f"sample: continuing: {p.total - len(todo)} of {p.total} images were made before")
    return todo


PNG_BYTES = 1.1  # a sample PNG's size over its raw pixels at most (noise-like images), measured


def estimate(
    model: LoadedModel, p: Plan, todo: int, record: dict, s: SampleSettings, folder: Path
) -> str:
    """One line before sampling: images, time (one network call timed now) and disk; refused
    first when the images will not fit on the disk of ``folder``."""
    size, unet = model.cfg.model.image_size, model.unet
    need = todo * (3 * size * size * PNG_BYTES + 200)
    free = shutil.disk_usage(folder).free
    if int(need) > free:
        raise DiffscapeError(
            f"{todo} images of {size} px need about {need / 1e6:,.0f} MB on the disk of "
            f"{folder}, which has {free / 1e6:,.0f} MB free; free space or pick another --out"
        )
    calls_per_batch = record["steps"] * (2 if record["sampler"] == "heun" else 1)
    both = model.cfg.model.conditional and s.guidance not in (0.0, 1.0)  # cond, uncond: one call
    batch = s.batch or default_batch(unet)
    b = min(batch, todo) * (2 if both else 1)
    device = next(unet.parameters()).device
    x = torch.zeros((b, 3, size, size), device=device)
    t = torch.zeros(b, device=device, dtype=torch.long)
    labels = t if model.cfg.model.conditional else None  # class 0 at noise level 0
    with torch.inference_mode():
        unet(x, t, class_labels=labels)  # the first call also sets up kernels: not timed
        t0 = time.perf_counter()
        unet(x, t, class_labels=labels)
        per_call = time.perf_counter() - t0
    seconds = per_call * calls_per_batch * -(-todo // batch)
    images = f"{todo} images" if todo == p.total else f"the {todo} images still to make"
    return f"sample: {images}, about {duration(seconds)} and up to {need / 1e6:,.1f} MB on disk"


def save_png_atomically(path: Path, image_chw: np.ndarray) -> None:
    """One sample PNG, complete or absent (a killed run leaves no half image to count as made).
    No fsync: a lost image after a power cut is made again by the next run."""
    tmp = path.with_name(atomic.tmp_name(path.name) + path.suffix)
    path.parent.mkdir(parents=True, exist_ok=True)
    to_pil(image_chw).save(tmp)
    os.replace(tmp, path)


def samples_out(out: str | Path, overwrite: bool) -> Path:
    """``out`` as a Path when a samples folder may be written there (layout.check_out: new,
    empty, or an older samples folder with ``overwrite``), in a folder this process can write
    to (checked before any image is made). Otherwise a one-line error that says what to do."""
    out = layout.check_out(out, "samples", overwrite=overwrite)
    parent = Path(os.path.abspath(out)).parent
    why = atomic.unwritable(parent)
    if why is not None:
        raise DiffscapeError(
            f"cannot write into {parent}: {why}; pick an --out in a folder you can write to"
        )
    return out
