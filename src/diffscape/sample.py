"""Generation: DDPM / DDIM / DPM-Solver++ through diffusers schedulers, with classifier-free
guidance, per-class folders and per-image seeds.

Every image draws its starting noise and its per-step noise from its own generator, seeded by
(seed, class, index). An image therefore depends only on those three numbers, never on the
batch it was computed in (diffusers' ``randn_tensor`` accepts one generator per batch item).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import UNet2DModel

from diffscape import __version__, atomic, config, diffusion, layout, lock
from diffscape.checkpoint import resolve_checkpoint
from diffscape.config import RunConfig, load_config_json
from diffscape.errors import DiffscapeError
from diffscape.imagefolder import make_grid, save_image, save_png
from diffscape.model import load_unet, null_class
from diffscape.timefmt import duration


@dataclass(frozen=True)
class LoadedModel:
    unet: UNet2DModel
    cfg: RunConfig
    classes: list[str]  # class names (empty for unconditional models)
    checkpoint: Path
    weights: str  # "ema" or "model"


def load_for_sampling(
    path: str | Path, use_ema: bool = True, device: str | torch.device | None = None
) -> LoadedModel:
    """A run folder (its latest complete checkpoint) or a checkpoint folder -> the network.

    A trainer may prune the checkpoint while it is read: a run folder is then read again from
    its newest intact checkpoint (saying so); a checkpoint folder that vanished is an error that
    says what happened."""
    weights = layout.EMA_DIR if use_ema else layout.MODEL_DIR
    for attempt in range(3):
        ckpt = resolve_checkpoint(Path(path))
        try:
            cfg = load_config_json(ckpt / layout.CONFIG_JSON)
            classes = class_names(ckpt, cfg)
            unet = load_unet(ckpt / weights).eval()
            break
        except (OSError, DiffscapeError):
            if (ckpt / layout.COMPLETE).is_file():
                raise  # still there: not a race, a real problem
            if Path(path).resolve() == ckpt.resolve() or attempt == 2:
                raise DiffscapeError(
                    f"checkpoint {ckpt} was removed while it was being read (a trainer prunes "
                    "old checkpoints); sample the run folder, or a milestone checkpoint"
                ) from None
            print(
                f"note: checkpoint {ckpt.name} was removed while it was being read (pruned by "
                "the trainer); reading the newest intact checkpoint instead",
                file=sys.stderr,
            )
    unet.to(device or default_device())
    return LoadedModel(unet, cfg, classes, ckpt, weights)


def class_names(ckpt: Path, cfg: RunConfig) -> list[str]:
    """A conditional model's class names from the checkpoint's run.json, each checked as one
    safe folder name (they become ``OUT/<class>/``); ``class<i>`` when run.json has none that
    fit the model. Unconditional models: no classes."""
    if not cfg.model.conditional:
        return []
    path = ckpt / layout.RUN_JSON
    try:
        info = json.loads(path.read_text()) if path.is_file() else {}
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise DiffscapeError(f"{path} is not valid JSON ({e}); the checkpoint is damaged") from None
    names = info.get("classes") if isinstance(info, dict) else None
    if not isinstance(names, list) or len(names) != cfg.model.num_classes:
        return [f"class{i}" for i in range(cfg.model.num_classes)]
    names = [layout.safe_component(c, f"class name in {path}") for c in names]
    if len(set(names)) != len(names):
        raise DiffscapeError(f"{path} lists a class name twice; each class needs its own folder")
    return names


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def image_generator(seed: int, class_idx: int | None, index: int) -> torch.Generator:
    """The generator of one image: a pure function of (seed, class, index)."""
    c = 0 if class_idx is None else class_idx + 1
    (state,) = np.random.SeedSequence([seed, c, index]).generate_state(1, dtype=np.uint64)
    return torch.Generator().manual_seed(int(state) & ((1 << 63) - 1))


def slerp(a: torch.Tensor, b: torch.Tensor, u: float) -> torch.Tensor:
    """Spherical interpolation between two noise tensors (keeps the Gaussian norm; Shoemake 1985,
    as used for latent walks since White 2016)."""
    af, bf = a.flatten().double(), b.flatten().double()
    cos = torch.clamp(af @ bf / (af.norm() * bf.norm()), -1.0, 1.0)
    theta = torch.arccos(cos)
    if theta.abs() < 1e-6:
        return ((1 - u) * a + u * b).to(a.dtype)
    s = torch.sin(theta)
    return ((torch.sin((1 - u) * theta) / s) * a + (torch.sin(u * theta) / s) * b).to(a.dtype)


def model_output(
    unet: UNet2DModel,
    x: torch.Tensor,
    t: torch.Tensor,
    labels: torch.Tensor | None,
    null: int,
    guidance: float,
) -> torch.Tensor:
    """The network's prediction with classifier-free guidance; cond and uncond in one batch."""
    tt = t.expand(x.shape[0]).to(x.device)
    if labels is None:  # unconditional model
        return unet(x, tt).sample
    if guidance == 1.0:
        return unet(x, tt, class_labels=labels).sample
    nulls = torch.full_like(labels, null)
    if guidance == 0.0:
        return unet(x, tt, class_labels=nulls).sample
    both = unet(torch.cat([x, x]), torch.cat([tt, tt]), class_labels=torch.cat([labels, nulls]))
    cond, uncond = both.sample.chunk(2)
    return diffusion.guide(cond, uncond, guidance)


