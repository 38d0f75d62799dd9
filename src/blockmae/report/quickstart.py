"""The quickstart's report: the answer first (every arm against every other and random init, over the
reference encoders' pretraining seeds), then the user's own run beside the references. Built as a
Document, rendered like every other report.

The text says only what the numbers support. A verdict (blockmae.report.decisions, the policy of every
report) is the mean over seeds of the per-seed paired difference with a t-interval over seeds,
Holm-adjusted across the report's verdicts: "inside the noise" only when that interval covers 0, "higher"/"lower" when it excludes 0 and the
adjusted p < 0.05, otherwise "not resolved with N seeds". Every verdict is printed beside both arms'
training stage, and an arm whose probe has not learned shape gets no shape-bias verdict. Each seed's
per-image tests are secondary detail, labelled as conditional on that seed's training; with one seed per
arm the report says that its intervals cover test images only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from blockmae.report.decisions import (
    HIGHER, INSIDE, LOWER, NOT_INTERPRETABLE, conditional_on_seed, interval_scope, per_image_word,
)
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

    answer: list[ArmResult]  # references + random init, one per arm and seed; empty without references
    answer_comparisons: list[Any]  # the per-seed per-image tests (secondary detail)
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
    verdicts: list[Any] = field(default_factory=list)  # blockmae.report.decisions.Verdict, decided
    stages: dict[str, Any] = field(default_factory=dict)  # arm -> blockmae.report.decisions.ArmStage
    seed_indices: list[int] = field(default_factory=list)  # the answer's seed indices
    trained: bool = True  # your run took place (--train)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _p(p: float) -> str:
    return f"p = {p:.2g}" if p >= 1e-4 else "p < 1e-4"


def _difference(c: Any) -> str:
    scale, unit = (100, " points") if c.metric != "shape bias" else (1, "")
    digits = 1 if scale == 100 else 3
    return (f"{scale * c.difference:+.{digits}f}{unit} [{scale * c.low:+.{digits}f}, {scale * c.high:+.{digits}f}]")


def per_image_verdict(c: Any) -> str:
    """A per-image test's word (blockmae.report.decisions.per_image_word)."""
    return per_image_word(c.low, c.high, c.p)


def comparisons_table(table_id: str, caption: str, comparisons: Sequence[Any]) -> Table:
    seeded = any(getattr(c, "seed", None) is not None for c in comparisons)
    table = Table(table_id, caption, [("first", "Encoder"), ("second", "Against")]
                  + ([("seed", "Seed")] if seeded else [])
                  + [("metric", "Metric"), ("difference", "Difference [95% CI over test images]"), ("p", "p"),
                     ("test", "Test"), ("n", "Images"), ("verdict", "Verdict")])
    for c in comparisons:
        table.add(first=c.first, second=c.second, metric=c.metric, difference=Cell(_difference(c), c.difference),
                  p=Cell(_p(c.p), c.p), test=c.test, n=c.n, verdict=per_image_verdict(c),
                  **({"seed": c.seed} if seeded else {}))
    return table


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _metric_value(metric: str, x: float, signed: bool = True) -> str:
    if metric == "shape bias":
        return f"{x:+.3f}" if signed else f"{x:.3f}"
    return f"{100 * x:+.1f}" if signed else f"{100 * x:.1f}"


def _unit(metric: str) -> str:
    return "" if metric == "shape bias" else " points"


def verdict_interval(v: Any) -> str:
    """'+2.1 points [-0.4, +4.6]' (or the mean alone when there is no interval)."""
    mean = _metric_value(v.metric, v.mean) + _unit(v.metric)
    if v.low is None or v.high is None:
        return mean
    return f"{mean} [{_metric_value(v.metric, v.low)}, {_metric_value(v.metric, v.high)}]"


def verdict_sentence(v: Any) -> str:
    """One sentence per verdict, saying no more than the verdict's rule allows."""
    if v.verdict == NOT_INTERPRETABLE:
        return f"{v.first} vs {v.second}, shape bias: no verdict, because {v.reason}."
    holm = f"; Holm-adjusted {_p(v.p_holm)}" if v.p_holm is not None else ""
    detail = f"{verdict_interval(v)}, {interval_scope(v)}{holm}"
    if v.verdict in (HIGHER, LOWER):
        return f"{v.first} has a {v.verdict} {v.metric} than {v.second} ({detail})."
    if v.verdict == INSIDE:
        return f"{v.first} vs {v.second}, {v.metric}: inside the noise, the interval covers 0 ({detail})."
    return (f"{v.first} vs {v.second}, {v.metric}: {v.verdict} ({detail}"
            + ("; the interval excludes 0 but the Holm-adjusted p is not below 0.05" if v.p_holm is not None else "")
            + ").")


