"""The quickstart's report: the answer first (reference encoders against random init, paired tests),
then the user's own run beside the references. Built as a Document, rendered like every other report.

The text says only what the numbers support: a paired difference is called significant at p < 0.01
(exact McNemar for accuracies, paired bootstrap for shape bias) and otherwise "inside the noise"; the
intervals cover the sampling of test images, not seed-to-seed variation of pretraining, and the report
says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from blockmae.report.document import Block, Bullets, Cell, Document, Figure, Image, Links, Paragraph, Table
from blockmae.report.encoders import ArmResult, results_table, runs_table

# Headline numbers of each diagnostic in the answer's table: (summary key, label). A diagnostic that is
# not listed shows its metrics that carry a 95% interval (key, key_low, key_high).
DIAGNOSTIC_HEADLINES: dict[str, list[tuple[str, str]]] = {
    "lowpass": [("colour_auc_normalised", "low-pass robustness (normalised AUC, colour)"),
                ("greyscale_auc_normalised", "low-pass robustness (normalised AUC, greyscale)")],
    "stylized": [("phase_bias", "phase-vs-amplitude bias (1 = follows the phase, i.e. the layout)")],
    "attention": [("figure_mass_clean", "attention rollout mass on the figure"),
                  ("figure_area", "figure area (the mass a uniform map would give)"),
                  ("stability_score", "attention stability under occlusion")],
}

# Interval keys of headline numbers whose names do not follow key_low / key_high.
INTERVAL_KEYS = {"stability_score": ("stability_low", "stability_high")}


def interval_of(summary: Mapping[str, Any], key: str) -> tuple[Any, Any]:
    low, high = INTERVAL_KEYS.get(key, (f"{key}_low", f"{key}_high"))
    return summary.get(low), summary.get(high)


@dataclass
class Provenance:
    """Where one reference encoder comes from (its manifest)."""

    name: str
    id: str
    command: str
    trained_on: str
    device: str
    git_commit: str
    trained_at: str
    images_seen: int
    wall_time_s: float
    final_loss: float
    recorded_linear_top1: float | None


@dataclass
class QuickstartResults:
    """Everything the quickstart's report shows; comparisons are blockmae.quickstart.comparisons objects."""

    answer: list[ArmResult]  # references + random init; empty without references
    answer_comparisons: list[Any]
    provenance: list[Provenance]
    diagnostics: dict[str, dict[str, dict[str, Any]]]  # encoder name -> diagnostic -> summary
    own: list[ArmResult]  # the arms trained here (+ random init when there is no answer)
    own_comparisons: list[Any]
    own_sizes: str  # one sentence: what the user's arms were trained with
    from_scratch: bool
    answer_figures: list[Figure | Image] = field(default_factory=list)
    own_figures: list[Figure | Image] = field(default_factory=list)
    settings: list[str] = field(default_factory=list)
    run_dirs: list[tuple[str, Path]] = field(default_factory=list)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _p(p: float) -> str:
    return f"p = {p:.2g}" if p >= 1e-4 else "p < 1e-4"


def _difference(c: Any) -> str:
    scale, unit = (100, " points") if c.metric != "shape bias" else (1, "")
    digits = 1 if scale == 100 else 3
    return (f"{scale * c.difference:+.{digits}f}{unit} [{scale * c.low:+.{digits}f}, {scale * c.high:+.{digits}f}]")


def comparisons_table(table_id: str, caption: str, comparisons: Sequence[Any]) -> Table:
    table = Table(table_id, caption, [("first", "Encoder"), ("second", "Against"), ("metric", "Metric"),
                                      ("difference", "Difference [95% CI]"), ("p", "p"), ("test", "Test"),
                                      ("n", "Images"), ("verdict", "Verdict")])
    for c in comparisons:
        table.add(first=c.first, second=c.second, metric=c.metric, difference=Cell(_difference(c), c.difference),
                  p=Cell(_p(c.p), c.p), test=c.test, n=c.n,
                  verdict="significant (p < 0.01)" if c.significant else "inside the noise")
    return table


def _find(comparisons: Sequence[Any], first: str, second: str, metric: str) -> Any | None:
    return next((c for c in comparisons if (c.first, c.second, c.metric) == (first, second, metric)), None)


