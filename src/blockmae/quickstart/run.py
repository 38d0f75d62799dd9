"""The quickstart's stages in order: the answer, your run (--train), the summary and the report.

1. The answer: every shipped reference encoder (one per arm and pretraining seed; blockmae.references)
   and one random-init encoder of the same architecture per seed index, through the probes and the
   shape-bias test; the diagnostics named in the settings on the seed indices it names (default 0).
   Verdicts over seeds for every pair of arms (blockmae.report.decisions), with each seed's per-image
   tests as secondary detail.
2. Your run, with --train (always with --from-scratch, on the GPU config, or without references): the
   same arms pretrained here, for what the budget allows (or in full, with the references' recipe),
   evaluated like the references and compared with them; their loss curves drawn on the references'.
3. DIR/summary.json (every verdict, every arm's stage, every encoder's metrics) and the report.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

from blockmae.errors import BlockMAEError
from blockmae.evaluation.monitor import pretrain_monitored
from blockmae.fileio import write_json_atomic
from blockmae.quickstart.budget import resolve_sizes
from blockmae.quickstart.comparisons import compare, per_image
from blockmae.quickstart.config import (
    BASELINE, QuickstartConfig, arm_key, arm_name, arm_pretrain_config, mask_phrase, reference_recipe,
)
from blockmae.quickstart.evaluate import EncoderSpec, baseline_spec, evaluate_encoder, random_init_arch
from blockmae.quickstart.figures import own_loss_curves, reconstructions, reference_loss_figure, seed_figure
from blockmae.quickstart.folder import Progress, Stages, prepare_output
from blockmae.references import list_references, monitor_curve
from blockmae.references.verify import loss_curve, weights_arch
from blockmae.registry import Registry
from blockmae.report.decisions import METRICS, RULES, PerImageTest, SeedResult, arm_stage, decide, pair_verdict
from blockmae.report.document import Figure
from blockmae.report.encoders import accuracy_figure, arm_from_registry, loss_figure, shape_bias_figure
from blockmae.report.quickstart import Provenance, QuickstartResults, quickstart_document
from blockmae.report.write import write_markdown_report

SUMMARY_NAME = "summary.json"
SUMMARY_SCHEMA = 2  # 2: verdicts over seeds, arms' stages, per-seed per-image comparisons
ARCH_KEYS_COMPARED = ("img_size", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio", "pos_embed")


# -- the references ------------------------------------------------------------------------------------

def answer_references(cfg: QuickstartConfig) -> tuple[list[Any], str | None]:
    """The shipped references of the quickstart's arms, and why there are none when there are none.

    They answer this quickstart's question only when they have its encoder architecture and mask ratio;
    otherwise the answer section says so and the run is the user's alone."""
    if not cfg.references:
        return [], "references: false in the settings"

    refs = [r for r in list_references() if r.block in cfg.blocks]
    if not refs:
        return [], "no reference encoders are shipped with this installation (blockmae weights list)"
    wanted = {k: random_init_arch(cfg)[k] for k in ARCH_KEYS_COMPARED}
    for ref in refs:
        have = {k: weights_arch(ref).get(k) for k in ARCH_KEYS_COMPARED}
        if have != wanted:
            diff = ", ".join(f"{k} {have[k]} vs {wanted[k]}" for k in ARCH_KEYS_COMPARED if have[k] != wanted[k])
            return [], f"the settings change the architecture the references have ({diff})"
        ratio = ref.manifest["config"]["mask"]["ratio"]
        if ratio != cfg.pretrain.mask.ratio:
            return [], f"the references were trained at mask ratio {ratio}, the settings ask for {cfg.pretrain.mask.ratio}"
    return sorted(refs, key=lambda r: (cfg.blocks.index(r.block), r.seed)), None


def reference_spec(ref: Any) -> EncoderSpec:
    return EncoderSpec(f"ref-{arm_key(ref.block)}-s{ref.seed}", f"{arm_name(ref.block)} reference (seed {ref.seed})",
                       "reference", str(ref.weights_path), ref.block, ref.seed)


def own_spec(out: Path, block: int) -> EncoderSpec:
    return EncoderSpec(arm_key(block), arm_name(block), "own", str(out / "pretrain" / arm_key(block)), block)


