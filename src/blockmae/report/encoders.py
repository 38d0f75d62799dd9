"""A few encoders compared on a probe and cue-conflict shape bias: their results read from the registry
(:func:`arm_from_registry`, never recomputed), the results table and the figures. The quickstart's report
(blockmae.report.quickstart) is their user; what the differences mean is decided by the one policy of every
report (blockmae.report.decisions).

Accuracy intervals are Wilson score intervals over the evaluated images; shape-bias intervals are the
bootstrap intervals of the shape-bias evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from blockmae.errors import BlockMAEError
from blockmae.report.document import Cell, Table
from blockmae.report.figures import BASELINE_GREY, arm_colour, new_figure
from blockmae.report.stats import Interval, wilson_interval


@dataclass
class ArmResult:
    """Everything the report says about one encoder. Accuracies are fractions in [0, 1]."""

    name: str
    pretrained: bool
    linear_top1: float
    linear_top5: float
    knn_top1: float
    probe_images: int  # images the probes were evaluated on (for the accuracy intervals)
    shape_bias: Interval
    shape_only_accuracy: float
    texture_only_accuracy: float
    neither_fraction: float | None = None
    run_ids: dict[str, str] = field(default_factory=dict)  # stage -> registry run id

    @property
    def linear(self) -> Interval:
        return wilson_interval(self.linear_top1, self.probe_images)

    @property
    def knn(self) -> Interval:
        return wilson_interval(self.knn_top1, self.probe_images)


# ---------------------------------------------------------------------------------------------
# Reading results from the registry


def _metric(metrics: Mapping[str, Any], names: Sequence[str], run: str) -> float:
    for name in names:
        if name in metrics and metrics[name] is not None:
            return float(metrics[name])
    raise KeyError(f"run {run} has none of the metrics {list(names)} (it has {sorted(metrics)})")


# Metric names written by blockmae.evaluation (first match wins).
LINEAR_TOP1 = ("top1",)
LINEAR_TOP5 = ("top5",)
KNN_TOP1 = ("knn_top1", "top1")
EVAL_IMAGES = ("num_eval",)
SHAPE_BIAS = ("shape_bias",)
SHAPE_BIAS_LOW = ("shape_bias_low", "shape_bias_ci_low")
SHAPE_BIAS_HIGH = ("shape_bias_high", "shape_bias_ci_high")
SHAPE_ONLY = ("shape_only_acc",)
# The shape probe's decision on a texture-only image counts as right when it names the class whose
# texture it is in training (the train-split correlation mapping).
TEXTURE_ONLY = ("texture_only_as_shape", "texture_only_acc")
NEITHER = ("frac_neither",)


def arm_from_metrics(
    name: str,
    pretrained: bool,
    linear: Mapping[str, Any],
    knn: Mapping[str, Any],
    shape: Mapping[str, Any],
    run_ids: Mapping[str, str] | None = None,
) -> ArmResult:
    """Build an :class:`ArmResult` from the metric dicts of the linear, k-NN and shape-bias runs."""
    ids = dict(run_ids or {})
    sb = _metric(shape, SHAPE_BIAS, ids.get("shape_bias", name))
    neither = next((float(shape[k]) for k in NEITHER if shape.get(k) is not None), None)
    return ArmResult(
        name=name,
        pretrained=pretrained,
        linear_top1=_metric(linear, LINEAR_TOP1, ids.get("linear", name)),
        linear_top5=_metric(linear, LINEAR_TOP5, ids.get("linear", name)),
        knn_top1=_metric(knn, KNN_TOP1, ids.get("knn", name)),
        probe_images=int(_metric(linear, EVAL_IMAGES, ids.get("linear", name))),
        shape_bias=Interval(
            sb,
            _metric(shape, SHAPE_BIAS_LOW, ids.get("shape_bias", name)),
            _metric(shape, SHAPE_BIAS_HIGH, ids.get("shape_bias", name)),
        ),
        shape_only_accuracy=_metric(shape, SHAPE_ONLY, ids.get("shape_bias", name)),
        texture_only_accuracy=_metric(shape, TEXTURE_ONLY, ids.get("shape_bias", name)),
        neither_fraction=neither,
        run_ids=ids,
    )


def arm_from_registry(registry: Any, name: str, pretrained: bool, run_ids: Mapping[str, str]) -> ArmResult:
    """Read an arm's finished linear/knn/shape_bias runs (ids in `run_ids`) from the registry."""
    metrics = {}
    for stage in ("linear", "knn", "shape_bias"):
        run = registry.get(run_ids[stage])
        if run.status != "completed":
            raise BlockMAEError(f"run {run.id} ({name}, {stage}) is {run.status}, not completed; rerun it")
        metrics[stage] = dict(run.metrics)
    return arm_from_metrics(name, pretrained, metrics["linear"], metrics["knn"], metrics["shape_bias"], run_ids)


