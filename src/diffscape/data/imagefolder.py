"""Folders of generated images: ``DIR/<class>/<index>.png`` (+ ``samples.json``).

This is what ``diffscape sample`` writes and what the evaluator and the judge read. Images of an
unconditional model go to ``DIR/unconditional/``. A plain folder of images (with or without class
subfolders) reads the same way, so users can evaluate images made by other tools.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from diffscape.core import atomic, layout
from diffscape.core.errors import DiffscapeError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


@dataclass(frozen=True)
class SampleSet:
    """Images read from a sample folder, in a stable order (class folder, then file name)."""

    images: np.ndarray  # uint8 (N, 3, H, W)
    class_names: list[str | None]  # requested class of each image (None: no class folder)
    paths: list[Path]


def _images_in(folder: Path) -> list[Path]:
    """The images in ``folder``, numbered ones in number order, then the others by name."""
    return sorted(
        (p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
        key=lambda p: (int(p.stem), "") if p.stem.isdigit() else (1 << 62, p.stem),
    )


def to_chw(image: Image.Image, size: int | None = None) -> np.ndarray:
    """An RGB picture -> uint8 (3, H, W), resized to ``size`` if given and different: PIL bicubic,
    antialiased over all source pixels (reducing_gap=None). Every image the package resizes
    (prepare, sample folders, the judges' inputs) goes through here, so all resize alike."""
    if size is not None and image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=None)
    return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).copy()


def to_pil(image_chw: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(np.asarray(image_chw).transpose(1, 2, 0)))


def read_image(path: Path, size: int | None = None) -> np.ndarray:
    """uint8 (3, H, W) RGB, resized to ``size`` if given (:func:`to_chw`); a DiffscapeError
    names a file that is not a readable image."""
    try:
        with Image.open(path) as im:
            return to_chw(im.convert("RGB"), size)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        # PIL: UnidentifiedImageError (an OSError) for garbage, OSError for a truncated file
        why = " ".join(str(e).split()) or type(e).__name__
        raise DiffscapeError(
            f"{path} is not a readable image ({why}); delete or replace it"
        ) from None


def load_sample_folder(root: str | Path, size: int | None = None) -> SampleSet:
    """Read every image of a sample folder into memory (generated sets are small: 10k x 32 px
    is 30 MB). Images of different sizes need ``size``.

    The images are those one level below ``root`` (class folders); when there are no image
    subfolders, those directly in ``root`` (class None). Loose images beside class folders are
    figures (``grid.png``, ``confusion.png``), not samples, and are ignored."""
    root = Path(root)
    if not root.is_dir():
        raise DiffscapeError(f"{root} is not a folder of images")
    folders = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    entries: list[tuple[Path, str | None]] = [(p, d.name) for d in folders for p in _images_in(d)]
    entries = entries or [(p, None) for p in _images_in(root)]
    if not entries:
        raise DiffscapeError(
            f"{root} holds no images (expected {root}/<class>/<i>.png as written by "
            "`diffscape sample`)"
        )
    arrays = [read_image(p, size) for p, _ in entries]
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise DiffscapeError(f"{root} mixes image sizes {sorted(shapes)}; pass a size to resize")
    return SampleSet(
        images=np.stack(arrays),
        class_names=[c for _, c in entries],
        paths=[p for p, _ in entries],
    )


def save_image(image: Image.Image, path: str | Path) -> Path:
    """Write a picture a command makes on its own (a sheet, a walk, closest pairs) atomically,
    in the format its suffix names (PNG otherwise), marked as diffscape's (PNG: the text chunk
    "Software"; other formats: the EXIF Software tag) so that layout.check_out knows it."""
    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower(), "PNG")
    extra: dict = {}
    if fmt == "PNG":
        from PIL.PngImagePlugin import PngInfo

        extra["pnginfo"] = PngInfo()
        extra["pnginfo"].add_text("Software", layout.PNG_SOFTWARE)
    else:
        exif = Image.Exif()
        exif[0x0131] = layout.PNG_SOFTWARE  # the Software tag
        extra["exif"] = exif
    with atomic.atomic_path(path) as tmp:  # the temporary's name hides the suffix: name it
        image.save(tmp, format=fmt, **extra)
    return path


def make_grid(images: np.ndarray, nrow: int, pad: int = 2, fill: int = 255) -> np.ndarray:
    """uint8 (N, 3, H, W) -> one uint8 (3, H', W') image: torchvision's grid, ``nrow`` images
    per row (at most N), ``pad`` pixels of ``fill`` around every image."""
    import torch
    from torchvision.utils import make_grid as torchvision_grid

    batch = torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8))
    if len(batch) == 1:  # torchvision returns a lone image without its border
        grid = torch.nn.functional.pad(batch[0], (pad, pad, pad, pad), value=fill)
    else:
        grid = torchvision_grid(batch, nrow=nrow, padding=pad, pad_value=fill)
    return grid.numpy()