# -- your run: pretraining --------------------------------------------------------------------------------

def _pretrain_run_id(registry: Any, run_dir: Path) -> str:
    """The registry id of the completed pretraining run in `run_dir` (the engine records it)."""
    wanted = str(run_dir.resolve())
    runs = [r for r in registry.list_runs(kind="pretrain", status="completed") if r.run_dir == wanted]
    if not runs:
        raise BlockMAEError(f"the pretraining in {run_dir} is not recorded as completed in {registry.path}")
    return runs[-1].id


def pretrain_arms(cfg: QuickstartConfig, out: Path, stages: Stages, progress: Progress, registry: Any) -> None:
    """Pretrain every arm (a completed arm is skipped; an interrupted one resumes from its checkpoint)."""
    for block in cfg.blocks:
        stage = f"pretrain/{arm_key(block)}"
        if stages.done(stage):
            progress.skip()
            continue
        run_dir = out / "pretrain" / arm_key(block)

        def do_pretrain(block: int = block, stage: str = stage, run_dir: Path = run_dir) -> str:
            done_dir = pretrain_monitored(arm_pretrain_config(cfg.pretrain, block, out, run_dir))
            run_id = _pretrain_run_id(registry, done_dir)
            stages.record(stage, run_id)
            loss = registry.get(run_id).metrics.get("loss")
            return f"loss {loss:.3f} (run {run_id})" if loss is not None else f"run {run_id}"

        progress.run(f"pretrain {arm_name(block)}", do_pretrain)


def training_config(cfg: QuickstartConfig, refs: list[Any]) -> QuickstartConfig:
    """The settings the arms are trained with: the quickstart's, or with --from-scratch the references'
    own recipe (the same sizes, optimiser and data as their manifests record)."""
    if not cfg.from_scratch or not refs:
        return cfg

    return reference_recipe(cfg, refs[0].manifest["config"])


# -- summary ------------------------------------------------------------------------------------------

def _interval(value: float, low: float, high: float) -> dict[str, float]:
    return {"value": value, "low": low, "high": high}


def encoder_summary(spec: EncoderSpec, arm: Any, diagnostics: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": spec.name, "role": spec.role, "block": spec.block, "seed": spec.seed, "checkpoint": spec.checkpoint,
        "linear_top1": _interval(arm.linear.value, arm.linear.low, arm.linear.high),
        "linear_top5": arm.linear_top5,
        "knn_top1": _interval(arm.knn.value, arm.knn.low, arm.knn.high),
        "probe_images": arm.probe_images,
        "shape_bias": _interval(arm.shape_bias.value, arm.shape_bias.low, arm.shape_bias.high),
        "shape_only_accuracy": arm.shape_only_accuracy, "texture_only_accuracy": arm.texture_only_accuracy,
        "neither_fraction": arm.neither_fraction,
        "diagnostics": diagnostics,
        "runs": dict(arm.run_ids),
    }


# -- the answer's verdicts ----------------------------------------------------------------------------

def arm_pairs(arms: list[str]) -> list[tuple[str, str]]:
    """(first, second) of every comparison: each mask against each smaller one (larger blocks first, so a
    positive difference means more for the larger block), then each mask against random init."""
    masks = [a for a in arms if a != BASELINE]
    pairs = [(masks[j], masks[i]) for i in range(len(masks)) for j in range(i + 1, len(masks))]
    return pairs + ([(m, BASELINE) for m in masks] if BASELINE in arms else [])


