"""Contact sheets: rows of small images with a text label on the left of each row.

:func:`labelled_rows_image` is the building block (sample grids and reports reuse it);
:func:`show_dataset` draws one row of random samples per class of a prepared dataset.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from diffscape.data.dataset import Dataset, DatasetError
from diffscape.data.imagefolder import make_grid

PAD = 2  # pixels around each image, before upscaling (as make_grid)
FONT_PX = 12  # label text height in pixels; the default font is Pillow's bundled one
TEXT_MARGIN = 6  # pixels between the label column and its neighbours
MAX_PER_CLASS = 100  # images per row at most (a row of 100 32-px images is 6,800 px wide)


def labelled_rows_image(rows: list[tuple[str, np.ndarray]], scale: int = 2) -> Image.Image:
    """One RGB image: per row, ``label`` (may hold "\\n") left of its images side by side.

    ``rows``: at least one ``(label, images)`` with ``images`` uint8 (N, 3, H, W); H and W are
    the same in every row (the callers draw from one dataset or one model), N may differ (0 leaves
    the row empty but labelled). Images are upscaled ``scale`` times by nearest neighbour, so that
    32-px images stay crisp and visible.
    """
    _, h, w = next((images.shape[1:] for _, images in rows if len(images)), (3, 0, 0))

    font = ImageFont.load_default(size=FONT_PX)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    boxes = [measure.multiline_textbbox((0, 0), label, font=font) for label, _ in rows]
    label_w = max(b[2] for b in boxes) + 2 * TEXT_MARGIN
    tile_h = scale * (h + 2 * PAD)
    widest = max(len(images) for _, images in rows)
    row_hs = [max(tile_h, b[3] + 2 * TEXT_MARGIN) for b in boxes]
    width = label_w + (scale * (widest * (w + PAD) + PAD) if widest else 0)

    sheet = Image.new("RGB", (width, sum(row_hs)), "white")
    draw = ImageDraw.Draw(sheet)
    y = 0
    for (label, images), box, row_h in zip(rows, boxes, row_hs, strict=True):
        text_y = y + (row_h - box[3]) // 2
        draw.multiline_text((TEXT_MARGIN, text_y), label, fill="black", font=font)
        if len(images):
            grid = make_grid(np.asarray(images, dtype=np.uint8), nrow=len(images), pad=PAD)
            big = grid.repeat(scale, axis=1).repeat(scale, axis=2)  # nearest-neighbour
            sheet.paste(
                Image.fromarray(big.transpose(1, 2, 0)), (label_w, y + (row_h - tile_h) // 2)
            )
        y += row_h
    return sheet


def show_dataset(
    ds: Dataset,
    split: str = "train",
    per_class: int = 8,  # images per row (fewer when a class has fewer)
    seed: int = 0,  # which images are drawn
) -> Image.Image:
    """One row of random ``split`` images per class, labelled with class name and count.

    An unlabelled dataset gives one row. Only the drawn images are read from the
    memory-mapped array.
    """
    if not 1 <= per_class <= MAX_PER_CLASS:
        raise DatasetError(f"per_class (--per-class) must be 1 to {MAX_PER_CLASS}, got {per_class}")
    images = ds.images(split)
    labels = np.asarray(ds.labels(split))
    rng = np.random.default_rng(seed)
    groups = (
        [(name, np.flatnonzero(labels == k)) for k, name in enumerate(ds.classes)]
        if ds.labelled
        else [("unlabelled", np.arange(len(labels)))]
    )
    rows = []
    for name, idx in groups:
        pick = np.sort(rng.choice(idx, size=min(per_class, len(idx)), replace=False))
        noun = "image" if len(idx) == 1 else "images"
        rows.append((f"{name}\n{len(idx)} {noun}", np.asarray(images[pick])))
    return labelled_rows_image(rows)
