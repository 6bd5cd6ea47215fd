"""The report's plots as inline SVG (matplotlib, no pyplot, no GUI backend).

Each plot is a :class:`Plot`: the SVG when the rows support the plot, else ``None`` and a
sentence saying what is missing, which the page shows in place of the plot.
"""

from __future__ import annotations

import io
import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

from diffscape.metrics import registry
from diffscape.report.rows import Row
from diffscape.report.table import summaries

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"]
PALETTE += ["#7f7f7f", "#bcbd22"]


@dataclass(frozen=True)
class Plot:
    key: str
    title: str
    svg: str | None  # None: not drawn, ``note`` says why
    note: str
    wide: bool = False  # two panels: the page gives it the full width


Drawn = tuple[Any, str]  # (a matplotlib Figure, its note), or (None, what the plot needs)


def _figure(panels: int = 1, height: float = 3.4):  # noqa: ANN202 - matplotlib Figure
    from matplotlib.figure import Figure

    # A panel 4.8 in wide: at its natural size (1 pt = 4/3 px) matplotlib's 10 pt text reads as
    # 13.3 px, the size of the page's tables, and a panel fits a plot card on a desktop; on a
    # phone it shrinks by only about a quarter.
    fig = Figure(figsize=(4.8 * panels, height), layout="constrained")
    axes = [fig.add_subplot(1, panels, i + 1) for i in range(panels)]
    for ax in axes:
        ax.grid(True, color="#e5e5e5", linewidth=0.8)
        ax.set_axisbelow(True)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    return fig, axes


def to_svg(fig: Any, salt: str) -> str:
    """The figure as an ``<svg>`` element at its natural size (the page's CSS shrinks it to a
    narrower container). Text stays text (smaller, selectable); the salt keeps element ids
    unique between plots on one page."""
    import matplotlib

    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": salt}):
        buf = io.StringIO()
        # No <metadata> block: no creation date (pages differ only where results do), and no
        # RDF namespace URLs that look like links.
        none = dict.fromkeys(("Creator", "Date", "Format", "Type"))
        fig.savefig(buf, format="svg", metadata=none)
    text = buf.getvalue()
    return text[text.index("<svg") :].replace("<svg", '<svg class="plot"', 1)


def _ema(values: list[float]) -> list[float]:
    """Exponential moving average over about a twentieth of the points (none for short logs)."""
    alpha = min(1.0, 2 / (len(values) / 20 + 1))
    return list(accumulate(values, lambda acc, v: alpha * v + (1 - alpha) * acc))


def _training_label(row: Row) -> str:
    return row.train_dir.name if row.train_dir is not None else row.name


def loss_curves(rows: list[Row]) -> Drawn:
    runs: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        recs = [x for x in r.log if not x.get("skipped") and x.get("loss") is not None]
        if len(recs) >= 2:
            runs.setdefault(_training_label(r), recs)
    if not runs:
        return None, "no run has a metrics.jsonl with two or more log lines"
    fig, (ax,) = _figure(height=3.6)
    for i, (name, recs) in enumerate(runs.items()):
        steps = [x["step"] for x in recs]
        loss = [x["loss"] for x in recs]
        color = PALETTE[i % len(PALETTE)]
        ax.plot(steps, loss, color=color, alpha=0.2, linewidth=0.8)
        ax.plot(steps, _ema(loss), color=color, linewidth=1.8, label=name)
    from matplotlib.ticker import FuncFormatter, LogLocator, StrMethodFormatter

    ax.xaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))  # 20,000 steps
    ax.set_yscale("log")
    plain = FuncFormatter(lambda v, _: f"{v:g}")  # 0.5, not 5x10^-1
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_locator(LogLocator(subs=(2.0, 3.0, 5.0)))
    ax.yaxis.set_minor_formatter(plain)
    ax.tick_params(axis="y", which="minor", labelsize=7)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("MSE loss (log scale)")
    ax.legend(fontsize=8, frameon=False, loc="upper right")
    note = "faint: logged loss (mean over each log window); bold: its exponential moving average"
    return fig, note


def _floor_lines(ax: Any, floor: dict[str, Any] | None, key: str) -> None:
    if not floor:
        return
    value = floor.get("fid") if key == "fid" else (floor.get("kid") or {}).get("mean")
    if value is not None:
        ax.axhline(value, color="#555", linestyle="--", linewidth=1, label="real vs real")


