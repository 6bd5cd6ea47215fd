"""Tiny datasets for tests, written through the real dataset writer."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from diffscape.atomic import tmp_dir_beside
from diffscape.data.dataset import Dataset, SplitWriter, write_manifest_and_publish


def colour_dataset(
    out: Path, n_train: int = 48, n_test: int = 12, classes: int = 3, size: int = 32, seed: int = 0
) -> Dataset:
    """Class k = a noisy image dominated by colour channel k % 3."""
    tmp = tmp_dir_beside(out)
    rng = np.random.default_rng(seed)
    labels = {}
    for split, m in (("train", n_train), ("test", n_test)):
        w = SplitWriter(tmp, split, size)
        for i in range(m):
            c = i % classes
            img = rng.integers(0, 60, (3, size, size), dtype=np.uint8)
            img[c % 3] += 150
            w.add(img, c)
        w.finish()
        labels[split] = w.labels
    return write_manifest_and_publish(
        tmp,
        Path(out),
        classes=[f"c{k}" for k in range(classes)],
        size=size,
        split_labels=labels,
        source="test",
        resize="none",
        skipped=[],
    )
