"""Sweep specs (configs/ablations/*.yaml): parse, validate and expand into arms.

A spec is a base pretraining config plus overrides, and the values to vary: `grid` (cartesian
product), `zip` (lists walked together), `include` (extra arms) and `exclude` (arms dropped), each
arm repeated over `seeds`. Every arm's config is resolved through blockmae.config.load_config on the
engine's PretrainConfig, so a bad key or value is the usual one-line error, prefixed by the arm.

An arm's identity is the hash of its resolved *semantic* config: paths, run names, registry, logging
and checkpoint-frequency keys are left out (they change nothing the run learns); the seed is in.
Its name is made of the keys that vary across arms (`b4-r0.75`), its run dir adds the seed (`b4-r0.75/s1`).
"""

from __future__ import annotations

import copy
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from blockmae.config import load_config, to_dict
from blockmae.engine.config import PretrainConfig
from blockmae.errors import BlockMAEError
from blockmae.registry import config_hash, flatten

MILESTONE_MODES = ("snapshots", "separate")
SPEC_KEYS = ("name", "title", "notes", "base", "overrides", "grid", "zip", "include", "exclude", "seeds", "baseline",
             "milestones", "milestone_mode", "evaluations", "probe", "names", "slurm")
# Keys that do not change what a run learns: excluded from the arm hash.
NON_SEMANTIC_KEYS = (
    "run.dir", "run.output_root", "run.name", "run.registry", "run.log_every", "run.ckpt_every_minutes",
    "run.ckpt_every_steps", "run.resume", "run.recon_images", "data.root", "data.workers", "train.device",
    "train.compile", "train.cpu_threads",
)
# Short labels of the usual ablated keys in arm names; "" shows the value alone (`rope`, `free`).
DEFAULT_ALIASES = {
    "mask.block": "b", "mask.ratio": "r", "mask.align": "", "mask.family": "", "model.patch_size": "p",
    "model.decoder_depth": "dec", "model.pos_embed": "", "data.image_size": "px", "model.preset": "",
    "train.epochs": "e", "data.dataset": "",
}
HASH_LENGTH = 12


@dataclass
class EvaluationSpec:
    """One evaluation of every arm at every milestone; `name` picks the callable (sweep.evaluations)."""

    name: str
    label: str  # its name in sweep.json and run dirs (default: `name`)
    dataset: str | None = None
    overrides: list[str] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)  # the remaining keys, read by the evaluation

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "label": self.label, "dataset": self.dataset, "overrides": list(self.overrides),
                "options": dict(self.options)}


@dataclass
class Arm:
    """One (variant, seed) of a sweep: its resolved pretraining runs (one, or one per length)."""

    name: str
    seed: int
    values: dict[str, Any]
    hash: str
    configs: dict[int, PretrainConfig]  # run length (epochs) -> config; paths are set by the runner

    @property
    def run_dir(self) -> str:
        return f"{self.name}/s{self.seed}"

    @property
    def key(self) -> str:
        return self.run_dir

    def semantic_config(self) -> dict[str, Any]:
        """The semantic keys of its run (of each run, by length, in milestone_mode separate)."""
        if len(self.configs) == 1:
            return semantic(next(iter(self.configs.values())))
        return {f"epochs_{length}": semantic(cfg) for length, cfg in self.configs.items()}


