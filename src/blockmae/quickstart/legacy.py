"""`blockmae quickstart`: the project's question on ShapeTex, end to end, in minutes on a CPU.

Pretrains one small ViT per masking arm (random 1x1, 2x2 and 4x4 blocks; same images, same epochs),
then for each arm and for a random-init encoder runs the linear probe, the k-NN probe and the ShapeTex
shape-bias test, draws reconstructions and writes `report.md` (blockmae.report). Every run lands in the
registry of the output folder, so `blockmae runs --root DIR` lists them.

Re-running into the same folder resumes: stages whose registry run completed are skipped, an
interrupted pretraining continues from its last checkpoint. A folder holding a quickstart with other
settings, or anything that is not a quickstart, is refused.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, List, Optional

from blockmae.config import add_config_arguments, differences, load_config, resolve_config_path, shipped_configs_dir, to_dict, to_yaml
from blockmae.engine.config import PretrainConfig
from blockmae.errors import BlockMAEError
from blockmae.evaluation.config import ProbeConfig
from blockmae.fileio import write_text_atomic

# Shipped in the package (`--config quickstart` names the same file), so an installed wheel finds them.
CPU_CONFIG = shipped_configs_dir() / "quickstart.yaml"
# On a GPU the quickstart can afford the pretraining that the question needs (docs/quickstart.md).
GPU_CONFIG = shipped_configs_dir() / "quickstart_gpu.yaml"
CONFIG_NAME = "quickstart.yaml"
STATE_NAME = "quickstart_state.json"
BASELINE = "random-init"
PRETRAIN_SHARE = 0.6  # of budget_seconds; the probes, figures and data generation take the rest


@dataclass
class QuickstartConfig:
    """Schema of configs/quickstart.yaml. `pretrain` is the engine's schema, shared by every arm."""

    blocks: List[int] = field(default_factory=lambda: [1, 2, 4])
    budget_seconds: Optional[float] = None  # None: pretrain.train.epochs; else at most those, fitted to the budget
    reconstruction_images: int = 6
    shape_bias_images: Optional[int] = 1000  # images per ShapeTex test split (cue_conflict, shape_only, texture_only)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)  # evaluation's schema; checkpoint/kind set per arm

    def validate(self) -> None:
        if not self.blocks or any(b < 1 for b in self.blocks) or len(set(self.blocks)) != len(self.blocks):
            raise BlockMAEError(f"blocks must be distinct block sizes >= 1 (e.g. [1, 2, 4]), got {self.blocks}")
        if self.budget_seconds is not None and self.budget_seconds <= 0:
            raise BlockMAEError(f"budget_seconds must be positive or null, got {self.budget_seconds}")
        for block in self.blocks:
            arm_pretrain_config(self.pretrain, block, Path("."), Path(".")).validate()


def arm_name(block: int) -> str:
    return "1x1 (MAE)" if block == 1 else f"{block}x{block} blocks"


def mask_phrase(block: int) -> str:
    return "random (1x1) masking" if block == 1 else f"{block}x{block} block masking"


def arm_key(block: int) -> str:
    return f"block{block}"


def arm_pretrain_config(base: PretrainConfig, block: int, out: Path, run_dir: Path) -> PretrainConfig:
    """The arm's pretraining config: the shared one with its own mask, run dir and name."""
    cfg = copy.deepcopy(base)
    from blockmae.masking import canonical_mask

    cfg.mask.family, cfg.mask.block = canonical_mask("block", block)
    cfg.run.output_root = str(out)
    cfg.run.dir = str(run_dir)
    cfg.run.name = f"quickstart-{arm_key(block)}"
    return cfg


# ---------------------------------------------------------------------------------------------
# The output folder: refuse foreign content, resume our own


