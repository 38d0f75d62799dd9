"""The shape every texture-vs-shape diagnostic shares: arguments, encoder + probe, outputs, registry.

A diagnostic is ONE module ``blockmae/diagnostics/<name>.py`` holding a subclass of :class:`Diagnostic`
and the two functions the `blockmae` command expects, made by :func:`command`::

    class Lowpass(Diagnostic):
        name = "lowpass"                      # registry kind, `blockmae eval lowpass`, outputs/lowpass/
        description = "accuracy under low-pass filtering"
        needs_probe = True                    # False: only the frozen encoder is needed

        @classmethod
        def add_options(cls, parser): ...     # its own options (the common ones are added for it)

        def evaluate(self, ctx: Context) -> DiagnosticResult: ...

    add_arguments, run = command(Lowpass)

plus one row in ``blockmae.diagnostics.DIAGNOSTICS`` (``("lowpass", "blockmae.diagnostics.lowpass", help)``)
and, if wanted, a thin script ``eval/<script>.py`` running ``blockmae.cli.main(["eval", "<name>", *argv])``.

What the base does, so that `evaluate` does not:

* Common arguments (:func:`add_common_arguments`): ``--checkpoint`` (run dir, checkpoint dir,
  ``.safetensors`` or ``random`` with ``--preset/--img-size/--patch-size/--arch-from/--init-seed``),
  ``--probe RUN`` (optional), ``--probe-config``/``--probe-set`` (settings of a probe trained here),
  ``--data/--root/--split/--num-images`` (the evaluation images), ``--batch-size``, ``--device``,
  ``--autocast/--no-autocast`` (bf16; default on where the device has fast bf16, i.e. CUDA),
  ``--out`` (run dir), ``--output-root`` (registry root), ``--name``, ``--seed``.
* Encoder and probe (:func:`resolve_probe`; a diagnostic that loads its model itself, e.g. a classifier
  with its own head, overrides :meth:`Diagnostic.resolve_model`): with ``--probe`` the head is loaded
  and its weights hash is checked against the encoder's. With only ``--checkpoint``, the standard linear probe
  (``evaluation.cli_probe.run_probe``, ``ProbeConfig`` defaults or ``--probe-config`` plus
  ``--probe-set`` overrides) is trained on the dataset the checkpoint was pretrained on (its run's
  ``config.yaml``; ``--data`` overrides), unless the registry already holds a completed probe run for the
  same weights hash and the same settings, which is reused. The command says which.
* The images: :meth:`Context.dataset` loads the evaluation split (the probe's dataset, root and eval
  split unless ``--data/--root/--split`` say otherwise; ``--num-images`` takes a seeded random subset);
  :meth:`Context.scores` classifies a dataset in batches on the device, after an optional batched
  ``transform(images, index)`` on float images in [0, 1] at the encoder's input size (filters,
  recombinations...), with a progress bar. :meth:`Context.features` gives frozen features instead.
* Outputs, in the run dir (``--out``, default ``<output-root>/<name>/<checkpoint>-<time>``):
  ``results.json`` = ``{"run_id", "diagnostic", "settings", "encoder", "probe", "levels", "summary",
  "figures"}`` where ``levels`` maps a curve name to its rows (one per level, accuracies with their 95%
  intervals, e.g. from :func:`accuracy_row`) and ``summary`` holds the headline numbers (also the
  registry row's metrics); every figure written by :meth:`Context.save_figure` lands in ``figures/`` as
  PNG beside a CSV of the numbers drawn. The registry row has kind = the diagnostic's name and parent =
  the checkpoint's pretraining run id (or the checkpoint's path when no run is registered), so
  ``blockmae runs --kind lowpass`` lists them. results.json is written last and atomically.
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import io
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from tqdm.auto import tqdm

from blockmae.config import load_config, number, to_dict
from blockmae.data import load_dataset, subset
from blockmae.data.augment import IMAGENET_MEAN, IMAGENET_STD
from blockmae.engine.lock import RunLock
from blockmae.errors import BlockMAEError
from blockmae.evaluation.cli_probe import run_probe
from blockmae.evaluation.cli_shape_bias import encoder_for_head
from blockmae.evaluation.config import EVAL_SPLITS, ProbeConfig
from blockmae.evaluation.features import encode_batch, resolve_device
from blockmae.evaluation.linear import load_head
from blockmae.evaluation.metrics import topk_correct
from blockmae.fileio import claim_output_dir, write_json_atomic, write_text_atomic
from blockmae.models.factory import RANDOM, Encoder, canonical_spec, is_foreign, load_encoder
from blockmae.registry import Registry
from blockmae.report.stats import wilson_interval
from blockmae.visualisation import save_figure

# A batched image transform: (images float (B, 3, H, W) in [0, 1] on the device, dataset indices (B,)) -> images.
Transform = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# Probe settings that do not change the trained head (left out when looking for a probe to reuse).
_PROBE_KEYS_IGNORED = ("name", "run_dir", "output_root", "device", "checkpoint", "weights_hash")
_PROBE_DATA_KEYS_IGNORED = ("batch_size", "cache_features")


# -- the interface ---------------------------------------------------------------------------------


@dataclass
class DiagnosticResult:
    """What `Diagnostic.evaluate` returns: written to results.json (and `summary` to the registry)."""

    settings: dict[str, Any]  # the diagnostic's own settings (levels, modes, ...)
    levels: dict[str, list[dict[str, Any]]]  # curve name -> one row per level
    summary: dict[str, Any]  # headline numbers (flat: str -> number/str)
    lines: list[str] = field(default_factory=list)  # printed after the run (what a user reads first)


class Diagnostic:
    """Base class of a diagnostic; see the module docstring for the contract."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    needs_probe: ClassVar[bool] = True
    # True: `--checkpoint A B C` runs the diagnostic once per checkpoint, then `compare` draws them together.
    compares_checkpoints: ClassVar[bool] = False
    # True: --data/--root/--split name the diagnostic's own images (e.g. DTD), not the probe's dataset;
    # the probe and ctx.dataset() then use the checkpoint's pretraining dataset.
    own_data: ClassVar[bool] = False

    @classmethod
    def add_options(cls, parser: argparse.ArgumentParser) -> None:
        """Add the diagnostic's own options (the common ones are already there)."""

    def resolve_model(self, args: argparse.Namespace, device: torch.device) -> tuple[Encoder, "Probe | None"] | None:
        """The model, when the diagnostic loads it itself (e.g. a classifier with its own head); None: the
        common --checkpoint/--probe resolution. Called first: also the place to refuse bad options early."""
        return None

    def check(self, args: argparse.Namespace, encoder: Encoder) -> None:
        """Refuse bad options (BlockMAEError) once the encoder is known, before the run dir and registry row."""

    def evaluate(self, ctx: "Context") -> DiagnosticResult:
        raise NotImplementedError

    def compare(self, runs: Sequence[tuple[str, Path, DiagnosticResult]], out_dir: Path) -> list[str]:
        """Figures (and their CSVs) comparing finished runs, written into `out_dir`; returns lines to print."""
        raise NotImplementedError