def answer_text(answer: Sequence[ArmResult], comparisons: Sequence[Any], baseline: str) -> list[str]:
    """Plain words on what the answer's numbers show and what they do not."""
    refs = [a for a in answer if a.pretrained]
    base = next(a for a in answer if a.name == baseline)
    beat, not_beat = [], []
    for a in refs:
        c = _find(comparisons, a.name, base.name, "linear top-1")
        (beat if c is not None and c.significant and c.difference > 0 else not_beat).append((a, c))
    paragraphs = []
    parts = [f"{a.name} {_pct(a.linear_top1)} ({_difference(c)} against random init, {_p(c.p)})"
             for a, c in beat + not_beat if c is not None]
    if refs and not not_beat:
        head = "Every reference encoder beats the random-init encoder on the linear probe, by a margin the paired test calls significant"
    elif beat:
        head = f"Only {', '.join(a.name for a, _ in beat)} beat{'s' if len(beat) == 1 else ''} random init on the linear probe significantly"
    else:
        head = "No reference encoder beats random init significantly on the linear probe"
    paragraphs.append(f"{head}: {'; '.join(parts)}; random init reads {_pct(base.linear_top1)}. "
                      "So the pretraining of the references did learn features the probe can use, and their shape "
                      "bias below describes learned features rather than random ones." if refs and not not_beat else
                      f"{head}: {'; '.join(parts)}; random init reads {_pct(base.linear_top1)}.")
    bias = []
    for i, a in enumerate(refs):
        for b in refs[i + 1:]:
            c = _find(comparisons, b.name, a.name, "shape bias")
            if c is not None:
                bias.append(c)
    if bias:
        apart = [c for c in bias if c.significant]
        inside = [c for c in bias if not c.significant]
        text = []
        for c in apart:
            word = "higher" if c.difference > 0 else "lower"
            text.append(f"{c.first} has a {word} shape bias than {c.second} ({_difference(c)}, {_p(c.p)})")
        if inside:
            text.append("the shape-bias differences " + "; ".join(f"{c.first} vs {c.second} {_difference(c)} ({_p(c.p)})"
                                                                  for c in inside) + " are inside the noise")
        paragraphs.append("Between the masks: " + "; ".join(text) + ". Shape bias per encoder: " + "; ".join(
            f"{a.name} {a.shape_bias.value:.3f} [{a.shape_bias.low:.3f}, {a.shape_bias.high:.3f}]" for a in answer) + ".")
    paragraphs.append(
        "What this does not show: each arm is one pretraining seed, so the intervals and tests cover the "
        "sampling of test images, not how much another seed would move an arm; ShapeTex is a synthetic proxy "
        "(shapes drawn with textures that agree with them 80% of the time in training), so a shape bias here is "
        "a statement about this data and these small models, not about ImageNet-scale ViTs.")
    return paragraphs


def provenance_text(provenance: Sequence[Provenance]) -> list[str]:
    if not provenance:
        return []
    where = ("on a CPU, in the background (configs/quickstart_gpu.yaml's recipe, unchanged)"
             if provenance[0].trained_on == "cpu" else f"on {provenance[0].device}")
    lines = [f"{p.name}: `{p.id}`, trained with `{p.command}`; {p.images_seen:,} images seen, final loss "
             f"{p.final_loss:.3f}, {p.wall_time_s / 60:.0f} min on {p.device}, commit {p.git_commit[:10]}, trained "
             f"{p.trained_at}" + (f"; its manifest records linear top-1 {_pct(p.recorded_linear_top1)}"
                                  if p.recorded_linear_top1 is not None else "")
             for p in provenance]
    return [f"The reference encoders ship with the package (`blockmae weights list`, checked by `blockmae weights "
            f"verify`) and were trained {where}. Each manifest holds the resolved config, the exact command, "
            "versions, device, loss curve and the sha256 of the weights.", *lines]


def headline_keys(name: str, summary: Mapping[str, Any]) -> list[str]:
    """The summary keys a diagnostic is reported by: its DIAGNOSTIC_HEADLINES, else those with an interval."""
    listed = DIAGNOSTIC_HEADLINES.get(name)
    if listed is not None:
        return [k for k, _ in listed]
    return [k for k in summary if f"{k}_low" in summary and f"{k}_high" in summary]