def answer_verdicts(specs: list[EncoderSpec], arms: dict[str, Any], outcomes: dict[str, Any], refs: list[Any],
                    seed: int) -> tuple[list[Any], dict[str, Any], list[Any]]:
    """(verdicts, arm stages, per-seed per-image comparisons) of the answer's encoders.

    `arms`/`outcomes`: spec key -> ArmResult / PerImage. Per arm and seed index the four metrics; per pair
    of arms and seed the per-image tests; the verdicts over seeds (blockmae.report.decisions)."""
    by_arm: dict[str, dict[int, EncoderSpec]] = {}
    for spec in specs:
        by_arm.setdefault(spec.arm, {})[int(spec.seed or 0)] = spec
    results: dict[str, dict[int, SeedResult]] = {}
    chance = 0.0
    for arm, per_seed in by_arm.items():
        results[arm] = {}
        for s, spec in per_seed.items():
            a, o = arms[spec.key], outcomes[spec.key]
            n = len(o.shape_only_correct) if o.shape_only_correct is not None else 0
            results[arm][s] = SeedResult(a.linear_top1, a.knn_top1, a.shape_only_accuracy, n, a.shape_bias.value)
            if o.shape_only_labels is not None:
                chance = max(chance, 1.0 / len(np.unique(o.shape_only_labels)))
    ref_of = {(arm_name(r.block), r.seed): r for r in refs}
    stages = {arm: arm_stage(arm, results[arm], chance,
                             {s: getattr(ref_of.get((arm, s)), "images_seen", None) for s in results[arm]},
                             {s: getattr(ref_of.get((arm, s)), "final_loss", None) for s in results[arm]})
              for arm in results}
    per_image, verdicts = [], []
    for first, second in arm_pairs(list(by_arm)):
        tests: dict[str, dict[int, PerImageTest]] = {}
        for s in sorted(set(by_arm[first]) & set(by_arm[second])):
            for c in compare(outcomes[by_arm[first][s].key], outcomes[by_arm[second][s].key], seed, s):
                per_image.append(c)
                tests.setdefault(c.metric, {})[s] = PerImageTest(c.difference, c.low, c.high, c.p, c.test)
        for metric in METRICS:
            v = pair_verdict(first, second, metric, {s: r.metric(metric) for s, r in results[first].items()},
                             {s: r.metric(metric) for s, r in results[second].items()}, tests.get(metric))
            if v is not None:
                verdicts.append(v)
    return decide(verdicts, stages), stages, per_image


# -- the whole quickstart -----------------------------------------------------------------------------