# -- results helpers -------------------------------------------------------------------------------


def accuracy_row(level: Any, correct: int, n: int, **extra: Any) -> dict[str, Any]:
    """One level's accuracy with its 95% Wilson interval: {level, n, correct, top1, top1_low, top1_high, ...}."""
    accuracy = correct / n if n else float("nan")
    interval = wilson_interval(accuracy, n)
    return {"level": level, "n": n, "correct": correct, "top1": accuracy, "top1_low": interval.low,
            "top1_high": interval.high, **extra}


def correct_count(scores: torch.Tensor, labels: torch.Tensor, k: int = 1) -> int:
    return topk_correct(scores, labels, (k,))[k]


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """Rows (dicts) as CSV, columns in first-seen order, written atomically."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return write_text_atomic(path, buffer.getvalue())


# -- common arguments ------------------------------------------------------------------------------


def add_common_arguments(parser: argparse.ArgumentParser, several_checkpoints: bool = False) -> None:
    encoder = parser.add_argument_group("encoder and probe")
    several = {"nargs": "+"} if several_checkpoints else {}
    encoder.add_argument("--checkpoint", **several,
                         help="pretraining run dir, checkpoint dir, .safetensors file, or 'random' "
                              "(default with --probe: the probe's checkpoint)"
                              + ("; several: one run each plus a comparison (see the docs)" if several else ""))
    encoder.add_argument("--probe", help="probe run dir or head.safetensors (default: train the standard linear "
                                         "probe, or reuse one already trained for the same weights and settings)")
    encoder.add_argument("--probe-config", help="probe YAML for a probe trained here: a file or a shipped name (e.g. linear_probe)")
    encoder.add_argument("--probe-set", action="append", default=[], metavar="KEY=VALUE",
                         help="override of a probe trained here, e.g. linear.epochs=20 (repeatable)")
    encoder.add_argument("--preset", default="vit_micro", help="checkpoint=random: architecture preset")
    encoder.add_argument("--arch-from", help="checkpoint=random: copy this checkpoint's architecture")
    encoder.add_argument("--img-size", type=number(int, ">=1"), default=32, help="checkpoint=random: input size")
    encoder.add_argument("--patch-size", type=number(int, ">=1"), default=4, help="checkpoint=random: patch size")
    encoder.add_argument("--init-seed", type=number(int, ">=0"),
                         default=0, help="checkpoint=random: initialisation seed")
    data = parser.add_argument_group("evaluation images")
    data.add_argument("--data", help="dataset (default: the probe's; without --probe: the checkpoint's pretraining "
                                     "dataset, shapetex for random)")
    data.add_argument("--root", help="dataset root (default: the probe's or the pretraining run's)")
    data.add_argument("--split", help="split evaluated (default: the probe's eval split)")
    data.add_argument("--num-images", type=number(int, ">=1"),
                      help="evaluate a seeded random subset of this many images")
    run = parser.add_argument_group("run")
    run.add_argument("--batch-size", type=number(int, ">=1"), default=256, help="images per batch (default 256)")
    run.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    run.add_argument("--autocast", action=argparse.BooleanOptionalAction, default=None,
                     help="bf16 autocast (default: on for CUDA with bf16, off elsewhere)")
    run.add_argument("--out", help="run directory (default: <output-root>/<diagnostic>/<checkpoint>-<time>)")
    run.add_argument("--output-root", default="outputs", help="registry and probe root (default: outputs)")
    run.add_argument("--name", help="run name (default: derived from the checkpoint)")
    run.add_argument("--seed", type=number(int, ">=0"), default=0, help="seed of subsets, donors and bootstraps")


def command(diagnostic: type[Diagnostic]) -> tuple[Callable[[argparse.ArgumentParser], None],
                                                   Callable[[argparse.Namespace], int]]:
    """(add_arguments, run) for `blockmae.cli` from a Diagnostic subclass."""

    def add_arguments(parser: argparse.ArgumentParser) -> None:
        add_common_arguments(parser, several_checkpoints=diagnostic.compares_checkpoints)
        diagnostic.add_options(parser.add_argument_group(f"{diagnostic.name} options"))

    def run(args: argparse.Namespace) -> int:
        checkpoints = args.checkpoint if isinstance(args.checkpoint, list) else [args.checkpoint]
        if len(checkpoints) > 1:
            run_several(diagnostic, args, checkpoints)
            return 0
        args.checkpoint = checkpoints[0]
        run_diagnostic(diagnostic(), args)
        return 0

    return add_arguments, run


# -- encoder and probe -----------------------------------------------------------------------------


@dataclass
class Probe:
    """A linear-probe head and where it came from."""

    head: Any  # LinearProbeHead on the device
    meta: dict[str, Any]  # the head's metadata (dataset, class ids, pool, layer, weights hash, ...)
    run_dir: Path | None
    run_id: str | None
    config: dict[str, Any]  # the probe run's config (ProbeConfig as a dict), {} when unknown
    metrics: dict[str, Any]  # the probe run's metrics (top1 on its eval split, ...)
    origin: str  # "given", "reused" or "trained"

    def describe(self) -> str:
        top1 = self.metrics.get("top1")
        acc = f", top-1 {top1:.4f} on {self.config.get('data', {}).get('dataset', '?')}" if top1 is not None else ""
        return f"probe {self.origin}: {self.run_dir} (run {self.run_id}{acc})"


def pretraining_data(checkpoint: str) -> dict[str, Any] | None:
    """The `data` section of the pretraining run holding `checkpoint` (its config.yaml, or a reference
    folder's manifest.json, which holds the run's resolved config), or None."""
    if checkpoint == RANDOM:
        return None
    path = Path(checkpoint).resolve()
    for folder in [path, *path.parents][:4]:
        manifest = folder / "manifest.json"
        if manifest.is_file():
            try:
                data = json.loads(manifest.read_text(encoding="utf-8"))["config"]["data"]
            except (OSError, ValueError, KeyError, TypeError):
                data = None
            return dict(data) if isinstance(data, dict) else None
        config = folder / "config.yaml"
        if config.is_file():
            data = OmegaConf.to_container(OmegaConf.load(config)).get("data")  # type: ignore[union-attr]
            return dict(data) if isinstance(data, dict) else None
    return None


def _reuse_key(config: Mapping[str, Any]) -> str:
    """The probe settings that decide the head (JSON, for comparison)."""
    kept = {k: v for k, v in config.items() if k not in _PROBE_KEYS_IGNORED}
    kept["data"] = {k: v for k, v in dict(kept.get("data", {})).items() if k not in _PROBE_DATA_KEYS_IGNORED}
    return json.dumps(kept, sort_keys=True, default=str)


def find_reusable_probe(registry: Any, weights_hash: str, config: Mapping[str, Any]) -> Any | None:
    """The latest completed probe run for these weights with the same settings and its head on disk."""
    wanted = _reuse_key(config)
    for record in reversed(registry.list_runs(kind="probe", status="completed")):
        if record.config.get("weights_hash") != weights_hash or _reuse_key(record.config) != wanted:
            continue
        if record.run_dir and (Path(record.run_dir) / "head.safetensors").is_file():
            return record
    return None


def probe_config(args: argparse.Namespace, checkpoint: str) -> Any:
    """The ProbeConfig of the standard linear probe of `checkpoint` on the diagnostic's dataset."""
    overrides = [f"checkpoint={checkpoint}", "kind=linear", f"output_root={args.output_root}",
                 f"device={args.device}", f"autocast={bool(args.autocast)}"]
    if checkpoint == RANDOM:
        overrides += [f"encoder.preset={args.preset}", f"encoder.img_size={args.img_size}",
                      f"encoder.patch_size={args.patch_size}", f"encoder.seed={args.init_seed}"]
        if args.arch_from:
            overrides.append(f"encoder.arch_from={args.arch_from}")
    cfg = load_config(ProbeConfig, args.probe_config, overrides + list(args.probe_set))
    explicit = {o.split("=", 1)[0] for o in args.probe_set}
    pretrained = pretraining_data(checkpoint) or {}
    dataset = args.data or pretrained.get("dataset")
    if dataset is None and checkpoint != RANDOM:
        raise BlockMAEError(f"cannot tell which dataset {checkpoint} was pretrained on (no config.yaml beside it); "
                            f"pass --data NAME (and --root DIR)")
    if dataset is not None and "data.dataset" not in explicit:
        cfg.data.dataset = dataset
    if cfg.data.dataset == pretrained.get("dataset"):
        if "data.root" not in explicit and args.root is None:
            cfg.data.root = pretrained.get("root")
        if "data.options" not in explicit and not cfg.data.options:
            cfg.data.options = dict(pretrained.get("options") or {})
    if args.root is not None and "data.root" not in explicit:
        cfg.data.root = args.root
    if cfg.data.dataset != "shapetex":
        cfg.data.num_images = None
    cfg.data.eval_split = None  # validate() sets the dataset's default
    cfg.validate()
    return cfg


