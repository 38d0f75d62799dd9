"""Evaluations by name: what a sweep runs on every arm at every milestone.

An evaluation is a callable `run(ctx) -> EvalOutcome` registered under a name with
:func:`register_evaluation`, plus an optional `check(spec, evaluation)` run at plan time (bad
datasets or overrides fail before anything trains). `linear`, `knn` and `shape_bias` are built in;
every diagnostic of `blockmae.diagnostics` (`blockmae eval NAME`: lowpass, highpass, stylized, dtd,
attention, and any added later) is an evaluation under its command name, with no code here: the spec's
options become its command-line options (`sigmas: [0, 1]` -> `--sigmas 0 1`) and it reads the linear
probe evaluated before it at the same milestone when there is one.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from blockmae.config import load_config
from blockmae.diagnostics import by_name
from blockmae.diagnostics.by_name import diagnostic_modules
from blockmae.diagnostics.runner import run_diagnostic
from blockmae.errors import BlockMAEError
from blockmae.evaluation.cli_probe import run_probe
from blockmae.evaluation.cli_shape_bias import run_shape_bias
from blockmae.evaluation.config import ProbeConfig
from blockmae.models.factory import load_encoder
from blockmae.sweep.spec import EvaluationSpec, SweepSpec

DEFAULT_PROBE_CONFIG = "linear_probe"  # a shipped config (blockmae.config.resolve_config_path)
@dataclass
class EvalOutcome:
    run_id: str | None
    run_dir: Path
    metrics: dict[str, Any]


@dataclass
class EvalContext:
    """What an evaluation of one arm at one milestone gets."""

    out: Path  # the sweep folder: output root of every run (its registry.sqlite)
    arm: str
    seed: int
    milestone: int
    checkpoint: Path  # the milestone's checkpoint dir
    run_dir: Path  # where this evaluation writes (<out>/<arm>/s<seed>/eval/<label>-e<milestone>)
    evaluation: EvaluationSpec
    run_name: str  # registry name of the evaluation run
    probe_config: str | None
    probe_overrides: list[str]
    earlier: list[EvaluationSpec] = field(default_factory=list)  # the spec's evaluations listed before this one
    done: dict[str, EvalOutcome] = field(default_factory=dict)  # earlier evaluations of this milestone, by label
    cache: dict[str, Any] = field(default_factory=dict)  # shared between the evaluations of a milestone

    def encoder(self) -> Any:
        """The milestone's frozen encoder, loaded once for all its evaluations."""
        if "encoder" not in self.cache:
            self.cache["encoder"] = load_encoder(self.checkpoint, seed=self.seed)
        return self.cache["encoder"]


@dataclass
class Evaluation:
    name: str
    run: Callable[[EvalContext], EvalOutcome]
    check: Callable[[SweepSpec, EvaluationSpec], None] | None = None


EVALUATIONS: dict[str, Evaluation] = {}


def register_evaluation(name: str, run: Callable[[EvalContext], EvalOutcome],
                        check: Callable[[SweepSpec, EvaluationSpec], None] | None = None) -> None:
    EVALUATIONS[name] = Evaluation(name, run, check)


def get_evaluation(name: str) -> Evaluation:
    if name in EVALUATIONS:
        return EVALUATIONS[name]
    if name in diagnostic_modules():
        register_evaluation(name, _run_diagnostic, _diagnostic_check)
        return EVALUATIONS[name]
    raise BlockMAEError(f"unknown evaluation '{name}'; known: {', '.join(available())}")


def available() -> list[str]:
    return sorted(set(EVALUATIONS) | set(diagnostic_modules()))


def check_evaluations(spec: SweepSpec) -> None:
    """Plan-time checks: every name is known, its settings resolve, what it reads comes first."""
    seen: list[EvaluationSpec] = []
    for ev in spec.evaluations:
        try:
            evaluation = get_evaluation(ev.name)
            if evaluation.check is not None:
                evaluation.check(spec, ev)
            if ev.name == "shape_bias":
                _head_source(ev, seen)
        except BlockMAEError as err:
            raise BlockMAEError(f"{spec.path}: evaluation '{ev.label}': {err}") from None
        seen.append(ev)


# ---- linear and k-NN probes ------------------------------------------------------------------------

PROBE_KINDS = {"linear": "linear", "knn": "knn"}


def probe_config(probe_path: str | None, probe_overrides: list[str], ev: EvaluationSpec, checkpoint: str,
                 out: Path, run_dir: Path, name: str, seed: int) -> Any:
    """The probe's ProbeConfig: the spec's probe YAML and overrides, the evaluation's, then this arm's."""
    unknown = set(ev.options) - {"probe_config"}
    if unknown:
        raise BlockMAEError(f"unknown setting '{sorted(unknown)[0]}' for a probe; use dataset, overrides, probe_config")
    overrides = list(probe_overrides) + (["data.dataset=" + ev.dataset] if ev.dataset else []) + list(ev.overrides)
    cfg = load_config(ProbeConfig, ev.options.get("probe_config") or probe_path or DEFAULT_PROBE_CONFIG, overrides)
    cfg.checkpoint, cfg.kind, cfg.output_root = checkpoint, PROBE_KINDS[ev.name], str(out)
    cfg.run_dir, cfg.name = str(run_dir), name
    cfg.linear.seed = seed
    return cfg