class Stages:
    """Completed stages of a quickstart folder: stage key -> registry run id (quickstart_state.json)."""

    def __init__(self, out: Path, registry: Any) -> None:
        self.path = out / STATE_NAME
        self.registry = registry
        self.data: dict[str, Any] = {}
        if self.path.is_file():
            try:
                self.data = json.loads(self.path.read_text())
            except (ValueError, UnicodeDecodeError):
                self.data = None  # type: ignore[assignment]
            if not isinstance(self.data, dict):
                raise BlockMAEError(f"{self.path} is unreadable (truncated or damaged); delete it to redo the "
                                    "stages from the registry, or use a new --out folder")

    def done(self, key: str) -> str | None:
        """The stage's run id if its registry run completed, else None."""
        run_id = self.data.get("runs", {}).get(key)
        if run_id is None:
            return None
        try:
            return run_id if self.registry.get(run_id).status == "completed" else None
        except BlockMAEError:
            return None

    def record(self, key: str, run_id: str) -> None:
        self.data.setdefault("runs", {})[key] = run_id
        self.save()

    def save(self) -> None:
        write_text_atomic(self.path, json.dumps(self.data, indent=1, sort_keys=True))


def prepare_output(out: Path, cfg: QuickstartConfig) -> bool:
    """Create or check the output folder; True when resuming an earlier quickstart with the same settings."""
    stored = out / CONFIG_NAME
    wanted = to_dict(cfg)
    if out.exists() and not out.is_dir() or any(p.is_file() for p in out.parents):
        raise BlockMAEError(f"--out {out}: a file is in the way (a folder is needed); use another --out")
    if stored.is_file():
        from omegaconf import OmegaConf

        previous = OmegaConf.to_container(OmegaConf.load(stored), resolve=True)
        diffs = differences(previous, wanted)
        if diffs:
            raise BlockMAEError(
                f"{out} holds a quickstart with other settings ({'; '.join(diffs[:3])}); "
                f"use a new --out folder or delete {out} to start over"
            )
        return True
    if out.exists() and any(out.iterdir()):
        raise BlockMAEError(f"{out} exists and is not a quickstart folder (no {CONFIG_NAME}); use a new or empty --out")
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(stored, to_yaml(cfg))
    return False


# ---------------------------------------------------------------------------------------------
# Progress


class Progress:
    """One line per stage: `[k/n elapsed] stage: what happened`."""

    def __init__(self, total: int) -> None:
        self.total, self.count, self.start = total, 0, time.monotonic()

    def _clock(self) -> str:
        s = int(time.monotonic() - self.start)
        return f"{s // 60}:{s % 60:02d}"

    def run(self, label: str, fn: Callable[[], str]) -> None:
        self.count += 1
        print(f"[{self.count}/{self.total} {self._clock()}] {label} ...", file=sys.stderr, flush=True)
        t0 = time.monotonic()
        summary = fn()
        print(f"[{self.count}/{self.total} {self._clock()}] {label}: {summary} ({time.monotonic() - t0:.0f} s)",
              file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="outputs/quickstart", help="output folder (default: outputs/quickstart)")
    parser.add_argument("--budget-seconds", type=float, default=None,
                        help="fit the pretraining (epochs and images, never above the config's) to this total budget "
                             "(default: the config's budget_seconds; budget_seconds=null disables it)")
    parser.add_argument("--seed", type=int, default=None, help="seed of pretraining and probes (default: the config's)")
    add_config_arguments(parser, f"quickstart config: a file or a shipped name (default: {GPU_CONFIG.stem} when "
                                 f"CUDA is available, else {CPU_CONFIG.stem})",
                         "config overrides, e.g. pretrain.train.epochs=12 pretrain.data.num_images=8000")


def default_config_path() -> Path:
    """The shipped quickstart_gpu.yaml where CUDA is available, else quickstart.yaml (the CPU budget)."""
    import torch

    return GPU_CONFIG if torch.cuda.is_available() else CPU_CONFIG


def load_quickstart_config(args: argparse.Namespace) -> QuickstartConfig:
    path = resolve_config_path(args.config or default_config_path(), "quickstart config")
    if not args.config:
        print(f"settings: {path} (pass --config to choose another)", file=sys.stderr, flush=True)
    overrides = list(args.overrides)
    if args.budget_seconds is not None:
        overrides.append(f"budget_seconds={args.budget_seconds}")
    if args.seed is not None:
        overrides.append(f"pretrain.run.seed={args.seed}")
    return load_config(QuickstartConfig, path, overrides)


def run(args: argparse.Namespace) -> int:
    """`blockmae quickstart`."""
    cfg = load_quickstart_config(args)
    if args.print_config:
        print(to_yaml(cfg), end="")
        return 0
    report = run_quickstart(cfg, Path(args.out))
    print(f"report: {report}")
    return 0