def _read_probe_run(run_dir: Path) -> tuple[str | None, dict[str, Any], dict[str, Any]]:
    results = run_dir / "results.json"
    if not results.is_file():
        return None, {}, {}
    data = json.loads(results.read_text())
    return data.get("run_id"), dict(data.get("config", {})), dict(data.get("metrics", {}))


def resolve_probe(args: argparse.Namespace, device: torch.device) -> tuple[Encoder, Probe]:
    """The encoder and its probe head: given (--probe), reused from the registry, or trained now."""
    if args.probe:
        head, meta = load_head(args.probe, device)
        encoder = encoder_for_head(meta, args.checkpoint, device)
        probe_dir = Path(args.probe) if Path(args.probe).is_dir() else Path(args.probe).parent
        run_id, config, metrics = _read_probe_run(probe_dir)
        return encoder, Probe(head, meta, probe_dir, run_id, config, metrics, "given")
    if not args.checkpoint:
        raise BlockMAEError("pass --checkpoint PATH (or 'random'), or --probe RUN")
    encoder = load_diagnostic_encoder(args, device)
    cfg = probe_config(args, args.checkpoint)

    registry = Registry(args.output_root)
    record = find_reusable_probe(registry, encoder.weights_hash, to_dict(cfg))
    if record is not None:
        origin, run_dir = "reused", Path(record.run_dir)
    else:
        print(f"training the linear probe of {args.checkpoint} on {cfg.data.dataset} "
              f"({cfg.linear.epochs} epochs; --probe RUN uses an existing one)", file=sys.stderr)
        outcome = run_probe(cfg, encoder=encoder, verbose=False)
        origin, run_dir = "trained", outcome.run_dir
    head, meta = load_head(run_dir, device)
    run_id, config, metrics = _read_probe_run(run_dir)
    return encoder, Probe(head, meta, run_dir, run_id, config, metrics, origin)


