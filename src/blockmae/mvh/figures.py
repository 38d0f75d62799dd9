"""The benchmark's figures in model-vs-human's style, from the results.json record of `metrics.benchmark`:
shape bias per category beside humans, and accuracy against condition per parametric dataset."""

from __future__ import annotations

import math
from typing import Any

from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from blockmae.mvh.conditions import LEVELS
from blockmae.mvh.metrics import HUMANS
from blockmae.report.document import fmt
from blockmae.report.figures import arm_colour

HUMAN_COLOUR = "#A51E37"  # model-vs-human's red for human observers
MARKERS = ("o", "s", "^", "v", "P", "X", "*", "<", ">", "h")
CHANCE = 1 / 16


def maker_style(makers: list[str]) -> dict[str, dict[str, Any]]:
    """Colour and marker per decision maker; humans are red diamonds as in model-vs-human's figures."""
    models = [m for m in makers if m != HUMANS]
    style = {m: {"color": arm_colour(i), "marker": MARKERS[i % len(MARKERS)]} for i, m in enumerate(models)}
    style[HUMANS] = {"color": HUMAN_COLOUR, "marker": "D"}
    return style


def shape_bias_figure(shape_bias: dict[str, Any]) -> Figure:
    """Fraction of shape decisions per shape category (rows, ordered by the humans'), a vertical line at
    each decision maker's overall shape bias; the top axis reads the same as texture decisions."""
    makers = list(shape_bias)
    style = maker_style(makers)
    order_by = HUMANS if HUMANS in shape_bias else makers[0]
    def fraction(maker: str, category: str) -> float:  # nan where a category has no shape or texture decision
        value = shape_bias[maker]["per_category"].get(category, {}).get("value")
        return math.nan if value is None else value

    categories = sorted(shape_bias[order_by]["per_category"], key=lambda c: -math.inf if math.isnan(
        fraction(order_by, c)) else fraction(order_by, c))
    fig = Figure(figsize=(6.2, 6.8), layout="constrained")
    ax = fig.add_subplot()
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.5, len(categories) - 0.5)
    for i in range(len(categories) - 1):
        ax.axhline(i + 0.5, color="grey", linestyle=":", alpha=0.4, linewidth=0.8)
    for maker in makers:
        record = shape_bias[maker]
        if record["shape_bias"]["value"] is not None:
            ax.axvline(record["shape_bias"]["value"], color=style[maker]["color"], linewidth=1)
        ax.scatter([fraction(maker, c) for c in categories], range(len(categories)),
                   s=55, zorder=3, clip_on=False, label=f"{maker} ({fmt(record['shape_bias']['value'])})",
                   edgecolors=(0.3, 0.3, 0.3, 0.3), linewidths=0.3, **style[maker])
    ax.set_yticks(range(len(categories)), categories)
    ax.set_xlabel("fraction of 'shape' decisions")
    top = ax.secondary_xaxis("top", functions=(lambda x: 1 - x, lambda x: 1 - x))
    top.set_xlabel("fraction of 'texture' decisions")
    fig.legend(loc="outside lower center", ncols=min(len(makers), 3), fontsize=8, frameon=False)
    return fig


def accuracy_figure(accuracy_by_condition: dict[str, dict[str, list[dict[str, Any]]]]) -> Figure | None:
    """16-class accuracy against condition, one panel per parametric dataset, humans in red; the dotted line
    is chance (1/16). None when no parametric dataset is present."""
    datasets = [d for d in LEVELS if d in accuracy_by_condition]
    if not datasets:
        return None
    makers = sorted({m for d in datasets for m in accuracy_by_condition[d]}, key=lambda m: (m == HUMANS, m))
    style = maker_style(makers)
    columns = min(4, len(datasets))
    rows = -(-len(datasets) // columns)
    fig = Figure(figsize=(3.1 * columns, 2.7 * rows), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for ax, dataset in zip(axes, datasets):
        levels = LEVELS[dataset]
        for maker, points in accuracy_by_condition[dataset].items():
            position = {c: i for i, c in enumerate(levels.conditions)}
            ax.plot([position[p["condition"]] for p in points], [p["accuracy"] for p in points], markersize=5,
                    linewidth=1, label=maker, **style[maker])
        ax.axhline(CHANCE, color="grey", linestyle=":", linewidth=1)
        ax.set_xticks(range(len(levels.conditions)), levels.labels, fontsize=7,
                      rotation=45 if len(levels.labels) > 4 and max(map(len, levels.labels)) > 3 else 0)
        ax.set_ylim(0, 1)
        ax.set_title(dataset, fontsize=10)
        ax.set_xlabel(levels.xlabel, fontsize=8)
        ax.spines[["top", "right"]].set_visible(False)
    for ax in axes[len(datasets):]:
        ax.set_visible(False)
    axes[0].set_ylabel("16-class accuracy")
    handles = [Line2D([], [], markersize=5, linewidth=1, label=m, **style[m]) for m in makers]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(makers), 5), frameon=False, fontsize=8)
    return fig