def _lines(
    rows: list[Row], y: str, x: str, line: Callable[[dict[str, Any]], str]
) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Rows' summaries with ``y`` and ``x``, grouped into lines by (model, ``line(summary)``);
    only lines along which ``x`` takes two or more values. KID's std over subsets is added
    (``kid_std``) for its error bars."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r, s in zip(rows, summaries(rows), strict=True):
        s["kid_std"] = ((r.metrics or {}).get("kid") or {}).get("std")
        if s[y] is not None and s[x] is not None:
            groups[(_training_label(r), line(s))].append(s)
    return {k: v for k, v in groups.items() if len({s[x] for s in v}) >= 2}


def fid_vs_steps(rows: list[Row], floor: dict[str, Any] | None) -> Drawn:
    # One line per model, sampler and guidance weight: only the step count varies along it.
    groups = _lines(
        rows,
        "fid",
        "sampler_steps",
        lambda s: s["sampler"] + ("" if s["guidance"] is None else f" w={s['guidance']:g}"),
    )
    if not groups:
        return None, "needs FID for two or more step counts of one sampler and model"
    fig, (ax_fid, ax_kid) = _figure(2)
    several_models = len({k[0] for k in groups}) > 1
    for i, ((model, sampler), pts) in enumerate(sorted(groups.items())):
        pts = sorted(pts, key=lambda s: s["sampler_steps"])
        x = [s["sampler_steps"] for s in pts]
        label = f"{model}: {sampler}" if several_models else sampler
        color = PALETTE[i % len(PALETTE)]
        ax_fid.plot(x, [s["fid"] for s in pts], "o-", color=color, label=label)
        kid = [(s["sampler_steps"], s["kid"], s["kid_std"]) for s in pts if s["kid"] is not None]
        if kid:
            ax_kid.errorbar(
                [k[0] for k in kid], [k[1] for k in kid], yerr=[k[2] or 0 for k in kid],
                fmt="o-", color=color, capsize=3, label=label,
            )  # fmt: skip
    _floor_lines(ax_fid, floor, "fid")
    _floor_lines(ax_kid, floor, "kid")
    from matplotlib.ticker import NullFormatter

    ticks = sorted({s["sampler_steps"] for v in groups.values() for s in v})
    for ax, name in ((ax_fid, "FID"), (ax_kid, "KID ± std")):
        ax.set_xscale("log")
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("sampler steps (log scale)")
        ax.set_ylabel(f"{name}, lower is better")
        ax.legend(fontsize=8, frameon=False)
    ns = sorted({s["n_fake"] for v in groups.values() for s in v if s["n_fake"]})
    note = f"generated images per point: n = {', '.join(f'{n:,}' for n in ns)}" if ns else ""
    return fig, note


def accuracy_vs_guidance(rows: list[Row]) -> Drawn:
    classes = registry.class_names(r.records for r in rows)
    groups = _lines(rows, "accuracy", "guidance", lambda s: f"{s['sampler']} {s['sampler_steps']}")
    if not groups:
        return None, "needs judge accuracy at two or more guidance weights of one model"
    with_fid = any(sum(s["fid"] is not None for s in v) >= 2 for v in groups.values())
    fig, axes = _figure(2 if with_fid else 1)
    ax = axes[0]
    single = len(groups) == 1
    for i, ((model, sampler), pts) in enumerate(sorted(groups.items())):
        pts = sorted(pts, key=lambda s: s["guidance"])
        w = [s["guidance"] for s in pts]
        color = PALETTE[i % len(PALETTE)]
        label = "all classes" if single else f"{model} ({sampler})"
        ax.plot(
            w, [100 * s["accuracy"] for s in pts], "o-", color=color, linewidth=2.2, label=label
        )
        if single:  # per class, thin, only when one model keeps the plot readable
            for j, c in enumerate(classes):
                ys = [s.get(f"accuracy_{c}") for s in pts]
                if all(y is not None for y in ys):
                    ax.plot(w, [100 * y for y in ys], "-", color=PALETTE[(j + 1) % len(PALETTE)],
                            linewidth=1, alpha=0.6, label=c)  # fmt: skip
        real = next((s["judge_real_accuracy"] for s in pts if s["judge_real_accuracy"]), None)
        if real is not None:
            ax.axhline(
                100 * real, color="#555", linestyle="--", linewidth=1, label="judge on real test"
            )
        if with_fid:
            fid = [(s["guidance"], s["fid"]) for s in pts if s["fid"] is not None]
            axes[1].plot([f[0] for f in fid], [f[1] for f in fid], "o-", color=color, label=label)
    ax.set_xlabel("guidance weight w (0 uncond, 1 cond)")
    ax.set_ylabel("judge accuracy (%)")
    ax.set_ylim(0, 102)
    ax.legend(fontsize=8, frameon=False, ncol=2)
    if with_fid:
        axes[1].set_xlabel("guidance weight w")
        axes[1].set_ylabel("FID, lower is better")
    ns = sorted({s["n_judged"] for v in groups.values() for s in v if s["n_judged"]})
    note = f"judged images per point: n = {', '.join(f'{n:,}' for n in ns)}" if ns else ""
    return fig, note