# ---------------------------------------------------------------------------------------------
# Tables


RESULT_HEADERS = [
    "Encoder",
    "Linear top-1 (%)",
    "Linear top-5 (%)",
    "k-NN top-1 (%)",
    "Shape bias [95% CI]",
    "Neither (%)",
    "Shape-only acc (%)",
    "Texture-only acc (%)",
]
_RESULT_KEYS = ["encoder", "linear_top1", "linear_top5", "knn_top1", "shape_bias", "neither", "shape_only",
                "texture_only"]


def _pct_cell(x: float | None) -> Cell:
    return Cell("-", None) if x is None else Cell(f"{100 * x:.1f}", 100 * x)


def results_table(arms: Sequence[ArmResult], table_id: str = "results", caption: str = "Results per encoder") -> Table:
    """The results table: one row per encoder (percentages; shape bias with its bootstrap interval)."""
    table = Table(table_id, caption, list(zip(_RESULT_KEYS, RESULT_HEADERS)))
    for a in arms:
        table.add(
            encoder=a.name,
            linear_top1=_pct_cell(a.linear_top1),
            linear_top5=_pct_cell(a.linear_top5),
            knn_top1=_pct_cell(a.knn_top1),
            shape_bias=Cell(f"{a.shape_bias.value:.3f} [{a.shape_bias.low:.3f}, {a.shape_bias.high:.3f}]",
                            a.shape_bias.value),
            neither=_pct_cell(a.neither_fraction),  # not measured is shown as such, never as 0
            shape_only=_pct_cell(a.shape_only_accuracy),
            texture_only=_pct_cell(a.texture_only_accuracy),
        )
    return table


def parse_results_table(markdown: str) -> dict[str, dict[str, str]]:
    """Inverse of the markdown rendering of :func:`results_table` (for tests and tools): encoder -> column
    -> cell text."""
    lines = markdown.splitlines()
    header = "| " + " | ".join(RESULT_HEADERS) + " |"
    start = lines.index(header)
    out: dict[str, dict[str, str]] = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        out[cells[0]] = dict(zip(RESULT_HEADERS, cells))
    return out


def runs_table(arms: Sequence[ArmResult]) -> Table:
    stages = sorted({s for a in arms for s in a.run_ids})
    table = Table("runs", "Registry run ids per encoder and stage", [("encoder", "Encoder")] + [(s, s) for s in stages])
    for a in arms:
        table.add(encoder=a.name, **{s: a.run_ids.get(s, "-") for s in stages})
    return table


# ---------------------------------------------------------------------------------------------
# Figures (matplotlib Figures; the report's writer saves or inlines them)


def _colours(arms: Sequence[ArmResult]) -> list[str]:
    out, i = [], 0
    for a in arms:
        if a.pretrained:
            out.append(arm_colour(i))
            i += 1
        else:
            out.append(BASELINE_GREY)
    return out