def stage_phrase(stage: Any) -> str:
    """'898,560 images seen, final loss 0.539, shape-only 12.4% [10.4, 14.5]' (means over seeds)."""
    parts = []
    seen = [x for x in stage.images_seen if x is not None]
    losses = [x for x in stage.final_loss if x is not None]
    if seen:
        parts.append(f"{sum(seen) / len(seen):,.0f} images seen" + (" (mean over seeds)" if len(seen) > 1 else ""))
    else:
        parts.append("untrained")
    if losses:
        parts.append(f"final loss {sum(losses) / len(losses):.3f}")
    iv = stage.shape_only
    parts.append(f"shape-only {_pct(iv.value)} [{_pct(iv.low)}, {_pct(iv.high)}]")
    return ", ".join(parts)


def stages_table(stages: Mapping[str, Any]) -> Table:
    table = Table("arm_stages", "Each arm's training stage (from the reference manifests) and whether its probe has "
                  "learned shape", [("arm", "Arm"), ("seeds", "Seeds"), ("images", "Images seen per seed"),
                                    ("loss", "Final loss per seed"),
                                    ("shape_only", "Shape-only accuracy, mean [95% CI]"),
                                    ("bound", "Lowest per-seed 95% Wilson lower bound"),
                                    ("learned", "Learned shape (bound >= 2x chance)")])
    for arm, st in stages.items():
        iv = st.shape_only
        table.add(arm=arm, seeds=", ".join(map(str, st.seeds)),
                  images=", ".join("-" if x is None else f"{x:,}" for x in st.images_seen),
                  loss=", ".join("-" if x is None else f"{x:.3f}" for x in st.final_loss),
                  shape_only=Cell(f"{_pct(iv.value)} [{_pct(iv.low)}, {_pct(iv.high)}]"
                                  + (" (over seeds)" if len(st.seeds) > 1 else " (over test images)"), iv.value),
                  bound=Cell(_pct(st.shape_only_lowest_bound), st.shape_only_lowest_bound),
                  learned="yes" if st.learned_shape else "no")
    return table


def verdicts_table(verdicts: Sequence[Any], stages: Mapping[str, Any]) -> Table:
    table = Table("verdicts", "Verdicts over seeds: per-seed paired differences (same seed index, same test images), "
                  "their mean with a 95% t-interval over seeds, Holm-adjusted p, and both arms' training stage",
                  [("first", "Arm"), ("second", "Against"), ("metric", "Metric"), ("seeds", "Seeds"),
                   ("per_seed", "Per-seed differences"), ("mean", "Mean difference [95% CI]"), ("over", "CI over"),
                   ("p", "p"), ("holm", "Holm p"), ("verdict", "Verdict"), ("stage_first", "Stage of arm"),
                   ("stage_second", "Stage of against")])
    for v in verdicts:
        table.add(first=v.first, second=v.second, metric=v.metric, seeds=", ".join(map(str, v.seeds)),
                  per_seed=", ".join(_metric_value(v.metric, d) for d in v.differences),
                  mean=Cell(verdict_interval(v), v.mean),
                  over="seeds" if v.seed_level else f"test images ({conditional_on_seed(v.seeds[0])})",
                  p=Cell("-" if v.p is None else _p(v.p), v.p), holm=Cell("-" if v.p_holm is None else _p(v.p_holm),
                                                                          v.p_holm),
                  verdict=v.verdict, stage_first=stage_phrase(stages[v.first]) if v.first in stages else "-",
                  stage_second=stage_phrase(stages[v.second]) if v.second in stages else "-")
    return table