@dataclass
class SweepSpec:
    path: str
    name: str
    title: str | None
    notes: str | None
    base: str
    overrides: list[str]
    grid: dict[str, list[Any]]
    zip: dict[str, list[Any]]
    include: list[dict[str, Any]]
    exclude: list[dict[str, Any]]
    seeds: list[int]
    baseline: str | dict[str, Any] | None
    milestones: list[int] | None
    milestone_mode: str
    evaluations: list[EvaluationSpec]
    probe_config: str | None
    probe_overrides: list[str]
    aliases: dict[str, str]
    slurm: dict[str, Any]
    _arms: list[Arm] | None = None

    # ---- expansion -------------------------------------------------------------------------------
    def variants(self) -> list[dict[str, Any]]:
        """The arms' ablated values (before seeds), in spec order."""
        axes: list[list[dict[str, Any]]] = [[{key: v} for v in values] for key, values in self.grid.items()]
        if self.zip:
            lengths = {key: len(v) for key, v in self.zip.items()}
            axes.append([{key: values[i] for key, values in self.zip.items()} for i in range(next(iter(lengths.values())))])
        combos = [dict(kv for part in combo for kv in part.items()) for combo in itertools.product(*axes)] if axes else []
        kept = [c for c in combos if not any(_matches(c, ex) for ex in self.exclude)]
        if combos and not kept and not self.include:
            raise BlockMAEError(f"{self.path}: exclude removes every arm of the grid ({len(combos)}); nothing is "
                                f"left to run (drop an exclude entry, or add arms with include:)")
        combos = kept
        for extra in self.include:
            if extra not in combos:
                combos.append(dict(extra))
        return combos or [{}]

    def arms(self) -> list[Arm]:
        if self._arms is None:
            self._arms = self._expand()
        return self._arms

    def ablated(self) -> list[str]:
        """Dotted keys whose value differs between arms (seed excluded), in first-seen order."""
        arms = self.arms()
        keys: list[str] = []
        for arm in arms:
            keys += [k for k in arm.values if k not in keys]
        return keys

    def _expand(self) -> list[Arm]:
        variants = self.variants()
        keys: list[str] = []
        for variant in variants:
            keys += [k for k in variant if k not in keys]
        base = self._resolve([], "the base config")
        base_flat = flatten(to_dict(base))
        for key in keys:
            if key not in base_flat:
                raise BlockMAEError(f"{self.path}: '{key}' is not a pretraining config key (e.g. mask.block, "
                                    f"mask.ratio, model.patch_size, model.decoder_depth, model.pos_embed)")
        full = [{k: v.get(k, base_flat[k]) for k in keys} for v in variants]
        varying = [k for k in keys if len({json.dumps(f[k], sort_keys=True) for f in full}) > 1]
        arms: list[Arm] = []
        seen: dict[str, str] = {}
        for values in full:
            shown = {k: values[k] for k in varying}
            name = self.arm_name(shown)
            if name in seen:
                raise BlockMAEError(f"{self.path}: two arms are both named '{name}' ({seen[name]} and {shown}); "
                                    f"give the keys distinct labels under `names:`")
            seen[name] = json.dumps(shown, sort_keys=True)
            for seed in self.seeds:
                configs = self._arm_configs(values, seed, f"arm {name}/s{seed}")
                digest = config_hash({"mode": self.milestone_mode,
                                      "runs": {str(k): semantic(c) for k, c in configs.items()}})[:HASH_LENGTH]
                arms.append(Arm(name, seed, shown, digest, configs))
        return arms

    def _arm_configs(self, values: Mapping[str, Any], seed: int, label: str) -> dict[int, PretrainConfig]:
        dotlist = [f"{k}={json.dumps(v)}" for k, v in values.items()] + [f"run.seed={seed}"]
        probe = self._resolve(dotlist, label)
        if self.milestones is None:
            lengths = [probe.train.epochs]
        else:
            lengths = sorted(self.milestones)
        if self.milestone_mode == "snapshots":
            final = max(lengths)
            return {final: self._resolve(dotlist + [f"train.epochs={final}", f"run.milestones={json.dumps(lengths)}"],
                                         label)}
        return {m: self._resolve(dotlist + [f"train.epochs={m}", f"run.milestones=[{m}]"], label) for m in lengths}

    def _resolve(self, dotlist: list[str], label: str) -> PretrainConfig:
        try:
            return load_config(PretrainConfig, self.base, list(self.overrides) + dotlist)
        except BlockMAEError as err:
            raise BlockMAEError(f"{self.path}: {label}: {err}") from None

    def arm_name(self, values: Mapping[str, Any]) -> str:
        if not values:
            return "base"
        parts = []
        for key, value in values.items():
            alias = self.aliases.get(key, DEFAULT_ALIASES.get(key, key.rsplit(".", 1)[-1]))
            parts.append(f"{alias}{_fmt(value)}")
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", "-".join(parts))

    def milestones_of(self, arm: Arm) -> list[int]:
        """Epochs whose checkpoint gets the evaluations."""
        if self.milestone_mode == "separate":
            return sorted(arm.configs)
        (cfg,) = arm.configs.values()
        return sorted(set(cfg.run.milestones) | {cfg.train.epochs})

    def baseline_arm(self) -> str | None:
        if self.baseline is None:
            return None
        names = list(dict.fromkeys(a.name for a in self.arms()))
        if isinstance(self.baseline, str):
            if self.baseline not in names:
                raise BlockMAEError(f"{self.path}: baseline '{self.baseline}' is not an arm; arms: {', '.join(names)}")
            return self.baseline
        hits = list(dict.fromkeys(a.name for a in self.arms() if _matches(_with_base(a, self), self.baseline)))
        if len(hits) != 1:
            raise BlockMAEError(f"{self.path}: baseline {self.baseline} matches {len(hits)} arms "
                                f"({', '.join(hits) or 'none'}); it must name exactly one of {', '.join(names)}")
        return hits[0]


