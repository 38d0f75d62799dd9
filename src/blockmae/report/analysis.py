"""A study's report: per metric, the table by arm over seeds, the paired differences against the baseline,
the plots; then loss curves, diagnostic curves, reconstructions, the runs and their provenance.

Rules: mean +- sample std over seeds with a 95% t-interval (n - 1 degrees of freedom); a single seed shows
the evaluation's own interval where it stored one. Paired differences use the seeds an arm shares with
the baseline and are decided by the one policy of every report (blockmae.report.decisions): a seed-level
t-interval and paired t-test, Holm-adjusted across the study's verdicts; with one shared seed, that seed's
per-image McNemar test (where both evaluations saved per-image results on the same images), labelled as
conditional on the seed and saying nothing about training seeds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from blockmae.report.document import Cell, Details, Document, Figure, Image, Links, Paragraph, Section, Table, fmt, slug
from blockmae.report.figures import arm_colour, curves_figure, metric_vs_epochs, metric_vs_variable
from blockmae.report.model import PRETRAIN_LOSS, Arm, Curve, Study
from blockmae.report.decisions import (
    ALPHA, HIGHER, INSIDE, LOWER, PerImageTest, Verdict, conditional_on_seed, decide, pair_verdict,
)
from blockmae.report.stats import (
    McNemar, accuracy_difference_interval, mcnemar_test, mean_std, paired_comparison, t_interval,
)

# Reconstruction PNGs embedded per arm (the first seed's), at most this many per arm.
MAX_RECONSTRUCTIONS_PER_ARM = 6


def _p(p: float | None) -> str:
    return "-" if p is None else ("<0.001" if p < 0.001 else f"{p:.3f}")


def _ci(low: float | None, high: float | None) -> str:
    return "-" if low is None or high is None else f"[{fmt(low)}, {fmt(high)}]"


def arm_summary(study: Study, arm: Arm, key: str, milestone: int | None = None) -> dict[str, Any]:
    """Mean, std, n, 95% interval (t over seeds; the evaluation's own for one seed) of `key` for `arm`."""
    per_seed = study.values(key, milestone)[arm.name]
    out: dict[str, Any] = {"seeds": per_seed, "n": len(per_seed), "mean": None, "std": None, "low": None,
                           "high": None, "interval": None}
    if not per_seed:
        return out
    out["mean"], out["std"] = mean_std(list(per_seed.values()))
    iv = t_interval(list(per_seed.values()))
    if iv is not None:
        out.update(low=iv.low, high=iv.high, interval="t")
    else:
        (seed,) = per_seed
        _, evaluation = study.observation(arm.runs[seed], key, milestone)
        own = evaluation.interval(key.split(".", 1)[1]) if evaluation is not None else None
        if own is not None:
            out.update(low=own[0], high=own[1], interval="run")
    return out


def missing_seed_warnings(study: Study) -> list[str]:
    seeds = set(study.seeds)
    out = []
    for arm in study.arms:
        missing = sorted(seeds - set(arm.runs))
        if missing:
            out.append(f"Arm {arm.name} has no run for seed{'s' if len(missing) > 1 else ''} "
                       f"{', '.join(map(str, missing))} (the other arms have {len(seeds)} seeds): its mean and "
                       "interval rest on fewer seeds, and it is paired with the baseline on the seeds they share only.")
        for seed, run in arm.runs.items():
            if run.status != "completed":
                out.append(f"Arm {arm.name}, seed {seed}: pretraining is {run.status}.")
            bad = [e for e in run.evaluations if e.status != "completed"]
            for e in bad:
                out.append(f"Arm {arm.name}, seed {seed}: evaluation {e.name} at milestone {e.milestone} is {e.status}.")
    return out


def _per_image_tests(study: Study, arm: Arm, base: Arm, key: str,
                     seeds: Sequence[int]) -> dict[int, tuple[McNemar, PerImageTest]]:
    """Seed -> McNemar and the paired accuracy difference, where both evaluations of that seed saved
    per-image results on the same images (each conditional on that seed's trained encoders)."""
    if key == PRETRAIN_LOSS:
        return {}
    out = {}
    metric = key.split(".", 1)[1]
    for seed in seeds:
        _, ea = study.observation(arm.runs[seed], key)
        _, eb = study.observation(base.runs[seed], key)
        pa, pb = (ea.per_image(metric) if ea else None), (eb.per_image(metric) if eb else None)
        if pa and pb and set(pa) == set(pb):
            a, b = [pa[i] for i in sorted(pa)], [pb[i] for i in sorted(pa)]
            m, iv = mcnemar_test(a, b), accuracy_difference_interval(a, b)
            out[seed] = (m, PerImageTest(iv.value, iv.low, iv.high, m.p, "exact McNemar"))
    return out


def study_verdicts(study: Study, keys: Sequence[str]) -> dict[str, list[Verdict]]:
    """Every arm against the baseline on every key (blockmae.report.decisions), decided as one family: Holm
    across the study's verdicts."""
    if study.baseline is None or len(study.arms) < 2:
        return {}
    base = study.arm(study.baseline)
    found: dict[str, list[Verdict]] = {}
    for key in keys:
        values = study.values(key)
        for arm in study.arms:
            if arm.name == base.name:
                continue
            shared = sorted(set(values[arm.name]) & set(values[base.name]))
            tests = {s: t for s, (_, t) in _per_image_tests(study, arm, base, key, shared).items()}
            v = pair_verdict(arm.name, base.name, key, values[arm.name], values[base.name], tests)
            if v is not None:
                found.setdefault(key, []).append(v)
    decide([v for vs in found.values() for v in vs], {})
    return found


def _word(v: Verdict) -> str:
    return {HIGHER: "higher than the baseline", LOWER: "lower than the baseline"}.get(v.verdict, v.verdict)


def _verdict_text(v: Verdict) -> str:
    """The table's verdict: a seed-level word, or one seed's per-image word labelled as conditional on it."""
    if not v.seed_level:
        scope = conditional_on_seed(v.seeds[0])
        if v.p_holm is None:
            return f"one shared seed: no seed-level interval, no per-image test ({scope})"
        return f"{_word(v)} on seed {v.seeds[0]}'s test images ({scope})"
    if v.verdict in (HIGHER, LOWER):
        return f"{_word(v)} (interval over seeds excludes 0, Holm p {_p(v.p_holm)})"
    if v.verdict == INSIDE:
        return f"{_word(v)} (interval over seeds includes 0)"
    return f"{_word(v)} (interval over seeds excludes 0, Holm p {_p(v.p_holm)} >= {ALPHA:g})"


def _verdict_sentence(v: Verdict, min_flip_p: float | None) -> str:
    """One plain sentence per arm, saying no more than the decision policy allows."""
    n = len(v.seeds)
    mean = sum(v.differences) / n  # of the metric (one seed: v.mean is the per-image test's)
    sentence = f"{v.first} vs {v.second}: mean delta {mean:+.4g} over {n} paired seed{'s' * (n > 1)}"
    if not v.seed_level:
        sentence += "; one pair gives no interval over seeds, so this says nothing beyond the single seed"
        if v.p_holm is not None:
            sentence += (f". Per image ({conditional_on_seed(v.seeds[0])}): {v.mean:+.4g} {_ci(v.low, v.high)}, "
                         f"Holm-adjusted p {_p(v.p_holm)}: {_word(v)}")
        return sentence + "."
    interval = f"95% interval over seeds {_ci(v.low, v.high)}"
    if v.verdict in (HIGHER, LOWER):
        sentence += f", {interval} excludes 0 and the Holm-adjusted p is {_p(v.p_holm)}: {_word(v)}."
    elif v.verdict == INSIDE:
        sentence += f", {interval} includes 0: the difference is inside the noise."
    else:
        sentence += (f", {interval} excludes 0 but the Holm-adjusted p ({_p(v.p_holm)}) is not below {ALPHA:g}: "
                     f"{v.verdict}.")
    if min_flip_p is not None and min_flip_p > 0.05:
        sentence += (f" The t-interval assumes normal deltas; the sign-flip test, which does not, cannot go below "
                     f"p = {min_flip_p:g} with {n} seeds, so more seeds are needed to make a call firm.")
    return sentence


def differences_table(study: Study, key: str, table_id: str,
                      verdicts: Sequence[Verdict] | None = None) -> tuple[Table | None, list[str]]:
    """Paired differences of `key` against the baseline arm, and one plain sentence per arm. `verdicts`: this
    key's verdicts decided with the study's whole family (:func:`study_verdicts`); without them the key's
    verdicts form a family of their own."""
    if study.baseline is None or len(study.arms) < 2:
        return None, []
    base = study.arm(study.baseline)
    decided = {v.first: v for v in (study_verdicts(study, [key]).get(key, []) if verdicts is None else verdicts)}
    values = study.values(key)
    table = Table(table_id, f"{key}: paired differences against the baseline {base.name} (same seed)", [
        ("arm", "arm"), ("n", "pairs"), ("deltas", "per-seed delta"), ("mean", "mean delta"),
        ("low", "95% CI low"), ("high", "95% CI high"), ("t_p", "paired t p"), ("holm", "Holm p"),
        ("flip_p", "sign-flip p"), ("mcnemar", "McNemar per image"), ("verdict", "verdict"),
    ], note="delta = arm - baseline on the same seed; 95% CI: Student t over seeds; Holm p: adjusted across every "
            "verdict of this study (with one seed, that seed's per-image test); sign-flip p is exact; McNemar (only "
            "where per-image results were saved): images right only for the arm / only for the baseline, each "
            "conditional on its seed and saying nothing about training seeds.")
    sentences = []
    for arm in study.arms:
        if arm.name == base.name:
            continue
        v = decided.get(arm.name)
        if v is None:
            table.add(arm=arm.name, n=0, verdict="no seed shared with the baseline")
            sentences.append(f"{arm.name}: no seed shared with the baseline, no paired comparison.")
            continue
        mcnemar = [(s, m) for s, (m, _) in _per_image_tests(study, arm, base, key, v.seeds).items()]
        flips = paired_comparison([values[arm.name][s] for s in v.seeds], [values[base.name][s] for s in v.seeds])
        seed_p = v.p if v.seed_level else None  # one seed: its p is the per-image test's, shown under McNemar
        deltas = ", ".join(f"s{s}: {d:+.4g}" for s, d in zip(v.seeds, v.differences))
        # the metric's mean delta (with one seed v.mean is its per-image test's difference)
        table.add(arm=arm.name, n=len(v.seeds), deltas=deltas, mean=Cell(f"{flips.mean:+.4g}", flips.mean),
                  low=v.low if v.seed_level else None, high=v.high if v.seed_level else None, t_p=Cell(_p(seed_p), seed_p),
                  holm=Cell(_p(v.p_holm), v.p_holm), flip_p=Cell(_p(flips.sign_flip_p), flips.sign_flip_p),
                  mcnemar="; ".join(f"s{s}: {m.only_arm}/{m.only_baseline} of {m.n}, p={_p(m.p)}"
                                    for s, m in mcnemar) or "-",
                  verdict=_verdict_text(v))
        sentences.append(_verdict_sentence(v, flips.min_sign_flip_p))
    return table, sentences


def _colours(study: Study) -> dict[str, str]:
    return {a.name: arm_colour(i) for i, a in enumerate(study.arms)}


def _values_text(arm: Arm, study: Study) -> dict[str, Any]:
    return {f"v{i}": arm.values.get(k) for i, k in enumerate(study.ablated)}


def overview_table(study: Study, keys: Sequence[str], prefix: str) -> Table:
    columns = [("arm", "arm")] + [(f"v{i}", k) for i, k in enumerate(study.ablated)] + [("seeds", "seeds")]
    columns += [(f"m{i}", f"{k} (mean ± std)") for i, k in enumerate(keys)]
    table = Table(f"{prefix}overview", f"{study.title or study.name}: every metric by arm, mean ± std over seeds "
                  "(n in brackets)", columns)
    for arm in study.arms:
        row: dict[str, Any] = {"arm": arm.name + (" (baseline)" if arm.name == study.baseline else ""),
                               "seeds": ", ".join(map(str, arm.runs)), **_values_text(arm, study)}
        for i, k in enumerate(keys):
            s = arm_summary(study, arm, k)
            text = "-" if s["mean"] is None else (fmt(s["mean"]) + (f" ± {fmt(s['std'])}" if s["std"] is not None else "")
                                                 + f" (n={s['n']})")
            row[f"m{i}"] = Cell(text, s["mean"])
        table.add(**row)
    return table


def metric_table(study: Study, key: str, table_id: str) -> tuple[Table, list[dict[str, Any]]]:
    columns = [("arm", "arm")] + [(f"v{i}", k) for i, k in enumerate(study.ablated)] + [
        ("n", "n"), ("mean", "mean"), ("std", "std"), ("low", "95% CI low"), ("high", "95% CI high"),
        ("per_seed", "per seed")]
    milestone = None if key == PRETRAIN_LOSS else study.final_milestone(key.split(".", 1)[0])
    at = f" at epoch {milestone}" if milestone is not None else ""
    table = Table(table_id, f"{key}{at} by arm: mean ± std over seeds, 95% t-interval", columns,
                  note="95% CI: Student t over seeds; with one seed, the evaluation's own interval where it has one "
                       "(marked 'run').")
    points = []
    for i, arm in enumerate(study.arms):
        s = arm_summary(study, arm, key)
        mark = " (run)" if s["interval"] == "run" else ""
        bounds = {k: Cell("-", None) if s[k] is None else Cell(fmt(s[k]) + mark, s[k]) for k in ("low", "high")}
        table.add(arm=arm.name, **_values_text(arm, study), n=s["n"], mean=s["mean"], std=s["std"], **bounds,
                  per_seed=", ".join(f"s{seed}: {fmt(v)}" for seed, v in s["seeds"].items()) or "-")
        if s["mean"] is not None:
            points.append({"arm": arm.name, "values": arm.values, "index": i, "mean": s["mean"], "low": s["low"],
                           "high": s["high"], "seeds": list(s["seeds"].values())})
    return table, points


def _x_key(study: Study) -> tuple[str | None, list[str]]:
    """The ablated key for the x axis (the one with most distinct values) and the others (series)."""
    if not study.ablated:
        return None, []
    distinct = {k: len({json.dumps(a.values.get(k), default=str) for a in study.arms}) for k in study.ablated}
    x = max(study.ablated, key=lambda k: distinct[k])
    return x, [k for k in study.ablated if k != x]


def epoch_series(study: Study, key: str) -> dict[str, list[tuple[float, float, float | None, float | None]]]:
    evaluation = key.split(".", 1)[0]
    milestones = [m for m in study.milestones(evaluation) if m is not None]
    out: dict[str, list[tuple[float, float, float | None, float | None]]] = {}
    if len(milestones) < 2:
        return out
    for arm in study.arms:
        for m in milestones:
            s = arm_summary(study, arm, key, m)
            if s["mean"] is not None:
                out.setdefault(arm.name, []).append((float(m), s["mean"], s["low"], s["high"]))
    return out


def _run_dir_links(study: Study) -> list[tuple[str, Path]]:
    items = []
    for arm in study.arms:
        for seed, run in arm.runs.items():
            if run.run_dir is not None:
                items.append((f"{arm.name} / seed {seed} ({run.status})", run.run_dir))
            for e in run.evaluations:
                if e.run_dir is not None:
                    items.append((f"{arm.name} / seed {seed} / {e.name} @ {e.milestone}", e.run_dir))
    return items


def diagnostic_curves(study: Study) -> dict[tuple[str, str], dict[str, list[Curve]]]:
    """(evaluation, curve name) -> arm -> one curve per seed, at each evaluation's final milestone."""
    out: dict[tuple[str, str], dict[str, list[Curve]]] = {}
    for arm in study.arms:
        for run in arm.runs.values():
            for e in run.evaluations:
                if e.status != "completed" or e.milestone != study.final_milestone(e.name):
                    continue
                for name, curve in e.curves.items():
                    out.setdefault((e.name, name), {}).setdefault(arm.name, []).append(curve)
    return out


def provenance(study: Study, section: Section, prefix: str) -> None:
    runs = [(a, s, r) for a in study.arms for s, r in a.runs.items()]
    envs = {(a.name, s): r.env() for a, s, r in runs}
    commits = sorted({str(e.get("git_commit")) for e in envs.values() if e})
    if len(commits) > 1:
        section.add(Paragraph(f"The runs come from {len(commits)} different code versions: {', '.join(commits)}.",
                              "warning"))
    packages = sorted({p for e in envs.values() for p in (e.get("packages") or {})})
    table = Table(f"{prefix}provenance", "Runs: hash, status, code version, device and package versions (env.json)",
                  [("arm", "arm"), ("seed", "seed"), ("hash", "hash"), ("status", "status"), ("git", "git commit"),
                   ("device", "device"), ("python", "python")] + [(f"p{i}", p) for i, p in enumerate(packages)])
    for a, s, r in runs:
        env = envs[(a.name, s)]
        dev = env.get("device") or {}
        table.add(arm=a.name, seed=s, hash=r.hash or "-", status=r.status, git=str(env.get("git_commit") or "-"),
                  device=str(dev.get("name") or dev.get("type") or "-"), python=str(env.get("python") or "-"),
                  **{f"p{i}": str((env.get("packages") or {}).get(p) or "-") for i, p in enumerate(packages)})
    section.add(table)
    for a in study.arms:
        for s, r in a.runs.items():
            text = r.config_text()
            if text:
                section.add(Details(f"config.yaml of {a.name}, seed {s}", text))
                break
    if study.spec and Path(study.spec).is_file():
        section.add(Details(f"sweep spec {study.spec}", Path(study.spec).read_text()))


def study_document(studies: Sequence[Study], title: str | None = None) -> Document:
    """The whole report of one or more studies (one section each)."""
    doc = Document(title or ("Ablation report: " + ", ".join(s.title or s.name for s in studies)))
    many = len(studies) > 1
    for study in studies:
        prefix = f"{slug(study.name)}-" if many else ""
        top = doc.section(study.title or study.name)
        describe(study, top)
        keys = study.metric_keys()
        if not keys:
            top.add(Paragraph("No completed evaluation or pretraining loss to report yet.", "warning"))
        else:
            top.add(overview_table(study, keys, prefix))
        colours = _colours(study)
        x_key, series = _x_key(study)
        verdicts = study_verdicts(study, keys)
        for key in keys:
            sec = top.sub(key)
            table, points = metric_table(study, key, f"{prefix}{slug(key)}-by-arm")
            sec.add(table)
            diff, sentences = differences_table(study, key, f"{prefix}{slug(key)}-paired", verdicts.get(key, []))
            if diff is not None:
                sec.add(diff, *[Paragraph(s) for s in sentences])
            if points:
                sec.add(Figure(f"{prefix}{slug(key)}-by-variable", f"{key} against {x_key or 'arm'}",
                               metric_vs_variable(key, points, x_key, series)))
            by_epoch = epoch_series(study, key)
            if by_epoch:
                sec.add(Figure(f"{prefix}{slug(key)}-by-epoch", f"{key} against the milestone epoch",
                               metric_vs_epochs(key, by_epoch, colours)))
        losses = {a.name: [Curve(*r.loss_curve()) for r in a.runs.values() if r.loss_curve()[0]] for a in study.arms}
        losses = {k: v for k, v in losses.items() if v}
        if losses:
            top.sub("Pretraining loss").add(Figure(
                f"{prefix}pretraining-loss", "Pretraining loss per arm (metrics.jsonl; one line per seed)",
                curves_figure("Pretraining loss per arm", losses, colours, "epoch", "loss", log_y=True)))
        curves = diagnostic_curves(study)
        if curves:
            sec = top.sub("Diagnostic curves")
            for (evaluation, name), per_arm in curves.items():
                first = next(iter(per_arm.values()))[0]
                label = name if name == evaluation else f"{evaluation}: {name}"
                sec.add(Figure(f"{prefix}{slug(evaluation)}-{slug(name)}", f"{label} per arm",
                               curves_figure(f"{label} (one line per seed, band: 95% interval)",
                                             per_arm, colours, first.x_label, first.y_label)))
        recon = top.sub("Reconstructions across epochs")
        for arm in study.arms:
            for seed, run in arm.runs.items():
                figs = run.figures()[-MAX_RECONSTRUCTIONS_PER_ARM:]
                recon.add(*[Image(p, f"{arm.name}, seed {seed}: {p.stem}") for p in figs])
                if figs:
                    break
        if not recon.blocks:
            recon.add(Paragraph("No reconstruction figures in the run directories.", "note"))
        top.sub("Run directories").add(Links(_run_dir_links(study)))
        provenance(study, top.sub("Provenance"), prefix)
    return doc


def describe(study: Study, section: Section) -> None:
    source = (f"sweep {study.root / 'sweep.json'}" if study.source == "sweep.json"
              else f"the registry of {study.root} (no sweep.json: arms are the pretraining runs' names)")
    lines = [f"Read from {source}."]
    if study.spec:
        lines.append(f"Spec: {study.spec}.")
    if study.base_config:
        lines.append(f"Base config: {study.base_config}.")
    lines.append(f"Ablated: {', '.join(study.ablated) or 'nothing recorded'}; {len(study.arms)} arms; seeds "
                 f"{', '.join(map(str, study.seeds)) or '-'}.")
    lines.append(f"Baseline arm: {study.baseline}." if study.baseline else
                 "No baseline arm named (pass --baseline ARM for paired differences).")
    if study.milestone_mode:
        lines.append({"snapshots": "Milestones are snapshots of one long run per arm and seed (a snapshot of a "
                                   "long cosine schedule is not a run of that length).",
                      "separate": "Milestones are separate runs of each length."}.get(
            study.milestone_mode, f"Milestone mode: {study.milestone_mode}."))
    if study.description:
        section.add(Paragraph(" ".join(str(study.description).split())))
    section.add(Paragraph(" ".join(lines)))
    for w in missing_seed_warnings(study) + study.notes:
        section.add(Paragraph(w, "warning"))