def diagnostics_table(diagnostics: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> Table | None:
    """One row per encoder, one column per headline number of each diagnostic (with its interval)."""
    columns: list[tuple[str, str, str]] = []  # (diagnostic, key, label)
    names = list(dict.fromkeys(d for per in diagnostics.values() for d in per))
    for name in names:
        sample = next(per[name] for per in diagnostics.values() if name in per)
        labels = dict(DIAGNOSTIC_HEADLINES.get(name, []))
        columns += [(name, k, labels.get(k, f"{name}: {k}")) for k in headline_keys(name, sample)]
    if not columns:
        return None
    table = Table("diagnostics", "Diagnostics per encoder (95% intervals where the diagnostic gives them)",
                  [("encoder", "Encoder")] + [(f"{d}.{k}", label) for d, k, label in columns])
    for encoder, per in diagnostics.items():
        cells: dict[str, Any] = {"encoder": encoder}
        for d, k, _ in columns:
            s = per.get(d, {})
            v = s.get(k)
            if v is None or (isinstance(v, float) and math.isnan(v)):
                cells[f"{d}.{k}"] = Cell("-", None)
                continue
            low, high = interval_of(s, k)
            text = f"{v:.3f}" + (f" [{low:.3f}, {high:.3f}]" if low is not None and high is not None else "")
            cells[f"{d}.{k}"] = Cell(text, float(v))
        table.add(**cells)
    return table


def own_text(results: QuickstartResults) -> list[str]:
    """What the user's own arms show, beside the references."""
    out = [results.own_sizes]
    reproduce = [c for c in results.own_comparisons if c.metric == "linear top-1" and "reference" in c.second]
    if reproduce:
        inside = [c for c in reproduce if c.interval_holds_zero]
        detail = "; ".join(f"{c.first} against {c.second}: {_difference(c)} ({_p(c.p)})" for c in reproduce)
        if results.from_scratch:
            verdict = ("This machine reproduces the references: every arm's linear-probe difference has a 95% interval "
                       "that holds 0" if len(inside) == len(reproduce) else
                       f"This machine reproduces {len(inside)} of {len(reproduce)} references within the 95% interval")
            out.append(f"{verdict} ({detail}).")
        else:
            out.append("Against the references (a far longer pretraining), on the same test images: " + detail
                       + ". The loss curves show where this short run stands on the references' curves: the "
                         "references' probe accuracy is what the same recipe reaches after their images seen.")
    base = [c for c in results.own_comparisons if c.metric == "linear top-1" and c.second == "random-init"]
    if base:
        out.append("Against random init: " + "; ".join(
            f"{c.first} {_difference(c)} ({_p(c.p)}, {'significant' if c.significant else 'inside the noise'})"
            for c in base) + ".")
    return out


def quickstart_document(title: str, intro: str, results: QuickstartResults, baseline: str = "random-init") -> Document:
    """The quickstart report as a Document: the answer, your run, settings, runs."""
    doc = Document(title, [" ".join(intro.split())])
    if results.answer:
        answer = doc.section("The answer: reference encoders against random init")
        answer.add(*[Paragraph(p) for p in answer_text(results.answer, results.answer_comparisons, baseline)])
        answer.add(results_table(results.answer))
        answer.add(comparisons_table("answer_comparisons", "Paired comparisons on the same test images",
                                     results.answer_comparisons))
        diagnostics = diagnostics_table(results.diagnostics)
        if diagnostics is not None:
            answer.add(diagnostics)
        answer.add(*results.answer_figures)
        origin = answer.sub("Where the reference encoders come from")
        origin.add(Bullets(provenance_text(results.provenance)))
    else:
        doc.section("The answer").add(Paragraph(
            "No reference encoders were evaluated (references: false, or the settings change the architecture "
            "the references have); the section below is the whole result.", "warning"))
    own = doc.section("Your run: the same arms trained here" + (" in full" if results.from_scratch else ""))
    own.add(*[Paragraph(p) for p in own_text(results)])
    own.add(results_table(results.own, table_id="own_results", caption="Results per arm trained here"))
    if results.own_comparisons:
        own.add(comparisons_table("own_comparisons", "Paired comparisons of your arms", results.own_comparisons))
    own.add(*results.own_figures)
    if results.settings:
        doc.section("Settings").add(Bullets(results.settings))
    runs: list[Block] = [runs_table([*results.answer, *results.own])]
    if results.run_dirs:
        runs.append(Links(list(results.run_dirs)))
    doc.section("Runs in the registry").add(*runs)
    return doc
