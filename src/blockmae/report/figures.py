"""Figures of a study, as matplotlib Figures (render_html inlines them as SVG, render_md writes files).

Colours follow the arms' order in the study, the same in every figure. No pyplot: the figures are
plain ``matplotlib.figure.Figure`` objects, so nothing depends on an interactive backend.
"""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

ARM_COLOURS = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C",
               "#CCB974", "#64B5CD"]
BASELINE_GREY = "#9a9a9a"


def arm_colour(index: int) -> str:
    return ARM_COLOURS[index % len(ARM_COLOURS)]


def new_figure(width: float = 5.6, height: float = 3.4, ncols: int = 1) -> tuple[Any, Any]:
    """A figure and its axes (one, or an array of `ncols` side by side), without top and right spines."""
    from matplotlib.figure import Figure  # heavy: only when a figure is drawn

    fig = Figure(figsize=(width, height))
    axes = fig.subplots(1, ncols)
    for ax in (axes if ncols > 1 else [axes]):
        ax.spines[["top", "right"]].set_visible(False)
    return fig, axes


def figure_svg(fig: Any, salt: str) -> str:
    """The figure as an `<svg>` element to inline in HTML: text kept as text, a transparent background (so
    the page's colour scheme shows through), ids made unique per figure by `salt`, no metadata block."""
    import matplotlib  # heavy: only when a figure is drawn

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": salt}):
        fig.savefig(buf, format="svg", bbox_inches="tight", transparent=True, metadata={"Date": None})
    svg = buf.getvalue()
    svg = svg[svg.index("<svg"):]
    svg = re.sub(r"<metadata>.*?</metadata>\s*", "", svg, flags=re.S)  # RDF boilerplate, not needed inline
    return svg  # natural size (so text is the same size in every figure); CSS only shrinks it to fit


def png_data_uri(path: str | Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _numeric(values: Sequence[Any]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def _label(value: Any) -> str:
    return str(value)


def metric_vs_variable(
    metric: str,
    points: Sequence[Mapping[str, Any]],
    x_key: str | None,
    series_keys: Sequence[str],
    y_label: str | None = None,
) -> Any:
    """`metric` against the ablated variable `x_key`: one line per combination of `series_keys`.

    `points`: one per arm, {"arm", "values" (ablated key -> value), "index" (arm order), "mean",
    "low", "high" (the error bar, may be None), "seeds" (the per-seed values)}."""
    fig, ax = new_figure(5.6, 3.6)
    xs_all = [p["values"].get(x_key) if x_key else p["arm"] for p in points]
    numeric = x_key is not None and _numeric(xs_all)
    categories = list(dict.fromkeys(_label(x) for x in xs_all))
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for p in points:
        groups.setdefault(tuple(_label(p["values"].get(k)) for k in series_keys), []).append(p)
    span = (max(xs_all) - min(xs_all)) if numeric and len(set(xs_all)) > 1 else 1.0
    for g, (group, members) in enumerate(groups.items()):
        members = sorted(members, key=lambda p: p["values"].get(x_key) if numeric else categories.index(
            _label(p["values"].get(x_key) if x_key else p["arm"])))
        xs = [float(p["values"][x_key]) if numeric else categories.index(
            _label(p["values"].get(x_key) if x_key else p["arm"])) for p in members]
        offset = (g - (len(groups) - 1) / 2) * 0.015 * span * (1 if numeric else 8)
        xs = [x + offset for x in xs]
        colour = arm_colour(g) if series_keys else None
        label = ", ".join(f"{k}={v}" for k, v in zip(series_keys, group)) or None
        means = [p["mean"] for p in members]
        err_lo = [p["mean"] - p["low"] if p.get("low") is not None else 0.0 for p in members]
        err_hi = [p["high"] - p["mean"] if p.get("high") is not None else 0.0 for p in members]
        if series_keys or numeric:
            ax.plot(xs, means, color=colour or "#4C72B0", linewidth=1.2, alpha=0.8)
        for x, p, lo, hi in zip(xs, members, err_lo, err_hi):
            c = colour or arm_colour(p["index"])
            ax.errorbar([x], [p["mean"]], yerr=[[lo], [hi]], fmt="o", color=c, capsize=4, markersize=5)
            ax.scatter([x] * len(p["seeds"]), p["seeds"], s=28, color=c, alpha=0.8, marker="x", linewidths=1.2,
                       zorder=3)
        if label:
            ax.plot([], [], color=colour, marker="o", label=label)
    if numeric:
        ax.set_xticks(sorted(set(float(x) for x in xs_all)))
        ax.set_xticklabels([_label(v) for v in sorted(set(xs_all))])
    else:
        ax.set_xticks(range(len(categories)), categories, rotation=20 if len(categories) > 4 else 0)
    ax.set_xlabel(x_key or "arm")
    ax.set_ylabel(y_label or metric)
    ax.set_title(f"{metric}: mean over seeds (bars: 95% interval; x: single seeds)", fontsize=9)
    if len(groups) > 1:
        ax.legend(fontsize=7, frameon=False)
    return fig


def metric_vs_epochs(metric: str, series: Mapping[str, Sequence[tuple[float, float, float | None, float | None]]],
                     colours: Mapping[str, str]) -> Any:
    """`metric` against the milestone epoch, one line per arm: series[arm] = [(epoch, mean, low, high)]."""
    fig, ax = new_figure()
    epochs = sorted({p[0] for pts in series.values() for p in pts})
    step = min((b - a for a, b in zip(epochs, epochs[1:])), default=1.0)
    for k, (arm, pts) in enumerate(series.items()):
        pts = sorted(pts)
        shift = (k - (len(series) - 1) / 2) * 0.04 * step  # keep overlapping error bars apart
        xs, ys = [p[0] + shift for p in pts], [p[1] for p in pts]
        lo = [p[1] - p[2] if p[2] is not None else 0.0 for p in pts]
        hi = [p[3] - p[1] if p[3] is not None else 0.0 for p in pts]
        ax.errorbar(xs, ys, yerr=[lo, hi], color=colours[arm], marker="o", markersize=4, capsize=3,
                    linewidth=1.3, label=arm)
    ax.set_xticks(epochs)
    ax.set_xlabel("epoch (milestone)")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} by milestone (mean over seeds, 95% interval)", fontsize=9)
    ax.legend(fontsize=7, frameon=False)
    return fig


def curves_figure(title: str, curves: Mapping[str, Sequence[Any]], colours: Mapping[str, str],
                  x_label: str, y_label: str, log_y: bool = False) -> Any:
    """Overlaid curves per arm: curves[arm] = [Curve, ...] (one per seed), the band lo..hi shaded."""
    fig, ax = new_figure()
    for arm, seed_curves in curves.items():
        for k, c in enumerate(seed_curves):
            ax.plot(c.x, c.y, color=colours[arm], linewidth=1.3, alpha=0.9 if k == 0 else 0.55,
                    label=arm if k == 0 else None, marker="o" if len(c.x) <= 12 else None, markersize=3)
            if c.lo is not None and c.hi is not None:
                ax.fill_between(c.x, c.lo, c.hi, color=colours[arm], alpha=0.12, linewidth=0)
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ys = [v for cs in curves.values() for c in cs for v in c.y]
    if log_y and ys and min(ys) > 0 and max(ys) / min(ys) > 10:  # log only where it spans a decade
        ax.set_yscale("log")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, frameon=False)
    return fig