def fid_vs_accuracy(rows: list[Row], floor: dict[str, Any] | None) -> Drawn:
    pts = list(zip(rows, summaries(rows), strict=True))
    pts = [(r, s) for r, s in pts if s["fid"] is not None and s["accuracy"] is not None]
    if len(pts) < 2:
        return None, "needs two or more runs with both FID and judge accuracy"
    fig, (ax,) = _figure(height=3.8)
    xs = [100 * s["accuracy"] for _, s in pts]
    ys = [s["fid"] for _, s in pts]
    # Seed replicates: one colour per setting, named once in the legend (a label per point
    # would pile up); single runs: one colour and a label per run.
    groups = list(dict.fromkeys(r.group for r, _ in pts))
    replicated = len(groups) < len(pts)
    for i, ((r, _), x, y) in enumerate(zip(pts, xs, ys, strict=True)):
        g = groups.index(r.group) if replicated else i
        first = replicated and all(q.group != r.group for q, _ in pts[:i])
        ax.scatter(x, y, color=PALETTE[g % len(PALETTE)], s=40, zorder=3,
                   label=r.group if first else None)  # fmt: skip
    _floor_lines(ax, floor, "fid")
    real = next((s["judge_real_accuracy"] for _, s in pts if s["judge_real_accuracy"]), None)
    if real is not None:
        ax.axvline(100 * real, color="#999", linestyle=":", linewidth=1, label="judge on real test")
    ax.set_xlabel("judge accuracy (%), higher is better")
    ax.set_ylabel("FID, lower is better")
    if floor or real is not None or replicated:
        ax.legend(fontsize=8, frameon=False)
    low = min(xs)
    ax.set_xlim(max(-4.0, math.floor(low / 10) * 10 - 5), 102)
    ax.margins(y=0.12)
    if not replicated:
        _label_points(ax, [r.name for r, _ in pts], xs, ys)
    return fig, "best runs sit bottom right"


def _label_points(ax: Any, names: list[str], xs: list[float], ys: list[float]) -> None:
    """Labels are wide and short: a label is stacked above the earlier ones that it would
    overlap, judged in axis fractions (after the limits are known), not in data units."""
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    placed: list[tuple[float, float]] = []
    for name, x, y in zip(names, xs, ys, strict=True):
        fx, fy = (x - x0) / (x1 - x0), (y - y0) / (y1 - y0)
        near = sum(abs(fx - px) < 0.25 and abs(fy - py) < 0.06 for px, py in placed)
        placed.append((fx, fy))
        ax.annotate(name, (x, y), xytext=(5, 4 + 10 * near), textcoords="offset points", fontsize=8)


def all_plots(rows: list[Row], floor: dict[str, Any] | None) -> list[Plot]:
    import matplotlib

    # Mathtext off: run names, class names and settings are user text, drawn as written ("$x^$"
    # in a run name would otherwise start a formula, or fail to parse). The setting is read when
    # each text is made, so it must hold while the figures are made and drawn.
    with matplotlib.rc_context({"text.parse_math": False}):
        drawn = {
            ("loss", "Training loss"): loss_curves(rows),
            ("steps", "FID and KID against sampler steps"): fid_vs_steps(rows, floor),
            ("guidance", "Judge accuracy against guidance"): accuracy_vs_guidance(rows),
            ("tradeoff", "FID against judge accuracy"): fid_vs_accuracy(rows, floor),
        }
        # The key is the plot's anchor on the page and keeps its SVG's ids apart from the others'.
        plots = []
        for (key, title), (fig, note) in drawn.items():
            svg = None if fig is None else to_svg(fig, key)
            plots.append(Plot(key, title, svg, note, wide=svg is not None and len(fig.axes) > 1))
        return plots
