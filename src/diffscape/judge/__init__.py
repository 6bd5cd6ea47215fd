"""Judges: classifiers trained on real images that check whether generated images belong to the
class they were requested as (``score``), and the Classification Accuracy Score (``cas``).

Names are imported on first use, so that importing the package loads neither torch nor
scikit-learn (seconds on a busy CPU). The judges' settings are ``diffscape.settings.sections``'
``CNNSettings`` and ``SVCSettings``.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

_WHERE = {
    "JudgeError": "data",
    "JudgeResult": "train",
    "train_judge": "train",
    "load_judge": "store",
    "score": "score",
    "cas": "cas",
}
__all__ = sorted(_WHERE)


class _Package(types.ModuleType):
    """``diffscape.judge.score`` and ``.cas`` are both functions and the modules that hold them.
    Importing a submodule sets it as the package's attribute, so these two names are always
    resolved here: ``from diffscape.judge import score`` gives the function whatever was
    imported before."""

    def __getattribute__(self, name: str) -> Any:
        if name in ("score", "cas"):
            return getattr(importlib.import_module(f"{__name__}.{name}"), name)
        return super().__getattribute__(name)

    def __getattr__(self, name: str) -> Any:  # only for names not set yet
        if name not in _WHERE:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)


sys.modules[__name__].__class__ = _Package