def _probe_check(spec: SweepSpec, ev: EvaluationSpec) -> None:
    cfg = probe_config(spec.probe_config, spec.probe_overrides, ev, "random", Path("."), Path("."), "check", 0)
    cfg.validate()


def _run_probe(ctx: EvalContext) -> EvalOutcome:
    cfg = probe_config(ctx.probe_config, ctx.probe_overrides, ctx.evaluation, str(ctx.checkpoint), ctx.out,
                       ctx.run_dir, ctx.run_name, ctx.seed)
    outcome = run_probe(cfg, encoder=ctx.encoder(), verbose=False)
    metrics = dict(outcome.metrics)
    if cfg.kind == "knn":  # the sweep's metric names are per evaluation: knn.top1, not knn.knn_top1
        metrics = {k.removeprefix("knn_"): v for k, v in metrics.items()}
    metrics.setdefault("n", metrics.get("num_eval"))
    return EvalOutcome(outcome.run_id, outcome.run_dir, scalar_metrics(metrics))


# ---- shape bias ------------------------------------------------------------------------------------

def _head_source(ev: EvaluationSpec, earlier: list[EvaluationSpec]) -> str:
    """The label of the linear evaluation whose head the shape bias reads (option `probe`)."""
    linear = [e.label for e in earlier if e.name == "linear"]
    wanted = ev.options.get("probe")
    if wanted is None:
        if not linear:
            raise BlockMAEError("shape_bias reads a linear probe head: list a `linear` evaluation before it")
        return linear[0]
    if wanted not in linear:
        raise BlockMAEError(f"probe: '{wanted}' is not a linear evaluation listed before it "
                            f"({', '.join(linear) or 'none'})")
    return str(wanted)


def _shape_bias_check(spec: SweepSpec, ev: EvaluationSpec) -> None:
    unknown = set(ev.options) - {"probe", "data", "root", "num_images", "batch_size"}
    if unknown or ev.overrides:
        raise BlockMAEError(f"unknown setting '{sorted(unknown)[0] if unknown else 'overrides'}' for shape_bias; "
                            f"use probe, data (shapetex | cue-conflict), root, num_images, batch_size")
    data = ev.options.get("data", ev.dataset or "shapetex")
    if data not in ("shapetex", "cue-conflict"):
        raise BlockMAEError(f"data must be shapetex or cue-conflict, not '{data}'")


def _run_shape_bias(ctx: EvalContext) -> EvalOutcome:
    ev = ctx.evaluation
    source = _head_source(ev, ctx.earlier)
    if source not in ctx.done:
        raise BlockMAEError(f"shape_bias at epoch {ctx.milestone}: the linear probe '{source}' did not complete")
    head = ctx.done[source].run_dir / "head.safetensors"
    outcome = run_shape_bias(head, ev.options.get("data", ev.dataset or "shapetex"), root=ev.options.get("root"),
                             output_root=ctx.out, name=ctx.run_name, num_images=ev.options.get("num_images"),
                             batch_size=int(ev.options.get("batch_size", 256)), seed=ctx.seed, verbose=False,
                             encoder=ctx.encoder())
    metrics = dict(outcome.metrics)
    metrics.setdefault("n", metrics.get("n_images"))
    return EvalOutcome(outcome.run_id, outcome.run_dir, scalar_metrics(metrics))


# ---- diagnostics (blockmae eval NAME) ------------------------------------------------------------------

def diagnostic_arguments(name: str, ev: EvaluationSpec, extra: list[str]) -> argparse.Namespace:
    """The diagnostic's parsed command line: `extra` (checkpoint, outputs, probe) plus the spec's options."""
    if ev.overrides:
        raise BlockMAEError(f"a diagnostic takes options, not overrides (got {ev.overrides[0]!r})")
    return by_name.diagnostic_arguments(name, ev.options, [*extra, *(["--data", ev.dataset] if ev.dataset else [])])


def _diagnostic_check(spec: SweepSpec, ev: EvaluationSpec) -> None:
    diagnostic_arguments(ev.name, ev, ["--checkpoint", "random"])


def _run_diagnostic(ctx: EvalContext) -> EvalOutcome:
    extra = ["--checkpoint", str(ctx.checkpoint), "--out", str(ctx.run_dir), "--output-root", str(ctx.out),
             "--name", ctx.run_name, "--seed", str(ctx.seed)]
    linear = [e.label for e in ctx.earlier if e.name == "linear" and e.label in ctx.done]
    if linear and by_name.diagnostic_class(ctx.evaluation.name).needs_probe:
        extra += ["--probe", str(ctx.done[linear[0]].run_dir)]
    args = diagnostic_arguments(ctx.evaluation.name, ctx.evaluation, extra)
    run_id, run_dir, result = run_diagnostic(by_name.diagnostic_class(ctx.evaluation.name)(), args)
    return EvalOutcome(run_id, run_dir, scalar_metrics(result.summary))


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """The numbers of a result (lists and nested tables stay in the evaluation's own results.json)."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


register_evaluation("linear", _run_probe, _probe_check)
register_evaluation("knn", _run_probe, _probe_check)
register_evaluation("shape_bias", _run_shape_bias, _shape_bias_check)