def _with_base(arm: Arm, spec: SweepSpec) -> dict[str, Any]:
    """The arm's values of every config key (so that a baseline may name a key that does not vary)."""
    cfg = next(iter(arm.configs.values()))
    return flatten(to_dict(cfg))


def _matches(values: Mapping[str, Any], pattern: Mapping[str, Any]) -> bool:
    return all(k in values and json.dumps(values[k]) == json.dumps(v) for k, v in pattern.items())


def _fmt(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "x".join(_fmt(v) for v in value)
    return str(value)


def pretrain_config(config: Mapping[str, Any]) -> PretrainConfig:
    """A PretrainConfig from its dict (a task file, a registry row); schema defaults fill what is missing."""
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(PretrainConfig), dict(config)))
    except OmegaConfBaseException as err:
        raise BlockMAEError(f"not a pretraining config: {str(err).splitlines()[0]}") from None


def semantic(cfg: PretrainConfig) -> dict[str, Any]:
    """The config keys that decide what a run learns (NON_SEMANTIC_KEYS removed), flattened."""
    flat = flatten(to_dict(cfg))
    return {k: v for k, v in sorted(flat.items()) if k not in NON_SEMANTIC_KEYS}


# ---- parsing ---------------------------------------------------------------------------------------

def parse_spec(raw: Mapping[str, Any], source: str) -> SweepSpec:
    unknown = [k for k in raw if k not in SPEC_KEYS]
    if unknown:
        raise BlockMAEError(f"{source}: unknown spec key '{unknown[0]}'; valid keys: {', '.join(SPEC_KEYS)}")
    if "base" not in raw:
        raise BlockMAEError(f"{source}: missing `base` (the pretraining config, e.g. base: configs/pretrain_block.yaml)")
    grid = _axis_block(raw.get("grid"), "grid", source)
    zipped = _axis_block(raw.get("zip"), "zip", source)
    if zipped and len({len(v) for v in zipped.values()}) != 1:
        raise BlockMAEError(f"{source}: zip lists must have equal lengths, got "
                            + ", ".join(f"{k}: {len(v)}" for k, v in zipped.items()))
    overlap = set(grid) & set(zipped)
    if overlap:
        raise BlockMAEError(f"{source}: '{sorted(overlap)[0]}' is in both grid and zip; put it in one")
    seeds = raw.get("seeds", [0])
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = [seeds]
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds) \
            or len(set(seeds)) != len(seeds):
        raise BlockMAEError(f"{source}: seeds must be a list of distinct integers, got {seeds!r}")
    mode = raw.get("milestone_mode")
    milestones = raw.get("milestones")
    if milestones is not None:
        if not isinstance(milestones, list) or not milestones or not all(isinstance(m, int) and m >= 1 for m in milestones):
            raise BlockMAEError(f"{source}: milestones must be a list of epochs >= 1, got {milestones!r}")
        if mode is None:
            # No default on purpose: the two modes answer different questions (docs/ablations.md).
            raise BlockMAEError(f"{source}: milestones need an explicit milestone_mode: snapshots (evaluate "
                                f"snapshots of one run of {max(milestones)} epochs) or separate (one run per length)")
    mode = mode or "snapshots"
    if mode not in MILESTONE_MODES:
        raise BlockMAEError(f"{source}: milestone_mode must be one of {', '.join(MILESTONE_MODES)}, got {mode!r}")
    probe = raw.get("probe") or {}
    if not isinstance(probe, dict) or set(probe) - {"config", "overrides"}:
        raise BlockMAEError(f"{source}: probe must be a mapping with `config` (a probe YAML) and `overrides`")
    aliases = raw.get("names") or {}
    if not isinstance(aliases, dict) or not all(isinstance(v, str) for v in aliases.values()):
        raise BlockMAEError(f"{source}: names must map dotted keys to short labels, e.g. names: {{mask.block: b}}")
    slurm = raw.get("slurm") or {}
    if not isinstance(slurm, dict):
        raise BlockMAEError(f"{source}: slurm must be a mapping of executor settings (partition, timeout_min, ...)")
    baseline = raw.get("baseline")
    if baseline is not None and not isinstance(baseline, (str, dict)):
        raise BlockMAEError(f"{source}: baseline is an arm name (b1) or the values of one ({{mask.block: 1}})")
    return SweepSpec(
        path=source, name=str(raw.get("name") or Path(source).stem), title=raw.get("title"), notes=raw.get("notes"),
        base=str(raw["base"]), overrides=_dotlist(raw.get("overrides"), "overrides", source), grid=grid, zip=zipped,
        include=_value_maps(raw.get("include"), "include", source), exclude=_value_maps(raw.get("exclude"), "exclude", source),
        seeds=list(seeds), baseline=baseline, milestones=milestones, milestone_mode=mode,
        evaluations=_evaluations(raw.get("evaluations"), source), probe_config=probe.get("config"),
        probe_overrides=_dotlist(probe.get("overrides"), "probe.overrides", source), aliases=dict(aliases),
        slurm=dict(slurm),
    )