def answer_text(results: QuickstartResults, baseline: str) -> list[str]:
    """The answer in plain words: seeds, training stages, shape learned or not, the verdicts."""
    seeds = results.seed_indices
    verdicts, stages = results.verdicts, results.stages
    n_seeds = {a: len(st.seeds) for a, st in stages.items()}
    family = sum(v.p_holm is not None for v in verdicts)
    paragraphs = []
    if max(n_seeds.values(), default=1) > 1:
        counts = ", ".join(f"{a} {_count(n, 'seed')}" for a, n in n_seeds.items())
        paragraphs.append(
            f"Seeds: {counts} "
            f"(seed indices {', '.join(map(str, seeds))}); random init has one encoder per seed index (its weights "
            "drawn with that seed). Every verdict compares two arms seed by seed on the same test images: the mean "
            "over seeds of the per-seed paired difference with a 95% Student t-interval over seeds (it covers "
            f"how much another pretraining seed moves an arm), p from the paired t-test, Holm-adjusted across the "
            f"{family} verdicts of this report. 'Inside the noise' only when the interval covers 0.")
    else:
        paragraphs.append(
            f"Seeds: one pretraining seed per arm (seed index {', '.join(map(str, seeds))}), so there is no seed-level "
            "interval: each verdict rests on that seed's per-image test, whose interval covers the sampling of test "
            "images only, not how much another pretraining seed would move an arm. p-values are Holm-adjusted "
            f"across the {family} verdicts of this report.")
    paragraphs.append("Training stage of each arm: " + "; ".join(
        f"{a}: {stage_phrase(st)}" for a, st in stages.items()) + ".")
    unlearned = [a for a, st in stages.items() if not st.learned_shape]
    learned = [a for a in stages if a not in unlearned]
    chance = next(iter(stages.values())).chance if stages else 0.1
    if unlearned:
        paragraphs.append(
            f"{', '.join(unlearned)}: the probe has not learned shape (at some seed the shape-only accuracy's 95% "
            f"lower bound is below {_pct(2 * chance)}, twice chance). Its shape bias is not interpretable: its "
            "'shape' decisions on cue-conflict images are chance hits, and a shape bias computed from them measures "
            "how far texture accuracy rises above chance, not shape use. No shape-bias verdict is given for "
            f"{'it' if len(unlearned) == 1 else 'them'}."
            + (f" {', '.join(learned)} {'has' if len(learned) == 1 else 'have'} learned shape." if learned else ""))
    else:
        paragraphs.append(f"Every arm's probe has learned shape (shape-only accuracy's 95% lower bound at least "
                          f"{_pct(2 * chance)} at every seed), so the shape-bias verdicts are interpretable.")
    resolved = [v for v in verdicts if v.verdict in (HIGHER, LOWER)]
    order = {"shape-only accuracy": 0, "shape bias": 1, "linear top-1": 2, "k-NN top-1": 3}
    between = [v for v in resolved if v.second != baseline]
    vs_base = [v for v in resolved if v.second == baseline]
    if between:
        paragraphs.append("Between the masks: " + " ".join(
            verdict_sentence(v) for v in sorted(between, key=lambda v: order.get(v.metric, 9))))
    else:
        paragraphs.append("Between the masks: no difference is resolved on any metric (see the table for each "
                          "comparison's interval).")
    if vs_base:
        paragraphs.append("Against random init: " + " ".join(
            verdict_sentence(v) for v in sorted(vs_base, key=lambda v: order.get(v.metric, 9))))
    elif baseline in stages:
        paragraphs.append("Against random init: no arm differs from random init on any metric by a resolved "
                          "verdict (see the table for each comparison's interval).")
    inside = [v for v in verdicts if v.verdict == INSIDE]
    open_ = [v for v in verdicts if v.verdict not in (HIGHER, LOWER, INSIDE, NOT_INTERPRETABLE)]
    if inside:
        paragraphs.append("Inside the noise (the interval covers 0): " + "; ".join(
            f"{v.first} vs {v.second}, {v.metric} {verdict_interval(v)}" for v in inside) + ".")
    if open_:
        paragraphs.append("Not resolved: " + " ".join(verdict_sentence(v) for v in open_))
    paragraphs.append(
        "What this does not show: the per-image tests below are conditional on each seed's trained encoders; "
        + ("the seed-level intervals rest on few seeds, so a 'not resolved' or 'inside the noise' call is not "
           "evidence of no difference; " if max(n_seeds.values(), default=1) > 1 else
           "with one seed per arm nothing here covers seed-to-seed variation of pretraining; ")
        + "ShapeTex is a synthetic proxy (shapes drawn with textures that agree with them 80% of the time in "
        "training), so these statements are about this data and these small models, not about ImageNet-scale ViTs.")
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
    base = [c for c in results.own_comparisons if c.metric == "linear top-1" and c.second.startswith("random-init")]
    if base:
        out.append("Against random init: " + "; ".join(
            f"{c.first} {_difference(c)} ({_p(c.p)}, {per_image_verdict(c)})"
            for c in base) + ".")
    return out


def quickstart_document(title: str, intro: str, results: QuickstartResults, baseline: str = "random-init") -> Document:
    """The quickstart report as a Document: the answer, your run, settings, runs."""
    doc = Document(title, [" ".join(intro.split())])
    if results.answer:
        answer = doc.section("The answer: every arm over its seeds, against each other and random init")
        answer.add(*[Paragraph(p) for p in answer_text(results, baseline)])
        answer.add(stages_table(results.stages))
        answer.add(verdicts_table(results.verdicts, results.stages))
        answer.add(results_table(results.answer, caption="Results per encoder (one row per arm and seed)"))
        answer.add(comparisons_table("answer_comparisons", "Per-image tests per seed (secondary detail: each is "
                                     "conditional on that seed's trained encoders; its interval covers test images "
                                     "only)", results.answer_comparisons))
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
    if results.trained:
        own = doc.section("Your run: the same arms trained here" + (" in full" if results.from_scratch else ""))
        own.add(*[Paragraph(p) for p in own_text(results)])
        own.add(results_table(results.own, table_id="own_results", caption="Results per arm trained here"))
        if results.own_comparisons:
            own.add(comparisons_table("own_comparisons", "Paired comparisons of your arms (per-image tests, "
                                      "conditional on this run's training)", results.own_comparisons))
        own.add(*results.own_figures)
    else:
        doc.section("Your run: not run").add(Paragraph(
            "The arms were not pretrained here. Add --train to pretrain the three arms on this machine for the "
            "budget in the settings and compare them with the references, or --from-scratch to train them in full "
            "with the references' recipe (hours on a CPU, minutes on a GPU)."))
    if results.settings:
        doc.section("Settings").add(Bullets(results.settings))
    runs: list[Block] = [runs_table([*results.answer, *results.own])]
    if results.run_dirs:
        runs.append(Links(list(results.run_dirs)))
    doc.section("Runs in the registry").add(*runs)
    return doc
