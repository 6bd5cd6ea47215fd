"""Tiny datasets for tests, written through the real dataset writer."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from diffscape.core.atomic import tmp_dir_beside
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


# --- hostile and careless input: the one-line refusal ----------------------------------------


def snapshot(*paths: Path) -> dict[str, bytes | None]:
    """Every file under ``paths`` (files or folders) by path, with its bytes; None for a path
    that does not exist. Equal snapshots = nothing was created, changed or deleted."""
    found: dict[str, bytes | None] = {}
    for root in paths:
        if not root.exists():
            found[str(root)] = None
        for p in [root] if root.is_file() else sorted(root.rglob("*")):
            found[str(p)] = p.read_bytes() if p.is_file() else b"<dir>"
    return found


def assert_refused(capsys, argv: list[str], *sentinels: Path) -> str:
    """Run the real CLI: exit code 2, one line on stderr without a traceback, and every sentinel
    byte-identical afterwards. Returns the line."""
    from diffscape.cli import main

    before = snapshot(*sentinels)
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, (code, err)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("diffscape: error: "), err
    assert snapshot(*sentinels) == before
    return err.strip()