def load_diagnostic_encoder(args: argparse.Namespace, device: torch.device) -> Encoder:
    if not args.checkpoint:
        raise BlockMAEError("pass --checkpoint PATH (or 'random')")
    return load_encoder(args.checkpoint, device, preset=args.preset, img_size=args.img_size,
                        patch_size=args.patch_size, seed=args.init_seed, arch_from=args.arch_from)


def parent_run(registry: Any, checkpoint: str) -> str:
    """The id of the registered run whose directory holds `checkpoint`, else its resolved path ('random'; a
    foreign model's spec with its file made absolute)."""
    if checkpoint == RANDOM:
        return RANDOM
    if is_foreign(checkpoint):
        return canonical_spec(checkpoint)
    path = Path(checkpoint).resolve()
    for record in registry.list_runs(kind="pretrain"):
        if record.run_dir and (path == Path(record.run_dir) or Path(record.run_dir) in path.parents):
            return record.id
    return str(path)


def autocast_enabled(flag: bool | None, device: torch.device) -> bool:
    """--autocast default: bf16 where it is fast (CUDA with bf16); never on CPUs (slow without AMX)."""
    if flag is None:
        return device.type == "cuda" and torch.cuda.is_bf16_supported()
    return bool(flag)


# -- the context a diagnostic works in -------------------------------------------------------------