@torch.inference_mode()
def denoise(
    unet: UNet2DModel,
    cfg: RunConfig,
    noise: torch.Tensor,
    labels: torch.Tensor | None,
    generators: list[torch.Generator],
    *,
    sampler: diffusion.Sampler = "ddpm",
    steps: int | None = None,
    eta: float = 0.0,
    guidance: float = 1.0,
) -> torch.Tensor:
    """Run a sampler from ``noise`` (B, 3, H, W) to images (float, on CPU), not clamped: about
    [-1, 1] for a trained model; ``to_uint8`` clamps."""
    device = next(unet.parameters()).device
    sched = diffusion.make_scheduler(cfg.diffusion, sampler)
    n_steps = diffusion.sampler_steps(cfg.diffusion.timesteps, sampler, steps)
    sched.set_timesteps(n_steps, device=device)
    x = noise.to(device) * sched.init_noise_sigma
    if labels is not None:
        labels = labels.to(device)
    extra: dict = {"eta": eta} if sampler == "ddim" else {}
    if sampler in diffusion.TAKES_GENERATOR:
        extra["generator"] = generators
    null = null_class(cfg.model)
    for t in sched.timesteps:
        model_in = sched.scale_model_input(x, t)
        out = model_output(unet, model_in, t, labels, null, guidance)
        x = sched.step(out, t, x, **extra).prev_sample
    if not torch.isfinite(x).all():  # would become black images silently
        raise DiffscapeError(
            f"{sampler} produced NaN or infinite pixels: the weights are damaged or the settings "
            f"diverge (guidance {guidance:g}); try another checkpoint or a smaller --guidance"
        )
    return x.float().cpu()


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[-1, 1] float -> uint8 (N, 3, H, W), rounding to nearest, clamped to [0, 255]."""
    return ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()


def generate_images(
    unet: UNet2DModel,
    cfg: RunConfig,
    *,
    class_idx: Sequence[int | None],
    index: Sequence[int],
    seed: int,
    sampler: diffusion.Sampler = "ddpm",
    steps: int | None = None,
    eta: float = 0.0,
    guidance: float = 1.0,
    batch: int = 64,
    progress: bool = True,
) -> np.ndarray:
    """Images for the given (class, index) pairs as uint8 (N, 3, H, W)."""
    if len(class_idx) != len(index):
        raise ValueError("class_idx and index must have the same length")
    size = cfg.model.image_size
    out = np.empty((len(index), 3, size, size), np.uint8)
    pairs = list(zip(class_idx, index, strict=True))
    for start, images in iter_images(
        unet, cfg, pairs, seed=seed, sampler=sampler, steps=steps, eta=eta, guidance=guidance,
        batch=batch, progress=progress,
    ):  # fmt: skip
        out[start : start + len(images)] = images
    return out


def iter_images(
    unet: UNet2DModel,
    cfg: RunConfig,
    pairs: Sequence[tuple[int | None, int]],
    *,
    seed: int,
    sampler: diffusion.Sampler = "ddpm",
    steps: int | None = None,
    eta: float = 0.0,
    guidance: float = 1.0,
    batch: int = 64,
    progress: bool = True,
) -> Iterator[tuple[int, np.ndarray]]:
    """(position of the batch's first pair, its images as uint8 (B, 3, H, W)) for the (class,
    index) ``pairs``, a batch at a time: memory holds one batch whatever the number of images."""
    check_settings(sampler=sampler, steps=steps, eta=eta, guidance=guidance, seed=seed, batch=batch)
    conditional = cfg.model.conditional
    size, null = cfg.model.image_size, null_class(cfg.model)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(pairs), desc=f"sample ({sampler})", unit="img", dynamic_ncols=True)
    was_training = unet.training
    unet.eval()
    try:
        for start in range(0, len(pairs), batch):
            chunk = pairs[start : start + batch]
            if not conditional and any(c is not None for c, _ in chunk):
                raise DiffscapeError("this model is unconditional: it cannot sample a class")
            if conditional and any(c is None for c, _ in chunk) and guidance != 0.0:
                raise DiffscapeError("a conditional model needs a class per image (or guidance 0)")
            gens = [image_generator(seed, c, i) for c, i in chunk]
            noise = torch.stack([torch.randn((3, size, size), generator=g) for g in gens])
            labels = None
            if conditional:
                labels = torch.tensor([null if c is None else c for c, _ in chunk])
            x = denoise(
                unet, cfg, noise, labels, gens,
                sampler=sampler, steps=steps, eta=eta, guidance=guidance,
            )  # fmt: skip
            yield start, to_uint8(x)
            if bar is not None:
                bar.update(len(gens))
    finally:
        if bar is not None:
            bar.close()
        unet.train(was_training)


def grid_image(images: np.ndarray, row_names: Sequence[str], per_row: int):  # noqa: ANN201
    """A PIL image with one labelled row of ``per_row`` images per name."""
    from diffscape.data.show import labelled_rows_image

    rows = [(name, images[k * per_row : (k + 1) * per_row]) for k, name in enumerate(row_names)]
    return labelled_rows_image(rows)


def check_settings(**given: object) -> None:
    """Sample settings given to the library (``n``, ``sampler``, ``steps``, ``eta``,
    ``guidance``, ``seed``, ``batch``) checked by the settings engine against the bounds that
    ``--help`` shows: a one-line ConfigError naming the setting. None: not given (default)."""
    config.parse_section("sample", {k: v for k, v in given.items() if v is not None})


def plan(
    model: LoadedModel, n: int, per_class: bool, classes: Sequence[str] | None
) -> tuple[list[int | None], list[int], list[str]]:
    """(class index, index within class, folder name) for every image to make.

    Conditional: ``n`` per class with ``per_class``, else ``n`` in total spread round-robin over
    the chosen classes. Unconditional: ``n`` images into ``unconditional/``.
    """
    if not model.cfg.model.conditional:
        if classes:
            raise DiffscapeError(
                "this model is unconditional (trained without --conditional): it cannot make "
                f"images of class {', '.join(classes)}; drop --class"
            )
        return [None] * n, list(range(n)), [layout.UNCONDITIONAL] * n
    chosen = [layout.safe_component(c, "class name") for c in classes or model.classes]
    unknown = [c for c in chosen if c not in model.classes]
    if unknown:
        raise DiffscapeError(
            f"unknown class {', '.join(unknown)}; this model knows {', '.join(model.classes)}"
        )
    ks = [model.classes.index(c) for c in chosen]
    if per_class:
        pairs = [(k, i) for k in ks for i in range(n)]
    else:
        counters = dict.fromkeys(ks, 0)
        pairs = []
        for j in range(n):
            k = ks[j % len(ks)]
            pairs.append((k, counters[k]))
            counters[k] += 1
    return [k for k, _ in pairs], [i for _, i in pairs], [model.classes[k] for k, _ in pairs]


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

    def pair(self, j: int) -> tuple[int, int]:
        """(position in ks, index within its class) of image j."""
        return divmod(j, self.n) if self.per_class else (j % len(self.ks), j // len(self.ks))

    def pairs(self, js: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`pair` of many positions at once."""
        return np.divmod(js, self.n) if self.per_class else (js % len(self.ks), js // len(self.ks))

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
        ks, idx = self.p.pairs(np.asarray(self.js[s]))
        return [
            (self.p.ks[int(k)], int(i))
            for k, i in zip(np.atleast_1d(ks), np.atleast_1d(idx), strict=True)
        ]


def make_plan(model: LoadedModel, n: int, per_class: bool, classes: Sequence[str] | None) -> Plan:
    if not model.cfg.model.conditional:
        plan(model, 1, per_class, classes)  # refuses --class for an unconditional model
        return Plan((None,), (layout.UNCONDITIONAL,), n, per_class)
    ks = plan(model, 1, True, classes)[0]
    return Plan(tuple(ks), tuple(model.classes[k] for k in ks), n, per_class)


def sample_to_folder(
    source: str | Path,
    out: str | Path,
    *,
    n: int = 16,
    per_class: bool = False,
    classes: Sequence[str] | None = None,
    sampler: diffusion.Sampler = "ddim",
    steps: int | None = None,
    eta: float = 0.0,
    guidance: float | None = None,
    seed: int = 0,
    batch: int | None = None,
    use_ema: bool = True,
    progress: bool = True,
    overwrite: bool = False,
    say: Callable[[str], None] | None = None,
) -> dict:
    """Sample from a run or checkpoint into ``out/<class>/<index>.png`` + ``grid.png`` +
    ``samples.json``; returns the samples.json record.

    Images are written as they are made into a hidden partial folder beside ``out``
    (``.<name>.diffscape-tmp-partial``), which is renamed to ``out`` when complete; an
    interrupted run leaves its images there, and the same call again makes only the missing
    ones (an image depends only on (seed, class, index), so the result is the uninterrupted
    one). An existing samples folder is replaced only with ``overwrite``, never mixed with new
    images; ``steps`` None is the sampler's default, and the record says the steps really taken.
    """
    check_settings(sampler=sampler, n=n, batch=batch, steps=steps, seed=seed, guidance=guidance,
                   eta=eta)  # fmt: skip
    say = say or (lambda text: print(text, file=sys.stderr))
    out = samples_out(out, overwrite)
    partial, held = partial_dir(out), False
    try:
        with lock.hold(partial, "samples folder"):
            held = True
            samples_out(out, overwrite)  # again: another writer may have finished meanwhile
            model = load_for_sampling(source, use_ema=use_ema)
            if not model.cfg.model.conditional and guidance not in (None, 0.0, 1.0):
                raise DiffscapeError(
                    "this model is unconditional: --guidance needs a model trained with "
                    "--conditional"
                )
            w = 1.0 if guidance is None else guidance
            p = make_plan(model, n, per_class, classes)
            record = samples_record(model, p, sampler, steps, eta, w, seed, per_class)
            if batch is None:
                batch = 256 if next(model.unet.parameters()).device.type == "cuda" else 64
            todo = resume_partial(partial, record, p, say)
            check_space(partial, len(todo), model.cfg.model.image_size)
            if len(todo):
                say(estimate(model, p, len(todo), record, w, batch))
            make_images(model, p, todo, partial, batch=batch, progress=progress, say=say,
                        seed=seed, sampler=sampler, steps=steps, eta=eta, guidance=w)  # fmt: skip
            write_grid(partial, p)
            atomic.write_json(partial / layout.SAMPLES_JSON, record)
            (partial / layout.LOCK).unlink(missing_ok=True)  # held until the fd closes
            (partial / layout.PARTIAL_JSON).unlink(missing_ok=True)
            atomic.publish_dir(partial, out)
    except BaseException:
        if held and partial.is_dir() and not any(partial.glob(f"*/{layout.SAMPLE_PNG}")):
            atomic.remove_tmp(partial)  # no image made: nothing to continue from, nothing left
        raise
    return record


def samples_record(
    model: LoadedModel, p: Plan, sampler: diffusion.Sampler, steps: int | None, eta: float,
    w: float, seed: int, per_class: bool,
) -> dict:  # fmt: skip
    """What samples.json says of the images (and, less versions, what a re-run must match)."""
    return {
        "checkpoint": str(model.checkpoint.resolve()),
        "weights": model.weights,
        "sampler": sampler,
        "steps": diffusion.sampler_steps(model.cfg.diffusion.timesteps, sampler, steps),
        "eta": eta,
        "guidance": w if model.cfg.model.conditional else None,
        "seed": seed,
        "n": p.total,
        "per_class": per_class,
        "classes": list(p.counts()),
        "counts": p.counts(),
        "image_size": model.cfg.model.image_size,
        "versions": versions(),
    }


def make_images(
    model: LoadedModel, p: Plan, todo: np.ndarray, partial: Path, *, batch: int, progress: bool,
    say: Callable[[str], None], **how: Any,
) -> None:  # fmt: skip
    """Make the images at positions ``todo`` into ``partial``, each written as soon as its batch
    is done; when stopped, say how many are kept for the next run."""
    try:
        for start, images in iter_images(
            model.unet, model.cfg, Todo(p, todo), batch=batch, progress=progress, **how
        ):
            for img, j in zip(images, todo[start : start + len(images)], strict=True):
                k, i = p.pair(int(j))
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
    partial = full.with_name(f".{full.name}{layout.TMP_INFIX}partial")
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
    try:
        before = json.loads(spec_path.read_text())
    except (OSError, ValueError):
        before = None
    if before != _identity(record):
        if before is not None:
            say(f"sample: {partial} held images of other settings; starting again")
        for child in partial.iterdir():
            if child.name not in (layout.LOCK, layout.TMP_MARKER):
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        atomic.write_json(spec_path, _identity(record))
        return np.arange(p.total)
    js = np.arange(p.total)
    ks, idx = p.pairs(js)
    done = np.zeros(p.total, bool)
    counts = p.counts()
    for k, name in enumerate(p.names):
        count = counts.get(name, 0)
        if not count:
            continue
        have = np.zeros(count, bool)
        folder = partial / name
        for f in os.listdir(folder) if folder.is_dir() else []:
            stem, _, ext = f.partition(".")
            if ext == "png" and stem.isdigit() and int(stem) < count:
                have[int(stem)] = True
        done[ks == k] = have[idx[ks == k]]
    todo = js[~done]
    if len(todo) < p.total:
        say(f"sample: continuing: {p.total - len(todo)} of {p.total} images were made before")
    return todo


PNG_BYTES = 1.1  # a sample PNG's size over its raw pixels at most (noise-like images), measured


def check_space(folder: Path, images: int, size: int) -> None:
    """Refuse before sampling when the images will not fit on the disk."""
    need = int(images * (3 * size * size * PNG_BYTES + 200))
    free = shutil.disk_usage(folder).free
    if need > free:
        raise DiffscapeError(
            f"{images} images of {size} px need about {need / 1e6:,.0f} MB on the disk of "
            f"{folder}, which has {free / 1e6:,.0f} MB free; free space or pick another --out"
        )


def estimate(model: LoadedModel, p: Plan, todo: int, record: dict, w: float, batch: int) -> str:
    """One line before sampling: images, time (one network call timed now) and disk."""
    import time

    size, unet = model.cfg.model.image_size, model.unet
    calls_per_batch = record["steps"] * (2 if record["sampler"] == "heun" else 1)
    both = model.cfg.model.conditional and w not in (0.0, 1.0)  # cond and uncond in one call
    b = min(batch, todo) * (2 if both else 1)
    device = next(unet.parameters()).device
    x = torch.zeros((b, 3, size, size), device=device)
    labels = (
        torch.zeros(b, dtype=torch.long, device=device) if model.cfg.model.conditional else None
    )
    t = torch.zeros(b, device=device, dtype=torch.long)
    with torch.inference_mode():
        unet(x, t, class_labels=labels)  # the first call also sets up kernels: not timed
        t0 = time.perf_counter()
        unet(x, t, class_labels=labels)
        per_call = time.perf_counter() - t0
    seconds = per_call * calls_per_batch * -(-todo // batch)
    mb = todo * (3 * size * size * PNG_BYTES + 200) / 1e6
    images = f"{todo} images" if todo == p.total else f"the {todo} images still to make"
    return f"sample: {images}, about {duration(seconds)} and up to {mb:,.1f} MB on disk"


def save_png_atomically(path: Path, image_chw: np.ndarray) -> None:
    """One sample PNG, complete or absent (a killed run leaves no half image to count as made).
    No fsync: a lost image after a power cut is made again by the next run."""
    tmp = path.with_name(atomic.tmp_name(path.name) + path.suffix)
    save_png(tmp, image_chw)
    os.replace(tmp, path)


def write_grid(folder: Path, p: Plan) -> None:
    """grid.png: one labelled row of up to 8 images per class, read back from the folder."""
    from PIL import Image

    counts = p.counts()
    per_row = min(8, max(1, min(counts.values())))
    rows = []
    for name in counts:
        for i in range(per_row):
            with Image.open(folder / name / layout.sample_name(i)) as im:
                rows.append(np.asarray(im.convert("RGB")).transpose(2, 0, 1))
    grid_image(np.stack(rows), list(counts), per_row).save(folder / layout.GRID_PNG)


def samples_out(out: str | Path, overwrite: bool) -> Path:
    """``out`` as a Path when a samples folder may be written there (layout.check_out: new,
    empty, or an older samples folder with ``overwrite``), in a folder this process can write
    to (checked before any image is made). Otherwise a one-line error that says what to do."""
    out = layout.check_out(out, "samples", overwrite=overwrite)
    parent = Path(os.path.abspath(out)).parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not os.access(parent, os.W_OK | os.X_OK):
        raise DiffscapeError(
            f"cannot write into {parent} (read-only file system or no permission); pick an "
            "--out in a folder you can write to"
        )
    return out


MAX_FRAMES = 256  # images in an interpolation row, denoised in one batch


def interpolate(
    source: str | Path,
    out_png: str | Path,
    *,
    seed_a: int,
    seed_b: int,
    frames: int = 8,
    class_name: str | None = None,
    sampler: diffusion.Sampler = "ddim",
    steps: int | None = None,
    guidance: float = 1.0,
    overwrite: bool = False,
) -> np.ndarray:
    """A row of images whose starting noise walks from seed_a's to seed_b's (slerp), with the
    deterministic DDIM (eta 0) or DPM-Solver++ so the row changes smoothly. ``steps`` None is
    the sampler's default."""
    if sampler == "ddpm":
        raise DiffscapeError("interpolation needs a deterministic sampler: ddim or dpm")
    check_settings(sampler=sampler, steps=steps, guidance=guidance, seed=seed_a)
    check_settings(seed=seed_b)
    if isinstance(frames, bool) or not isinstance(frames, int) or not 2 <= frames <= MAX_FRAMES:
        raise DiffscapeError(f"frames {frames!r}: give 2..{MAX_FRAMES} images in the row")
    if Path(out_png).suffix.lower() != ".png":
        raise DiffscapeError(f"interpolate writes a PNG image: {out_png} must end in .png")
    out_png = layout.check_out(out_png, "image", overwrite=overwrite)
    model = load_for_sampling(source)
    class_idx, _, _ = plan(model, 1, False, [class_name] if class_name else None)
    k = class_idx[0]
    size = model.cfg.model.image_size
    a = torch.randn((3, size, size), generator=image_generator(seed_a, k, 0))
    b = torch.randn((3, size, size), generator=image_generator(seed_b, k, 0))
    noise = torch.stack([slerp(a, b, u) for u in np.linspace(0.0, 1.0, frames)])
    labels = None if k is None else torch.full((frames,), k)
    gens = [torch.Generator().manual_seed(0) for _ in range(frames)]  # unused at eta 0
    x = denoise(
        model.unet, model.cfg, noise, labels, gens, sampler=sampler, steps=steps, guidance=guidance
    )
    images = to_uint8(x)
    from PIL import Image

    save_image(Image.fromarray(make_grid(images, nrow=frames).transpose(1, 2, 0)), out_png)
    return images


def export_diffusers(
    source: str | Path, out: str | Path, use_ema: bool = True, overwrite: bool = False
) -> Path:
    """A folder diffusers loads: ``unet/`` (UNet2DModel) and ``scheduler/`` (DDPMScheduler with
    the model's betas). Other samplers load from the same scheduler config. Written as a whole;
    ``out`` may be new or empty, or an older export with ``overwrite``."""
    out = layout.check_out(out, "export", overwrite=overwrite)
    model = load_for_sampling(source, use_ema=use_ema, device="cpu")
    tmp = atomic.tmp_dir_beside(out)
    try:
        model.unet.save_pretrained(tmp / layout.EXPORT_UNET, safe_serialization=True)
        sched = diffusion.make_scheduler(model.cfg.diffusion, "ddpm")
        sched.save_pretrained(tmp / layout.EXPORT_SCHEDULER)
        info = {"classes": model.classes, "null_class": null_class(model.cfg.model)}
        atomic.write_json(tmp / layout.EXPORT_CLASSES, info)
        atomic.write_text(tmp / layout.EXPORT_CONFIG, model.cfg.to_json())
        atomic.publish_dir(tmp, layout.check_out(out, "export", overwrite=overwrite))
    except Exception as e:
        if atomic.is_disk_full(e):
            need = sum(t.numel() * t.element_size() for t in model.unet.state_dict().values())
            raise atomic.disk_full(e, out, tmp, need) from None
        raise
    finally:
        atomic.remove_tmp(tmp)
    if model.cfg.model.activation != "silu":
        print(
            f"note: activation {model.cfg.model.activation!r} also replaces the SiLU that "
            "diffusers hard-codes in the time MLP and output head; load with "
            "diffscape.model.load_unet (or apply_activation after from_pretrained) to get the "
            "trained network",
            file=sys.stderr,
        )
    return out


def versions() -> dict[str, str]:
    import diffusers

    return {
        "diffscape": __version__,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "python": platform.python_version(),
    }
