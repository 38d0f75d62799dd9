"""Stage: evaluate one frozen encoder (a reference, an arm trained here, or random init).

Each evaluation is a registry run of the project's own commands: the linear and k-NN probes
(`blockmae probe`), the ShapeTex shape-bias test (`blockmae eval shape-bias`) and, for the answer's
encoders, every diagnostic named in the settings (`blockmae eval NAME`, reading the linear probe).
"""

from __future__ import annotations

import contextlib
import copy
import io
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from blockmae.config import load_config
from blockmae.diagnostics.by_name import run_named_diagnostic
from blockmae.evaluation.cli_probe import run_probe
from blockmae.evaluation.cli_shape_bias import run_shape_bias
from blockmae.models import build_mae
from blockmae.models.factory import load_encoder
from blockmae.quickstart.config import BASELINE, CPU_CONFIG, QuickstartConfig, arm_name
from blockmae.quickstart.folder import Progress, Stages
from blockmae.report.quickstart import headline_keys
from blockmae.report.stats import wilson_interval

PROBE_KINDS = ("linear", "knn")


@dataclass(frozen=True)
class EncoderSpec:
    """One encoder of the quickstart. `key` names its stages and folders; `checkpoint` is a weights file,
    a run dir, or "random"."""

    key: str
    name: str
    role: str  # "reference", "own" (pretrained here) or "baseline" (random init)
    checkpoint: str
    block: int | None = None
    seed: int | None = None  # a reference's pretraining seed; random init: the seed its weights are drawn with

    @property
    def pretrained(self) -> bool:
        return self.role != "baseline"

    @property
    def arm(self) -> str:
        """The arm this encoder is one seed of: its mask's name, or random init."""
        return arm_name(self.block) if self.block is not None else BASELINE


def baseline_spec(seed: int | None = None) -> EncoderSpec:
    """Random init; `seed` None: drawn with the run's seed (your run), else one seed index of the answer."""
    if seed is None:
        return EncoderSpec("random_init", BASELINE, "baseline", "random")
    return EncoderSpec(f"random_init-s{seed}", f"{BASELINE} (seed {seed})", "baseline", "random", None, seed)


def init_seed(cfg: QuickstartConfig, spec: EncoderSpec) -> int:
    """The seed a random-init encoder's weights are drawn with."""
    return cfg.pretrain.run.seed if spec.seed is None else spec.seed


def probe_config(cfg: QuickstartConfig, out: Path, spec: EncoderSpec, kind: str) -> Any:
    """The probe settings of one encoder: the quickstart's `probe` section on ShapeTex, seeded by the run."""
    probe = copy.deepcopy(cfg.probe)
    probe.checkpoint, probe.kind, probe.output_root = spec.checkpoint, kind, str(out)
    probe.name = f"quickstart-{kind}-{spec.key}"
    probe.run_dir = str(out / "probes" / f"{kind}-{spec.key}")
    probe.data.dataset = "shapetex"
    probe.encoder.preset = cfg.pretrain.model.preset
    probe.encoder.img_size = cfg.pretrain.img_size
    probe.encoder.patch_size = int(cfg.pretrain.model.patch_size or probe.encoder.patch_size)
    probe.encoder.seed = cfg.pretrain.run.seed
    probe.linear.seed = cfg.pretrain.run.seed
    return probe


def random_init_arch(cfg: QuickstartConfig) -> dict[str, Any]:
    """The architecture of the arms (preset plus every model override), which the random-init baseline gets."""
    return dict(build_mae(cfg.pretrain.model.preset, **cfg.pretrain.model_kwargs()).arch)


def load_quickstart_encoder(cfg: QuickstartConfig, out: Path, spec: EncoderSpec) -> Any:
    """The frozen encoder of `spec`; the random-init baseline gets the arms' full architecture (width,
    depth, pos_embed ... overrides included), not just the preset's."""
    e = probe_config(cfg, out, spec, "linear").encoder
    if spec.checkpoint != "random":
        return load_encoder(spec.checkpoint, preset=e.preset, img_size=e.img_size, patch_size=e.patch_size,
                            seed=e.seed)
    return load_encoder(spec.checkpoint, preset=e.preset, img_size=e.img_size, patch_size=e.patch_size,
                        seed=init_seed(cfg, spec), arch=random_init_arch(cfg))