def _axis_block(block: Any, what: str, source: str) -> dict[str, list[Any]]:
    if block is None:
        return {}
    if not isinstance(block, dict) or not all(isinstance(v, list) and v for v in block.values()):
        raise BlockMAEError(f"{source}: {what} maps dotted config keys to non-empty lists, e.g. {what}: {{mask.block: [1, 2, 4]}}")
    for key, values in block.items():
        if len({json.dumps(v, sort_keys=True) for v in values}) != len(values):
            raise BlockMAEError(f"{source}: {what}.{key} repeats a value: {values}")
    return {str(k): list(v) for k, v in block.items()}


def _value_maps(block: Any, what: str, source: str) -> list[dict[str, Any]]:
    if block is None:
        return []
    if not isinstance(block, list) or not all(isinstance(x, dict) and x for x in block):
        raise BlockMAEError(f"{source}: {what} is a list of mappings of dotted keys to values, e.g. "
                            f"{what}: [{{mask.block: 4, mask.ratio: 0.85}}]")
    return [dict(x) for x in block]


def _dotlist(block: Any, what: str, source: str) -> list[str]:
    if block is None:
        return []
    if isinstance(block, dict):
        return [f"{k}={json.dumps(v)}" for k, v in flatten(block).items()]
    if isinstance(block, list) and all(isinstance(x, str) and "=" in x for x in block):
        return list(block)
    raise BlockMAEError(f"{source}: {what} is a mapping of dotted keys to values or a list of key=value strings")


def _evaluations(block: Any, source: str) -> list[EvaluationSpec]:
    if block is None:
        return []
    if not isinstance(block, list):
        raise BlockMAEError(f"{source}: evaluations is a list, e.g. [{{name: linear, dataset: shapetex}}, {{name: knn}}]")
    out: list[EvaluationSpec] = []
    for entry in block:
        if isinstance(entry, str):
            entry = {"name": entry}
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise BlockMAEError(f"{source}: each evaluation needs a name (linear, knn, shape_bias, ...), got {entry!r}")
        entry = copy.deepcopy(entry)
        name = entry.pop("name")
        label = str(entry.pop("label", name))
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", label):
            raise BlockMAEError(f"{source}: evaluation label '{label}' may only use letters, digits, _ . -")
        dataset = entry.pop("dataset", None)
        overrides = _dotlist(entry.pop("overrides", None), f"evaluation {label} overrides", source)
        out.append(EvaluationSpec(name, label, dataset, overrides, entry))
    labels = [e.label for e in out]
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        raise BlockMAEError(f"{source}: two evaluations are both labelled '{dupes[0]}'; give one a `label:`")
    return out
