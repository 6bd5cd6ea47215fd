"""Publishing a folder built elsewhere: readers never see a half-written one."""

from __future__ import annotations

import shutil
from pathlib import Path


def publish_dir(tmp: Path, out: Path) -> None:
    """Move the finished folder ``tmp`` to ``out`` (same file system, so each rename is atomic).

    An existing ``out`` is moved aside first and deleted only once the new one is in place.
    """
    if out.exists():
        old = out.with_name(out.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(out)