# ---------------------------------------------------------------------------------------------
# The stages


def _pretrain_run_id(registry: Any, run_dir: Path) -> str:
    """The registry id of the completed pretraining run in `run_dir` (the engine records it)."""
    wanted = str(run_dir.resolve())
    runs = [r for r in registry.list_runs(kind="pretrain", status="completed") if r.run_dir == wanted]
    if not runs:
        raise BlockMAEError(f"the pretraining in {run_dir} is not recorded as completed in {registry.path}")
    return runs[-1].id


def fit_epochs(cfg: QuickstartConfig, out: Path) -> tuple[int, int, float]:
    """Epochs and images per arm that fit `budget_seconds`, from a measured pretraining speed.

    A two-epoch engine run on a few batches measures images/s in its second epoch (the first pays for
    start-up: CUDA context, kernel selection, allocator growth, which on a GPU dwarf a few steps); pretraining
    gets PRETRAIN_SHARE of the budget: the probes, figures and data generation took about half as long as
    the pretraining on the 2-core CPU here and slow down with the machine as pretraining does; the rest is
    margin for a speed reading that is 20% off (they varied that much between runs here). The
    config's epochs are an upper bound, so a fast machine runs exactly the configured quickstart. Returns
    (epochs, num_images, images_per_second)."""
    from blockmae.engine.pretrain import pretrain, read_metrics

    budget = float(cfg.budget_seconds or 0)
    base = cfg.pretrain
    probe = arm_pretrain_config(base, max(cfg.blocks), out, out / "calibration")
    probe.train.epochs, probe.data.num_images, probe.run.registry = 2, 4 * base.train.batch_size, False
    probe.optim.warmup_epochs = 0
    run_dir = pretrain(probe)
    speeds = [r["img_per_s"] for r in read_metrics(run_dir, "epoch") if r.get("img_per_s")]
    if not speeds:
        raise BlockMAEError(f"could not read the pretraining speed from {run_dir / 'metrics.jsonl'}")
    ips = float(speeds[-1])
    images_per_arm = PRETRAIN_SHARE * budget * ips / len(cfg.blocks)
    epochs, num_images = fit_sizes(images_per_arm, base.train.epochs, int(base.data.num_images or 4000),
                                   base.train.batch_size)
    return epochs, num_images, ips