@dataclass
class Context:
    """Everything `Diagnostic.evaluate` needs; built by :func:`run_diagnostic`."""

    args: argparse.Namespace
    device: torch.device
    autocast: bool
    encoder: Encoder
    probe: Probe | None
    run_dir: Path
    data_args: argparse.Namespace  # args as the evaluation images read them (own_data: without --data/--root)
    figures: list[str] = field(default_factory=list)

    @property
    def seed(self) -> int:
        return int(self.args.seed)

    @property
    def batch_size(self) -> int:
        return int(self.args.batch_size)

    @property
    def image_size(self) -> int:
        return self.encoder.image_size

    @property
    def pool(self) -> str:
        return self.probe.meta.get("pool", "cls") if self.probe else "cls"

    @property
    def layer(self) -> int | None:
        return self.probe.meta.get("layer") if self.probe else None

    @property
    def num_classes(self) -> int:
        return int(self.probe.head.num_classes) if self.probe else 0

    def data_settings(self) -> dict[str, Any]:
        """The evaluation images: --data/--root/--split, defaulting to the probe's dataset and eval split."""
        if self.probe is not None:
            probe_data = dict(self.probe.config.get("data", {}))
            probe_data.setdefault("dataset", self.probe.meta.get("dataset"))
        else:  # no probe: the images the checkpoint was pretrained on
            pretrained = pretraining_data(self.encoder.checkpoint) or {}
            probe_data = {"dataset": pretrained.get("dataset"), "root": pretrained.get("root"),
                          "options": pretrained.get("options")}
        dataset = self.data_args.data or probe_data.get("dataset") or "shapetex"
        same = dataset == probe_data.get("dataset")

        split = self.data_args.split or (probe_data.get("eval_split") if same else None) or EVAL_SPLITS.get(dataset, "val")
        root = self.data_args.root if self.data_args.root is not None else (probe_data.get("root") if same else None)
        options = dict(probe_data.get("options") or {}) if same else {}
        if same and dataset == "shapetex" and probe_data.get("num_images") is not None:
            options["num_images"] = probe_data["num_images"]
        return {"dataset": dataset, "split": split, "root": root, "options": options,
                "num_images": self.data_args.num_images}

    def dataset(self, name: str | None = None, split: str | None = None, root: str | None = None,
                subset: int | None = None, **options: Any) -> Any:
        """A split at the encoder's input size; default: the evaluation images (see data_settings).

        `subset` (default --num-images for the evaluation images) keeps a seeded random subset, in order."""
        if name is None:
            s = self.data_settings()
            name, split, root, options, subset = s["dataset"], s["split"], s["root"], {**s["options"], **options}, \
                s["num_images"]
        ds = load_dataset(name, split or "val", root=root, image_size=self.image_size, **options)
        if self.probe is not None and name == self.data_settings()["dataset"] and ds.num_classes != self.num_classes:
            raise BlockMAEError(f"{name} {split} has {ds.num_classes} classes but the probe head has "
                                f"{self.num_classes}; pass a probe trained on {name}")
        return take_subset(ds, subset, self.seed)

    def batches(self, dataset: Any, desc: str) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(images float in [0, 1] at the encoder's size on the device, labels, dataset indices) batches."""
        n = len(dataset)
        if n == 0:
            raise BlockMAEError(f"dataset '{dataset.name}' is empty: nothing to evaluate")
        with tqdm(total=n, desc=desc, unit="img", unit_scale=True, leave=False,
                  disable=not sys.stderr.isatty()) as bar:
            for start in range(0, n, self.batch_size):
                index = torch.arange(start, min(start + self.batch_size, n))
                images = dataset.images[start:start + len(index)].to(self.device, non_blocking=True)
                yield to_unit(images, self.image_size), dataset.labels[index].to(self.device), index.to(self.device)
                bar.update(len(index))

    @torch.no_grad()
    def features_of(self, images: torch.Tensor) -> torch.Tensor:
        """Frozen features (B, D) of float images in [0, 1] (normalised here), float32."""
        return encode_batch(self.encoder.model, imagenet_normalise(images), self.pool, self.layer, self.autocast)

    @torch.no_grad()
    def scores_of(self, images: torch.Tensor) -> torch.Tensor:
        """Probe logits (B, C) of float images in [0, 1]."""
        if self.probe is None:
            raise BlockMAEError(f"internal: {self.args.command_name} has no probe")
        return self.probe.head(self.features_of(images))

    def scores(self, dataset: Any, transform: Transform | None = None, desc: str = "scores") -> torch.Tensor:
        """Probe logits (N, C) on the CPU of every image of `dataset`, each batch through `transform` first."""
        out = []
        for images, _, index in self.batches(dataset, desc):
            if transform is not None:
                images = transform(images, index)
            out.append(self.scores_of(images).float().cpu())
        return torch.cat(out)

    def features(self, dataset: Any, transform: Transform | None = None, desc: str = "features") -> torch.Tensor:
        """Frozen features (N, D) on the CPU, batched, optionally transformed first."""
        out = []
        for images, _, index in self.batches(dataset, desc):
            if transform is not None:
                images = transform(images, index)
            out.append(self.features_of(images).cpu())
        return torch.cat(out)

    def save_figure(self, stem: str, fig: Any, rows: Sequence[Mapping[str, Any]]) -> Path:
        """figures/<stem>.png (atomically, via the project's save_figure) and figures/<stem>.csv (`rows`)."""
        path = write_figure(self.run_dir / "figures", stem, fig, rows)
        self.figures.append(f"figures/{stem}.png")
        return path


def write_figure(folder: Path, stem: str, fig: Any, rows: Sequence[Mapping[str, Any]]) -> Path:
    """<folder>/<stem>.png (atomically) beside <folder>/<stem>.csv, the numbers drawn."""
    write_csv(folder / f"{stem}.csv", rows)
    return save_figure(fig, folder / f"{stem}.png", dpi=120, bbox_inches="tight")


def to_unit(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float [0, 1] at `size` (antialiased bilinear, the evaluation path's resize)."""
    x = images.float().div_(255.0)
    if tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True).clamp_(0, 1)
    return x


def imagenet_normalise(images: torch.Tensor) -> torch.Tensor:
    """Float [0, 1] images -> the encoder's input (ImageNet mean/std, as the data pipeline)."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
    return (images - mean) / std


def take_subset(dataset: Any, num_images: int | None, seed: int) -> Any:
    """A seeded class-balanced subset of `num_images` images (in dataset order), or the dataset itself."""
    if num_images is not None and num_images < 1:
        raise BlockMAEError(f"--num-images must be positive, got {num_images}")
    return subset(dataset, num_images, seed)


# -- running one diagnostic ------------------------------------------------------------------------


def checkpoint_stem(checkpoint: str) -> str:
    """A short file-name-safe name of a checkpoint: its run folder's name (or 'random')."""
    if checkpoint != RANDOM:
        parts = [p for p in Path(checkpoint).parts if p not in ("checkpoints", "last", "model.safetensors")]
        checkpoint = Path(parts[-1]).stem if parts else Path(checkpoint).stem
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", checkpoint)


def default_run_dir(args: argparse.Namespace, name: str) -> Path:
    checkpoint = args.checkpoint or (Path(args.probe).name if args.probe else "run")
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", args.name) if args.name else checkpoint_stem(checkpoint)
    return Path(args.output_root) / name / f"{stem}-{_dt.datetime.now():%Y%m%d-%H%M%S}"


def run_several(diagnostic: type[Diagnostic], args: argparse.Namespace, checkpoints: Sequence[str]) -> Path:
    """One run per checkpoint, as `<out>/<i>-<checkpoint>/` (each a full run with its registry row), then
    `diagnostic.compare` over them into `<out>/` (default `<output-root>/<diagnostic>/compare-<time>`)."""
    if args.probe:
        raise BlockMAEError("--probe belongs to one checkpoint's weights; with several --checkpoint each gets its own")
    out = Path(args.out) if args.out else (Path(args.output_root) / diagnostic.name
                                           / f"compare-{_dt.datetime.now():%Y%m%d-%H%M%S}")
    runs = []
    for i, checkpoint in enumerate(checkpoints):
        stem = checkpoint_stem(checkpoint)
        one = argparse.Namespace(**{**vars(args), "checkpoint": checkpoint, "out": str(out / f"{i}-{stem}"),
                                    "name": f"{args.name}-{stem}" if args.name else None})
        runs.append(run_diagnostic(diagnostic(), one))
    for line in diagnostic().compare(runs, out):
        print(line)
    print(f"comparison of {len(runs)} runs: {out}")
    return out


def run_diagnostic(diagnostic: Diagnostic, args: argparse.Namespace) -> tuple[str, Path, DiagnosticResult]:
    """Resolve encoder and probe, run `diagnostic.evaluate`, write results.json, record the run."""
    args.command_name = diagnostic.name
    run_dir = Path(args.out) if args.out else default_run_dir(args, diagnostic.name)
    claim_output_dir(run_dir, diagnostic.name)  # before any work: a probe trained first would be wasted
    if args.batch_size < 1:
        raise BlockMAEError(f"--batch-size must be positive, got {args.batch_size}")
    device = resolve_device(args.device)
    autocast = autocast_enabled(args.autocast, device)
    args.autocast = autocast
    data_args = argparse.Namespace(**{**vars(args), "data": None, "root": None, "split": None}) \
        if diagnostic.own_data else args
    resolved = diagnostic.resolve_model(args, device)
    if resolved is not None:
        encoder, probe = resolved
    elif diagnostic.needs_probe:
        encoder, probe = resolve_probe(data_args, device)
        print(probe.describe())
    else:
        encoder, probe = load_diagnostic_encoder(args, device), None
    diagnostic.check(args, encoder)
    registry = Registry(args.output_root)
    ctx = Context(args, device, autocast, encoder, probe, run_dir, data_args)
    common = {k: v for k, v in vars(args).items() if not k.startswith("_") and k != "command_name"
              and not callable(v)}
    parent = parent_run(registry, encoder.checkpoint)
    config = {"diagnostic": diagnostic.name, "args": common, "weights_hash": encoder.weights_hash,
              "checkpoint": encoder.checkpoint if encoder.checkpoint == RANDOM else canonical_spec(encoder.checkpoint),
              "probe_run": probe.run_id if probe else None, "data": ctx.data_settings(),
              "device": str(device), "autocast": autocast}
    lock = RunLock(run_dir).acquire()  # one writer per run dir, as pretraining
    if (run_dir / "results.json").exists():
        lock.release()
        raise BlockMAEError(f"{run_dir} already holds a finished diagnostic; pass another --out")
    with lock, registry.track(diagnostic.name, run_dir, config, parent=parent, name=args.name or run_dir.name) as run:
        result = diagnostic.evaluate(ctx)
        run.metrics.update(result.summary)
        probe_info = None if probe is None else {
            "run_id": probe.run_id, "run_dir": str(probe.run_dir), "origin": probe.origin,
            "dataset": probe.meta.get("dataset"), "top1": probe.metrics.get("top1"),
            "num_eval": probe.metrics.get("num_eval")}
        write_json_atomic(run_dir / "results.json", {
            "run_id": run.id, "diagnostic": diagnostic.name, "settings": {**config, **result.settings},
            "encoder": {"checkpoint": config["checkpoint"], "weights_hash": encoder.weights_hash,
                        "arch": encoder.arch, "parent": parent},
            "probe": probe_info, "levels": result.levels, "summary": result.summary, "figures": ctx.figures,
        }, default=str)
    for line in result.lines:
        print(line)
    print(f"run: {run_dir} (registry id {run.id}, kind {diagnostic.name})")
    return run.id, run_dir, result