def run_quickstart(cfg: QuickstartConfig, out: Path) -> Path:
    """Run (or resume) every stage into `out`; returns the path of report.md (report.html, the same report as
    one offline page, report_tables/ and summary.json are written beside it)."""
    resuming = prepare_output(out, cfg)
    registry = Registry(out)
    stages = Stages(out, registry)
    if resuming:
        print(f"resuming the quickstart in {out} (completed stages are skipped)", file=sys.stderr, flush=True)
    refs, no_refs_reason = answer_references(cfg)
    if no_refs_reason:
        print(f"no reference encoders in this quickstart: {no_refs_reason}; your run (the arms trained here) "
              "is the whole result", file=sys.stderr, flush=True)
    trains = bool(cfg.train or cfg.from_scratch or not refs)
    train_cfg = training_config(cfg, refs)
    seed_indices = sorted({r.seed for r in refs})
    base_specs = [baseline_spec(s) for s in seed_indices]
    answer_specs = [reference_spec(r) for r in refs] + base_specs
    own_specs = ([own_spec(out, b) for b in cfg.blocks] + ([] if refs else [baseline_spec()])) if trains else []
    # Diagnostics run on the encoders that answer the question, at the seed indices the settings name: the
    # references and random init when there are references, else the arms trained here; under
    # --from-scratch on both.
    diag = dict(cfg.diagnostics or {})
    diag_seeds = cfg.diagnostics_seeds

    def diagnostics_of(spec: EncoderSpec) -> dict[str, Any]:
        return diag if diag_seeds is None or spec.seed in diag_seeds else {}

    own_diag = diag if (not refs or cfg.from_scratch) else {}
    per_encoder = 3
    progress = Progress(sum(per_encoder + len(diagnostics_of(s)) for s in answer_specs)
                        + (trains and cfg.budget_seconds is not None) + trains * len(cfg.blocks)
                        + len(own_specs) * (per_encoder + len(own_diag)) + 2, stages)
    arch_from = str(refs[0].weights_path) if refs else None

    # 1. The answer.
    for spec in answer_specs:
        evaluate_encoder(cfg, out, spec, stages, progress, diagnostics_of(spec), arch_from)

    # 2. Your run (--train): fit the pretraining to the budget, pretrain, evaluate.
    if trains:
        seconds = stages.data.get("seconds", {})
        timed = [seconds[f"evaluate {s.name}"] for s in answer_specs if f"evaluate {s.name}" in seconds]
        evaluation_seconds = sum(timed) / len(timed) * len(own_specs) if timed else None
        train_cfg = resolve_sizes(train_cfg, out, stages, progress, float(cfg.budget_seconds or 0),
                                  evaluation_seconds)
        pretrain_arms(train_cfg, out, stages, progress, registry)
        own_arch_from = arch_from or str(Path(own_specs[0].checkpoint))
        for spec in own_specs:
            evaluate_encoder(train_cfg, out, spec, stages, progress, own_diag, own_arch_from)

    # 3. Verdicts, comparisons, figures, summary and report.
    def arm_of(spec: EncoderSpec) -> Any:
        ids = {s: stages.done(f"{s}/{spec.key}") for s in ("linear", "knn", "shape_bias")}
        if spec.role == "own":
            ids["pretrain"] = stages.done(f"pretrain/{spec.key}")
        return arm_from_registry(registry, spec.name, spec.pretrained, {k: v for k, v in ids.items() if v})

    def images_of(spec: EncoderSpec) -> Any:
        return per_image(spec.name, stages.run_dir(f"linear/{spec.key}"), stages.run_dir(f"knn/{spec.key}"),
                         stages.run_dir(f"shape_bias/{spec.key}"))

    seed = cfg.pretrain.run.seed
    all_specs = [*answer_specs, *own_specs]
    outcomes = {spec.key: images_of(spec) for spec in all_specs}
    arms = {spec.key: arm_of(spec) for spec in all_specs}
    verdicts, arm_stages, per_seed_tests = answer_verdicts(answer_specs, arms, outcomes, refs, seed)
    ref_specs = [s for s in answer_specs if s.role == "reference"]
    own_base = next((b for b in base_specs if b.seed == seed), base_specs[0] if base_specs else None)
    own_comparisons = []
    for spec in own_specs:
        if spec.role != "own":
            continue
        match = min((r for r in ref_specs if r.block == spec.block), default=None,
                    key=lambda r: (r.seed != seed, r.seed))
        if match is not None:
            own_comparisons += compare(outcomes[spec.key], outcomes[match.key], seed)
        base = own_base or next(s for s in own_specs if s.role == "baseline")
        own_comparisons += compare(outcomes[spec.key], outcomes[base.key], seed)

    diagnostics: dict[str, dict[str, Any]] = {}
    for spec in all_specs:
        for name in (diagnostics_of(spec) if spec in answer_specs else own_diag):
            done = stages.done(f"{name}/{spec.key}")
            if done:
                diagnostics.setdefault(spec.name, {})[name] = dict(registry.get(done).metrics)

    answer_arms = [arms[s.key] for s in answer_specs]
    own_arms = [arms[s.key] for s in own_specs]
    # Reconstructions of one seed per arm (the lowest) are enough to see what each mask learned to fill in.
    first_refs = [s for s in ref_specs if s.seed == min(r.seed for r in ref_specs if r.block == s.block)]
    pretrained_models = [*first_refs, *[s for s in own_specs if s.role == "own"]]
    figures: list[Any] = []

    def draw() -> str:
        figures.extend(reconstructions(cfg, out, pretrained_models))
        return f"{len(figures)} figures"

    progress.run("reconstructions", draw)
    recon = {s.key: f for s, f in zip(pretrained_models, figures)}
    reference_curves = {arm_name(r.block): loss_curve(r) for r in refs
                        if r.seed == min(x.seed for x in refs if x.block == r.block)}
    answer_figures: list[Any] = []
    if refs:
        by_arm: dict[str, dict[int, Any]] = {}
        for spec in answer_specs:
            by_arm.setdefault(spec.arm, {})[int(spec.seed or 0)] = arms[spec.key]
        curves: dict[str, dict[int, Any]] = {}
        shape_curves: dict[str, dict[int, Any]] = {}
        for r in refs:
            curves.setdefault(arm_name(r.block), {})[r.seed] = loss_curve(r)
            shape_curves.setdefault(arm_name(r.block), {})[r.seed] = monitor_curve(r)
        answer_figures = [
            Figure("seed_metrics", "Every metric per arm: one dot per seed, the bar is the mean over seeds with "
                   "its 95% t-interval (one seed: no interval)", seed_figure(by_arm, arm_stages)),
            Figure("reference_loss", "Every reference encoder's pretraining (its metrics.jsonl): the loss, and "
                   "the online monitor's shape-only accuracy against images seen (dashed: chance; dotted: 2x chance)",
                   reference_loss_figure(curves, shape_curves)),
            *[recon[s.key] for s in first_refs]]
    own_figures: list[Any] = []
    if trains:
        own_figures = [Figure("pretraining_loss", "Pretraining loss of your arms" +
                              (" (solid) on the reference runs' curves (dashed)" if refs else ""),
                              loss_figure(own_loss_curves(train_cfg, out), reference_curves)),
                       Figure("own_accuracy", "Probe accuracy of your arms", accuracy_figure(own_arms, chance=0.1))]
        if not refs:
            own_figures.insert(0, Figure("shape_bias", "Shape bias per encoder (95% bootstrap intervals)",
                                         shape_bias_figure(own_arms)))
        own_figures += [recon[s.key] for s in own_specs if s.role == "own"]

    provenance = [Provenance(
        name=reference_spec(r).name, id=r.id, command=r.manifest.get("command", "?"),
        trained_on=r.manifest.get("trained_on", "?"), device=_device_phrase(r.manifest),
        git_commit=r.manifest.get("git_commit") or "?", trained_at=str(r.manifest.get("trained_at", "?")),
        images_seen=int(r.images_seen or 0), wall_time_s=float(r.manifest.get("wall_time_s") or 0),
        final_loss=float(r.final_loss or float("nan")),
        recorded_linear_top1=(r.manifest.get("evaluation") or {}).get("linear_top1")) for r in refs]
    pc = train_cfg.pretrain
    images = pc.train.epochs * int(pc.data.num_images or 0)
    sizes = stages.data.get("sizes")
    own_sizes = (f"Each arm was pretrained here for {pc.train.epochs} epochs x {pc.data.num_images} ShapeTex images "
                 f"= {images:,} images seen (batch {pc.train.batch_size}, lr {pc.optim.resolved_lr(pc.train.batch_size):g}, "
                 f"precision {pc.train.precision}, seed {pc.run.seed})"
                 + (f", fitted to the budget at a measured {sizes['img_per_s']:.0f} img/s" if sizes else "")
                 + (f"; the references saw {refs[0].images_seen:,}" if refs else "") + ".")
    results = QuickstartResults(
        answer=answer_arms, answer_comparisons=per_seed_tests, provenance=provenance, diagnostics=diagnostics,
        own=own_arms, own_comparisons=own_comparisons, own_sizes=own_sizes, from_scratch=bool(cfg.from_scratch and refs),
        answer_figures=answer_figures, own_figures=own_figures, settings=settings_lines(cfg, train_cfg, stages),
        run_dirs=[(f"{a.name}: {stage} ({run_id})", Path(registry.get(run_id).run_dir))
                  for a in [*answer_arms, *own_arms] for stage, run_id in a.run_ids.items()
                  if registry.get(run_id).run_dir],
        verdicts=verdicts, stages=arm_stages, seed_indices=seed_indices, trained=trains,
    )
    summary = {
        "schema": SUMMARY_SCHEMA,
        "question": "does block masking shift a ViT from texture to shape (ShapeTex)?",
        "seed_indices": seed_indices,
        "verdict_rules": RULES,
        "verdicts": [v.to_dict() for v in verdicts],
        "holm_family_size": sum(v.p_holm is not None for v in verdicts),
        "arms": {name: stage.to_dict() for name, stage in arm_stages.items()},
        "references": [{"id": r.id, "block": r.block, "seed": r.seed, "command": r.manifest.get("command"),
                        "trained_on": r.manifest.get("trained_on"), "images_seen": r.images_seen,
                        "final_loss": r.final_loss, "git_commit": r.manifest.get("git_commit"),
                        "sha256": r.manifest["weights"]["sha256"]}
                       for r in refs],
        "no_references_reason": no_refs_reason,
        "encoders": {s.key: encoder_summary(s, arms[s.key], diagnostics.get(s.name, {})) for s in all_specs},
        "comparisons": {"answer_per_seed": [c.to_dict() for c in per_seed_tests],
                        "own": [c.to_dict() for c in own_comparisons]},
        "own_training": ({"epochs": pc.train.epochs, "num_images": pc.data.num_images, "images_seen": images,
                          "from_scratch": bool(cfg.from_scratch), "budget": sizes} if trains else None),
        "seconds": stages.data.get("seconds", {}),
    }
    report_path = out / "report.md"

    def write() -> str:
        write_json_atomic(out / SUMMARY_NAME, summary, default=str)
        written = write_markdown_report(report_path, quickstart_document(TITLE, INTRO, results, BASELINE))
        return f"{report_path}, {written.html} and {out / SUMMARY_NAME}"

    progress.run("report", write)
    return report_path


