"""A diagnostic as a `blockmae eval NAME` command and its run: the common arguments every diagnostic takes,
:func:`command` (a module's ``add_arguments, run`` from its Diagnostic subclass), and :func:`run_diagnostic`:
the run dir, device and autocast, encoder and probe, the diagnostic, the registry row and results.json (see
diagnostics/plugin.py); :func:`run_several`: one run per checkpoint plus their comparison.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import re
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from blockmae.config import number
from blockmae.diagnostics.context import Context
from blockmae.diagnostics.plugin import Diagnostic, DiagnosticResult
from blockmae.diagnostics.probes import load_diagnostic_encoder, resolve_probe
from blockmae.lock import RunLock
from blockmae.errors import BlockMAEError
from blockmae.evaluation.features import resolve_device
from blockmae.fileio import claim_output_dir, write_json_atomic
from blockmae.models.factory import RANDOM, canonical_spec, checkpoint_stem, is_foreign
from blockmae.registry import Registry


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


def parent_run(registry: Any, checkpoint: str) -> str:
    """The id of the registered run whose directory holds `checkpoint`, else its resolved path ('random'; a
    foreign model's spec with its file made absolute)."""
    if checkpoint == RANDOM or is_foreign(checkpoint):
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
              "checkpoint": canonical_spec(encoder.checkpoint),
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