def evaluate_encoder(cfg: QuickstartConfig, out: Path, spec: EncoderSpec, stages: Stages, progress: Progress,
                     diagnostics: Mapping[str, Mapping[str, Any]] = {}, arch_from: str | None = None) -> None:
    """Linear probe, k-NN probe, ShapeTex shape bias and `diagnostics` of one encoder, each a registry run
    (completed stages are skipped). `arch_from`: a weights file with the random-init encoder's
    architecture, for diagnostics that rebuild it from the command line."""
    cache: dict[str, Any] = {}

    def encoder() -> Any:
        if "e" not in cache:
            cache["e"] = load_quickstart_encoder(cfg, out, spec)
        return cache["e"]

    timing = f"evaluate {spec.name}"
    for kind in PROBE_KINDS:
        stage = f"{kind}/{spec.key}"
        if stages.done(stage):
            progress.skip()
            continue

        def probe(kind: str = kind, stage: str = stage) -> str:
            outcome = run_probe(probe_config(cfg, out, spec, kind), encoder=encoder(), verbose=False)
            stages.record(stage, outcome.run_id)
            top1 = outcome.metrics.get("top1", outcome.metrics.get("knn_top1"))
            return f"top-1 {100 * top1:.1f}% on {outcome.metrics['num_eval']} images (run {outcome.run_id})"

        progress.run(f"{kind} probe {spec.name}", probe, timing)
    stage = f"shape_bias/{spec.key}"
    if stages.done(stage):
        progress.skip()
    else:
        def shape_bias() -> str:
            head = stages.run_dir(f"linear/{spec.key}") / "head.safetensors"
            outcome = run_shape_bias(head, "shapetex", output_root=out, name=f"quickstart-shape-bias-{spec.key}",
                                     num_images=cfg.shape_bias_images, seed=cfg.pretrain.run.seed,
                                     verbose=False, encoder=encoder())
            stages.record(stage, outcome.run_id)
            m = outcome.metrics
            return f"{m['shape_bias']:.3f} [{m['shape_bias_low']:.3f}, {m['shape_bias_high']:.3f}] (run {outcome.run_id})"

        progress.run(f"shape bias {spec.name}", shape_bias, timing)
    for name, options in diagnostics.items():
        stage = f"{name}/{spec.key}"
        if stages.done(stage):
            progress.skip()
            continue

        def diagnostic(name: str = name, options: Mapping[str, Any] = options, stage: str = stage) -> str:
            run_id, _, result = run_diagnostic_quietly(cfg, out, spec, name, options, stages, arch_from)
            stages.record(stage, run_id)
            numbers = [f"{k} {result.summary[k]:.3f}" for k in headline_keys(name, result.summary)
                       if isinstance(result.summary.get(k), (int, float))]
            return f"{', '.join(numbers) or 'done'} (run {run_id})"

        progress.run(f"{name} {spec.name}", diagnostic, f"diagnostics {spec.name}")


def run_diagnostic_quietly(cfg: QuickstartConfig, out: Path, spec: EncoderSpec, name: str,
                           options: Mapping[str, Any], stages: Stages, arch_from: str | None) -> tuple[str, Path, Any]:
    """`blockmae eval NAME` on the encoder with its linear probe; its printed lines go to the log only."""
    run_dir = out / "diagnostics" / name / spec.key
    extra = ["--checkpoint", spec.checkpoint, "--probe", str(stages.run_dir(f"linear/{spec.key}")),
             "--out", str(run_dir), "--output-root", str(out), "--name", f"quickstart-{name}-{spec.key}",
             "--seed", str(cfg.pretrain.run.seed)]
    if spec.checkpoint == "random":
        pc = cfg.pretrain
        extra += ["--preset", pc.model.preset, "--img-size", str(pc.img_size),
                  "--patch-size", str(int(pc.model.patch_size or 4)), "--init-seed", str(init_seed(cfg, spec))]
        if arch_from:
            extra += ["--arch-from", arch_from]
    if run_dir.exists() and not (run_dir / "results.json").exists():
        shutil.rmtree(run_dir)  # an interrupted attempt: its registry row stays marked as failed
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        run_id, path, result = run_named_diagnostic(name, options, extra)
    (path / "stdout.txt").write_text(log.getvalue())
    return run_id, path, result


def reference_evaluation(weights_path: Path, work_dir: Path) -> dict[str, Any]:
    """The CPU quickstart's linear and k-NN probes (configs/quickstart.yaml, seed 0) of one weights file:
    the numbers a reference's manifest records and that `blockmae quickstart` reproduces."""
    cfg = load_config(QuickstartConfig, CPU_CONFIG)
    spec = EncoderSpec("reference", "reference", "reference", str(weights_path))
    cache: dict[str, Any] = {}
    metrics: dict[str, Any] = {}
    for kind in PROBE_KINDS:
        if "e" not in cache:
            cache["e"] = load_quickstart_encoder(cfg, work_dir, spec)
        outcome = run_probe(probe_config(cfg, work_dir, spec, kind), encoder=cache["e"], verbose=False)
        metrics.update(outcome.metrics)
    linear = wilson_interval(float(metrics["top1"]), int(metrics["num_eval"]))
    return {
        "linear_top1": float(metrics["top1"]), "linear_top1_low": linear.low, "linear_top1_high": linear.high,
        "linear_top5": float(metrics["top5"]), "knn_top1": float(metrics["knn_top1"]),
        "num_train": int(metrics["num_train"]), "num_eval": int(metrics["num_eval"]),
        "protocol": ("the probe section of configs/quickstart.yaml (ShapeTex, frozen features, linear probe and "
                     "k-NN, seed 0) on these half-precision weights, as `blockmae quickstart` evaluates them"),
    }