def fit_sizes(images_per_arm: float, max_epochs: int, max_images: int, batch_size: int) -> tuple[int, int]:
    """(epochs, images) with epochs * images close to `images_per_arm`, neither above the config's.

    The epochs are rounded up and the image set shrunk to match, so the budget is filled (for MAE on
    generated data, images seen matter more than distinct images); at least 4 batches of images."""
    epochs = max(1, min(max_epochs, math.ceil(images_per_arm / max_images)))
    images = min(max_images, max(4 * batch_size, int(images_per_arm // epochs)))
    return epochs, images


def _resolve_sizes(cfg: QuickstartConfig, out: Path, stages: Stages, progress: "Progress") -> QuickstartConfig:
    """Apply the budget (measured once, kept in the state so that a resumed run keeps the same sizes)."""
    if cfg.budget_seconds is None:
        return cfg
    if "sizes" not in stages.data:
        def calibrate() -> str:
            epochs, num_images, ips = fit_epochs(cfg, out)
            stages.data["sizes"] = {"epochs": epochs, "num_images": num_images, "img_per_s": ips}
            stages.save()
            return f"{ips:.0f} img/s -> {epochs} epochs x {num_images} images per arm"

        progress.run("calibrate the budget", calibrate)
    sizes = stages.data["sizes"]
    cfg = copy.deepcopy(cfg)
    cfg.pretrain.train.epochs = int(sizes["epochs"])
    cfg.pretrain.data.num_images = int(sizes["num_images"])
    cfg.pretrain.optim.warmup_epochs = min(cfg.pretrain.optim.warmup_epochs, max(0.0, cfg.pretrain.train.epochs / 4))
    return cfg


def _probe_config(cfg: QuickstartConfig, out: Path, checkpoint: str, kind: str, key: str) -> ProbeConfig:
    probe = copy.deepcopy(cfg.probe)
    probe.checkpoint, probe.kind, probe.output_root = checkpoint, kind, str(out)
    probe.name = f"quickstart-{kind}-{key}"
    probe.run_dir = str(out / "probes" / f"{kind}-{key}")
    probe.data.dataset = "shapetex"
    probe.encoder.preset = cfg.pretrain.model.preset
    probe.encoder.img_size = cfg.pretrain.img_size
    probe.encoder.patch_size = int(cfg.pretrain.model.patch_size or probe.encoder.patch_size)
    probe.encoder.seed = cfg.pretrain.run.seed
    probe.linear.seed = cfg.pretrain.run.seed
    return probe


def quickstart_encoder(cfg: QuickstartConfig, out: Path, checkpoint: str, key: str) -> Any:
    """The frozen encoder of one arm; the random-init baseline gets the arms' full architecture (width,
    depth, pos_embed ... overrides included), not just the preset's."""
    from blockmae.evaluation.features import load_encoder
    from blockmae.models import build_mae

    e = _probe_config(cfg, out, checkpoint, "linear", key).encoder
    arch = None
    if checkpoint == "random":
        arch = build_mae(cfg.pretrain.model.preset, **cfg.pretrain.model_kwargs()).arch
    return load_encoder(checkpoint, e.preset, e.img_size, e.patch_size, e.seed, arch=arch)


def _evaluate(cfg: QuickstartConfig, out: Path, key: str, checkpoint: str, stages: Stages, progress: Progress,
              registry: Any) -> None:
    """Linear probe, k-NN probe and ShapeTex shape bias of one encoder, each a registry run."""
    from blockmae.evaluation.cli_probe import run_probe
    from blockmae.evaluation.cli_shape_bias import run_shape_bias

    encoder_cache: dict[str, Any] = {}

    def encoder() -> Any:
        if "e" not in encoder_cache:
            encoder_cache["e"] = quickstart_encoder(cfg, out, checkpoint, key)
        return encoder_cache["e"]

    for kind in ("linear", "knn"):
        stage = f"{kind}/{key}"
        if stages.done(stage):
            continue

        def probe(kind: str = kind, stage: str = stage) -> str:
            outcome = run_probe(_probe_config(cfg, out, checkpoint, kind, key), encoder=encoder(), verbose=False)
            stages.record(stage, outcome.run_id)
            top1 = outcome.metrics.get("top1", outcome.metrics.get("knn_top1"))
            return f"top-1 {100 * top1:.1f}% on {outcome.metrics['num_eval']} images (run {outcome.run_id})"

        progress.run(f"{kind} probe {key}", probe)
    stage = f"shape_bias/{key}"
    if not stages.done(stage):
        def shape_bias() -> str:
            head = Path(registry.get(stages.done(f"linear/{key}")).run_dir) / "head.safetensors"
            outcome = run_shape_bias(head, "shapetex", output_root=out, name=f"quickstart-shape-bias-{key}",
                                     num_images=cfg.shape_bias_images, seed=cfg.pretrain.run.seed,
                                     verbose=False, encoder=encoder())
            stages.record(stage, outcome.run_id)
            m = outcome.metrics
            return f"{m['shape_bias']:.3f} [{m['shape_bias_low']:.3f}, {m['shape_bias_high']:.3f}] (run {outcome.run_id})"

        progress.run(f"shape bias {key}", shape_bias)


def _reconstructions(cfg: QuickstartConfig, out: Path) -> list[Any]:
    """One figure per pretrained arm: the same validation images under 1x1, 2x2 and 4x4 masks."""
    import torch

    from blockmae.data import load_dataset
    from blockmae.data.augment import normalize
    from blockmae.masking import MaskGenerator, canonical_mask
    from blockmae.models.io import load_mae
    from blockmae.report.document import Image
    from blockmae.visualisation.reconstructions import reconstruction_figure

    pc = cfg.pretrain
    count = cfg.reconstruction_images
    val = load_dataset(pc.data.dataset, pc.val_split(), image_size=pc.data.image_size,
                       **{**pc.data.options, "num_images": max(64, count)})
    images = normalize(val.images[:count])
    grid = pc.img_size // int(pc.model.patch_size or 4)
    masks = {}
    for block in cfg.blocks:
        gen = torch.Generator().manual_seed(1234 + block)
        masks[f"{block}x{block}"] = MaskGenerator(grid, pc.mask.ratio, *canonical_mask("block", block),
                                                  pc.mask.align)(count, generator=gen)
    figures = []
    for block in cfg.blocks:
        model, _ = load_mae(out / "pretrain" / arm_key(block))
        model.eval()
        path = out / "figures" / f"reconstructions_{arm_key(block)}.png"
        with torch.no_grad():
            reconstruction_figure(model, images, masks, path, title=f"pretrained with {mask_phrase(block)}")
        figures.append(Image(path, f"Reconstructions by the model pretrained with {mask_phrase(block)} (columns: "
                                   "the mask used at test time)"))
    return figures


def _loss_curves(cfg: QuickstartConfig, out: Path) -> dict[str, tuple[list[int], list[float]]]:
    """Arm name -> (images seen, loss) at every logged step of its pretraining run."""
    from blockmae.engine.pretrain import read_metrics

    images_per_step = cfg.pretrain.train.batch_size  # the global batch of one optimiser step
    curves = {}
    for block in cfg.blocks:
        steps = read_metrics(out / "pretrain" / arm_key(block), "step")
        curves[arm_name(block)] = ([r["step"] * images_per_step for r in steps], [r["loss"] for r in steps])
    return curves


def _settings_section(cfg: QuickstartConfig, stages: Stages) -> list[str]:
    pc = cfg.pretrain
    seconds = stages.data.get("seconds", {})
    lines = [
        f"Data: ShapeTex at {pc.data.image_size} px, {pc.data.num_images} training images "
        f"(texture correlation {pc.data.options.get('texture_correlation', 0.8)}); probes on "
        f"{cfg.probe.data.num_images or 'the default number of'} images per split; shape bias on "
        f"{cfg.shape_bias_images} images per test split.",
        f"Model: {pc.model.preset}, patch {pc.model.patch_size} ({pc.img_size // int(pc.model.patch_size or 4)}^2 "
        f"patches), mask ratio {pc.mask.ratio}.",
        f"Pretraining per arm: {pc.train.epochs} epochs x {pc.data.num_images} images = "
        f"{pc.train.epochs * int(pc.data.num_images or 0)} images seen, batch {pc.train.batch_size}, "
        f"lr {pc.optim.resolved_lr(pc.train.batch_size):g}, precision {pc.train.precision}, seed {pc.run.seed}.",
        ("For scale: on ShapeTex the pretrained arms need of the order of 10^5 to 10^6 images per arm to beat "
         "random weights on the linear probe (docs/quickstart.md, \"How much pretraining the answer needs\"); "
         "configs/quickstart_gpu.yaml, the default where CUDA is available, pretrains 900,000."),
        f"Probes: linear ({cfg.probe.linear.optimizer}, {cfg.probe.linear.epochs} epochs, pool {cfg.probe.encoder.pool}) "
        f"and k-NN (k={cfg.probe.knn.k}, T={cfg.probe.knn.temperature}) on frozen features.",
    ]
    if "sizes" in stages.data:
        s = stages.data["sizes"]
        lines.append(f"Budget mode: {cfg.budget_seconds:g} s; measured {s['img_per_s']:.0f} pretraining img/s, "
                     f"so {s['epochs']} epochs x {s['num_images']} images per arm.")
    if seconds:
        lines.append("Wall time per stage (s): " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()) + ".")
    lines.append(f"Settings file: {CONFIG_NAME} in this folder (rerun with `blockmae quickstart --config` on it).")
    return lines


def run_quickstart(cfg: QuickstartConfig, out: Path) -> Path:
    """Run (or resume) every stage into `out`; returns the path of report.md (report.html, the same report as
    one offline page, and report_tables/ are written beside it)."""
    from blockmae.engine.pretrain import pretrain
    from blockmae.registry import Registry
    from blockmae.report.document import Bullets, Figure
    from blockmae.report.encoders import (accuracy_figure, arm_from_registry, encoders_document, loss_figure,
                                          shape_bias_figure)
    from blockmae.report.write import write_markdown_report

    resuming = prepare_output(out, cfg)
    registry = Registry(out)
    stages = Stages(out, registry)
    if resuming:
        print(f"resuming the quickstart in {out} (completed stages are skipped)", file=sys.stderr, flush=True)
    encoders = [(arm_key(b), arm_name(b), True) for b in cfg.blocks] + [("random_init", BASELINE, False)]
    progress = Progress(len(cfg.blocks) + 3 * len(encoders) + 2 + (cfg.budget_seconds is not None))
    timed = stages.data.setdefault("seconds", {})

    def timed_run(label: str, fn: Callable[[], str]) -> None:
        t0 = time.monotonic()
        progress.run(label, fn)
        timed[label] = timed.get(label, 0.0) + time.monotonic() - t0
        stages.save()

    cfg = _resolve_sizes(cfg, out, stages, progress)
    for block in cfg.blocks:
        key = arm_key(block)
        stage = f"pretrain/{key}"
        if stages.done(stage):
            progress.count += 1
            continue
        run_dir = out / "pretrain" / key

        def do_pretrain(block: int = block, stage: str = stage, run_dir: Path = run_dir) -> str:
            done_dir = pretrain(arm_pretrain_config(cfg.pretrain, block, out, run_dir))
            run_id = _pretrain_run_id(registry, done_dir)
            stages.record(stage, run_id)
            loss = registry.get(run_id).metrics.get("loss")
            return f"loss {loss:.3f} (run {run_id})" if loss is not None else f"run {run_id}"

        timed_run(f"pretrain {arm_name(block)}", do_pretrain)
    checkpoints = {arm_key(b): str(out / "pretrain" / arm_key(b)) for b in cfg.blocks}
    checkpoints["random_init"] = "random"
    for key, name, _ in encoders:
        before = progress.count
        t0 = time.monotonic()
        _evaluate(cfg, out, key, checkpoints[key], stages, progress, registry)
        progress.count = before + 3
        timed[f"evaluate {name}"] = timed.get(f"evaluate {name}", 0.0) + time.monotonic() - t0
        stages.save()

    figures: list[Any] = []
    timed_run("reconstructions", lambda: f"{len(figures.extend(_reconstructions(cfg, out)) or figures)} figures")
    arms = []
    for key, name, pretrained in encoders:
        ids = {s: stages.done(f"{s}/{key}") for s in ("pretrain", "linear", "knn", "shape_bias") if pretrained or s != "pretrain"}
        arms.append(arm_from_registry(registry, name, pretrained, {k: v for k, v in ids.items() if v}))
    report_path = out / "report.md"

    def write() -> str:
        run_dirs = [(f"{a.name}: {stage} ({run_id})", Path(registry.get(run_id).run_dir))
                    for a in arms for stage, run_id in a.run_ids.items() if registry.get(run_id).run_dir]
        written = write_markdown_report(report_path, encoders_document(
            "blockmae quickstart: does block masking shift a ViT from texture to shape?",
            arms,
            intro=INTRO,
            figures=[Figure("shape_bias", "Shape bias per encoder (95% bootstrap intervals)", shape_bias_figure(arms)),
                     Figure("accuracy", "Probe accuracy per encoder", accuracy_figure(arms, chance=0.1)),
                     Figure("pretraining_loss", "Pretraining loss per arm (metrics.jsonl of each run)",
                            loss_figure(_loss_curves(cfg, out)))] + figures,
            baseline_name=BASELINE,
            sections=[("Settings", [Bullets(_settings_section(cfg, stages))])],
            run_dirs=run_dirs,
        ))
        return f"{report_path} and {written.html}"

    progress.run("report", write)
    return report_path


INTRO = """\
Three small ViTs were pretrained as masked autoencoders on ShapeTex, identical except for the mask:
random patches (1x1, standard MAE), 2x2 blocks and 4x4 blocks of patches, each for the same epochs over
the same images. Each frozen encoder, and an untrained (random-init) one as the baseline, was then
probed: a linear probe and a k-NN probe for the shape label (ShapeTex val, where the texture agrees
with the shape 80% of the time, as in training), and the linear probe's decisions on cue-conflict
images (shape i drawn with texture j) for the shape bias, plus its accuracy on shape-only silhouettes and
texture-only images (read as the shape class that texture accompanies in training). With 10 classes a
probe that guesses decides for neither cue 80% of the time, so a Neither column near 80 means that the
shape bias rests on few, close to random, decisions."""