def _device_phrase(manifest: dict[str, Any]) -> str:
    device = manifest.get("device") or {}
    if isinstance(device, str):
        return device
    kind = device.get("type", manifest.get("trained_on", "?"))
    model = device.get("cpu_model") or device.get("name") or ""
    threads = device.get("torch_threads")
    parts = [kind] + ([model] if model else []) + ([f"{threads} thread{'s' if threads != 1 else ''}"] if threads else [])
    precision = device.get("precision")
    return ", ".join(parts) + (f", {precision}" if precision else "")


def settings_lines(cfg: QuickstartConfig, train_cfg: QuickstartConfig, stages: Stages) -> list[str]:
    pc = train_cfg.pretrain
    seconds = stages.data.get("seconds", {})
    lines = [
        f"Data: ShapeTex at {pc.data.image_size} px (texture correlation "
        f"{pc.data.options.get('texture_correlation', 0.8)}); probes on {cfg.probe.data.num_images or 'the default number of'} "
        f"images per split; shape bias on {cfg.shape_bias_images} images per test split.",
        f"Model: {pc.model.preset}, patch {pc.model.patch_size} ({pc.img_size // int(pc.model.patch_size or 4)}^2 "
        f"patches), mask ratio {pc.mask.ratio}, block placement {pc.mask.align}; arms: "
        + ", ".join(mask_phrase(b) for b in cfg.blocks) + ".",
        f"Probes: linear ({cfg.probe.linear.optimizer}, {cfg.probe.linear.epochs} epochs, pool {cfg.probe.encoder.pool}) "
        f"and k-NN (k={cfg.probe.knn.k}, T={cfg.probe.knn.temperature}) on frozen features, probe seed "
        f"{cfg.pretrain.run.seed} for every encoder; random init at seed index s draws its weights with seed s.",
        "Diagnostics on the answer's encoders" + (f" at seed indices {cfg.diagnostics_seeds}"
                                                  if cfg.diagnostics_seeds is not None else "") + ": " + (", ".join(f"`blockmae eval {n}` ({', '.join(f'{k}={v}' for k, v in o.items())})"
                                                         for n, o in (cfg.diagnostics or {}).items()) or "none") + ".",
        "Verdicts: " + RULES + ".",
        "Per-image tests (secondary, per seed, conditional on that seed's trained encoders): exact McNemar on the "
        "images one encoder gets right and the other wrong (accuracy difference with an Agresti-Min 95% interval), "
        "paired bootstrap over the cue-conflict images for shape bias; 'inside the noise' when the interval covers 0, "
        "significant when it does not and p < 0.01.",
    ]
    if seconds:
        lines.append("Wall time per stage (s): " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()) + ".")
    lines.append("Settings file: quickstart.yaml in this folder (rerun with `blockmae quickstart --config` on it).")
    return lines


TITLE = "blockmae quickstart: does block masking shift a ViT from texture to shape?"
INTRO = """\
The question: pretrained as masked autoencoders with random patches hidden (1x1, standard MAE) or with
2x2 or 4x4 blocks of patches hidden, do small ViTs decide by shape rather than texture? The answer comes
first, from the reference encoders shipped with the package (one per mask and pretraining seed, trained
longer than this run's budget allows; their manifests say how), evaluated here beside untrained (random-init) encoders of the same
architecture, one per seed index: a linear and a k-NN probe for the shape label on ShapeTex, the linear
probe's accuracy on shape-only images and its decisions on cue-conflict images (shape i drawn with
texture j) for the shape bias, and the texture-vs-shape diagnostics. The arms are compared seed by seed
on the same test images, and every verdict holds across seeds or says that it does not. With --train,
your own run follows: the same three arms pretrained on this machine for what the time allows."""