def shape_bias_figure(arms: Sequence[ArmResult]) -> Any:
    """Bar chart of shape bias per arm with its 95% bootstrap interval and the 0.5 line."""
    fig, ax = new_figure(1.3 * len(arms) + 1.8, 3.6)
    x = list(range(len(arms)))
    values = [a.shape_bias.value for a in arms]
    err = [[a.shape_bias.value - a.shape_bias.low for a in arms], [a.shape_bias.high - a.shape_bias.value for a in arms]]
    ax.bar(x, values, color=_colours(arms), yerr=err, capsize=6, width=0.6, edgecolor="black", linewidth=0.6)
    for xi, a in zip(x, arms):
        ax.text(
            xi, a.shape_bias.high + 0.02, f"{a.shape_bias.value:.3f}", ha="center", va="bottom", fontsize=9,
            bbox=dict(facecolor="white", edgecolor="none", pad=1),
        )
    ax.axhline(0.5, color="black", linestyle=":", linewidth=1)
    ax.text(len(arms) - 0.45, 0.5, "no preference", ha="left", va="center", fontsize=8)
    ax.set_xticks(x, [a.name for a in arms])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("shape bias (shape / (shape + texture))")
    ax.set_title("Shape bias on cue-conflict images (95% bootstrap CI)", fontsize=10)
    return fig


def accuracy_figure(arms: Sequence[ArmResult], chance: float | None = None) -> Any:
    """Grouped bars per arm: linear top-1 and k-NN top-1 (with Wilson intervals), shape-only and
    texture-only accuracy; `chance` draws the chance level."""
    series = [
        ("linear top-1", [a.linear for a in arms]),
        ("k-NN top-1", [a.knn for a in arms]),
        ("shape-only", [a.shape_only_accuracy for a in arms]),
        ("texture-only", [a.texture_only_accuracy for a in arms]),
    ]
    fig, ax = new_figure(1.6 * len(arms) + 2.5, 3.6)
    width = 0.8 / len(series)
    colours = [arm_colour(0), arm_colour(2), arm_colour(4), arm_colour(1)]
    for k, (label, values) in enumerate(series):
        xs = [i - 0.4 + width * (k + 0.5) for i in range(len(arms))]
        ivs = [v for v in values if isinstance(v, Interval)]
        err = [[100 * (iv.value - iv.low) for iv in ivs], [100 * (iv.high - iv.value) for iv in ivs]] if ivs else None
        heights = [100 * (v.value if isinstance(v, Interval) else v) for v in values]
        ax.bar(xs, heights, width=width, color=colours[k], label=label, yerr=err, capsize=3)
    if chance is not None:
        ax.axhline(100 * chance, color="black", linestyle=":", linewidth=1)
        ax.text(len(arms) - 0.45, 100 * chance, "chance", ha="left", va="center", fontsize=8)
    ax.set_xticks(range(len(arms)), [a.name for a in arms])
    ax.set_ylim(0, 105)
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Probe accuracy per encoder (bars: 95% Wilson CI)", fontsize=10)
    ax.legend(fontsize=8, ncols=4, loc="upper center", bbox_to_anchor=(0.5, -0.1), frameon=False)
    return fig


def loss_figure(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
                references: Mapping[str, tuple[Sequence[float], Sequence[float]]] | None = None) -> Any:
    """Pretraining loss against images seen, one line per arm (name -> (images, losses)), in the arms'
    colours of the other figures. `references`: longer runs of the same arms (same names), drawn dashed
    in the arm's colour on a log axis, so that a short run shows where it stands on the long one."""
    fig, ax = new_figure(5.6, 3.4)
    references = references or {}
    colours = {name: arm_colour(k) for k, name in enumerate(dict.fromkeys([*curves, *references]))}
    for name, (images, losses) in references.items():
        ax.plot([i / 1000 for i in images], losses, color=colours[name], linestyle="--", linewidth=1.0,
                alpha=0.8, label=f"{name}, reference")
    for name, (images, losses) in curves.items():
        ax.plot([i / 1000 for i in images], losses, color=colours[name], label=name, linewidth=1.6,
                marker="o" if len(images) < 3 else None)
    if references:
        ax.set_xscale("log")
    ax.set_xlabel("images seen (thousands)" + (", log scale" if references else ""))
    ax.set_ylabel("MAE loss (masked patches)")
    ax.set_title("Pretraining loss per arm" + (" against the reference runs" if references else ""), fontsize=10)
    ax.legend(fontsize=7 if references else 8, frameon=False)
    return fig
