"""What a study says as it goes (:class:`Narrator`), and what one process builds once for every
run (:class:`Tools`: the narrator and the Inception network)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from diffscape.core.timefmt import duration


def log(msg: str) -> None:
    print(f"[sweep] {msg}", file=sys.stderr, flush=True)


@dataclass
class Narrator:
    """Says what each stage does, how long it should take and took. Numbered ("[3/8] train")
    when ``total`` is set (the demo), else one line per stage prefixed by the run (sweeps)."""

    say: Callable[[str], None] = log
    total: int = 0
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage done
    _k: int = 0
    _t0: float = 0.0
    _stage: str = ""
    _label: str = ""

    def _head(self, stage: str, who: str) -> str:
        if self.total:
            self._k += 1
            return f"[{self._k}/{self.total}] {stage}"
        return f"{who}: {stage}" if who else stage

    def start(self, stage: str, detail: str = "", eta: float | None = None, who: str = "") -> None:
        self._t0, self._stage, self._label = time.perf_counter(), stage, self._head(stage, who)
        about = f" (about {duration(eta)})" if eta else ""
        self.say(f"{self._label}{about}{': ' + detail if detail else ''}")

    def done(self, what: str = "") -> None:
        dt = time.perf_counter() - self._t0
        self.timings[self._stage] = round(dt, 1)
        head = "     " if self.total else self._label + ":"
        self.say(f"{head} done in {duration(dt)}{'; ' + what if what else ''}")

    def skip(self, stage: str, why: str = "done before, skipped", who: str = "") -> None:
        self.timings.setdefault(stage, 0.0)
        self.say(self._head(stage, who) + (f": {why}" if why else ""))

    def note(self, msg: str) -> None:
        self.say(f"      {msg}" if self.total else msg)


class Tools:
    """What one process builds once and every run reuses, passed explicitly to the stages: the
    narrator, and the Inception network (seconds to build, about 10 s on a busy 2-core CPU,
    longer than scoring a few images)."""

    def __init__(
        self, narrator: Narrator | None = None, progress: bool = True, extractor: Any = None
    ) -> None:
        self.narrator = narrator or Narrator()
        self.progress = progress
        self._extractor = extractor  # None: the Inception network, built when first needed
        self._built: tuple | None = None  # what the network was built for (None: given)

    def extractor(self, settings: Any) -> Any:
        """The Inception network of ``settings`` (an EvaluateSettings: its resize, weights and
        device), built once and again only when they change; a stand-in given to the
        constructor is always the one (unless it resizes otherwise)."""
        wanted = (settings.resize, settings.inception_weights, settings.device)
        ext = self._extractor
        same_resize = getattr(ext, "resize", settings.resize) == settings.resize
        if ext is None or not same_resize or self._built not in (None, wanted):
            from diffscape.metrics.evaluate import resolve_extractor

            self._extractor, self._built = resolve_extractor(settings, self.narrator.note), wanted
        return self._extractor


def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"
