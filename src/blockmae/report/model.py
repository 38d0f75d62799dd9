"""What a report is about: a Study of arms, each run with several seeds, each seed evaluated at milestones.

A study is read, never computed: from a sweep's `sweep.json` (the contract with `blockmae sweep`,
docs/report.md) or, for a folder without one, from its experiment registry alone (pretraining runs grouped
by their settings less the seed, evaluations attached to the pretraining run that their parent checkpoint belongs
to). Metric keys are `<evaluation>.<metric>` with the evaluation's own registry metric names, plus
`pretrain.loss` (the last epoch's loss in metrics.jsonl); nothing here knows a dataset.
"""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from blockmae.engine.config import FREE_KEYS
from blockmae.engine.logs import read_metrics
from blockmae.errors import BlockMAEError
from blockmae.registry import DB_NAME, Registry, config_hash, flatten

SWEEP_FILE = "sweep.json"
SWEEP_SCHEMA = 1
PRETRAIN_LOSS = "pretrain.loss"
# Metric names that are not results: counts, bookkeeping and the bounds of another metric's interval.
_NOT_A_RESULT = re.compile(r"^(n|num_.*|seed|epoch|step|.*_(low|high|lo|hi|ci_low|ci_high)|.*(seconds|_time|_s))$")
_INTERVAL_SUFFIXES = (("_low", "_high"), ("_ci_low", "_ci_high"), ("_lo", "_hi"))
# Config keys that never describe an arm (where a run wrote, how it was named or scheduled).
_NON_SEMANTIC = re.compile(r"(^run\.|(^|\.)(dir|root|output_root|path|name|workers|device|seed)$)")


def is_result_metric(name: str, value: Any) -> bool:
    """A report metric is a float result (not a count, not an interval bound)."""
    return isinstance(value, float) and not isinstance(value, bool) and math.isfinite(value) \
        and not _NOT_A_RESULT.match(name)


@dataclass
class Curve:
    """One diagnostic curve (docs/report.md): y against x, with an optional 95% band lo..hi."""

    x: list[float]
    y: list[float]
    lo: list[float] | None = None
    hi: list[float] | None = None
    x_label: str = "x"
    y_label: str = "y"

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Curve":
        x, y = [float(v) for v in data["x"]], [float(v) for v in data["y"]]
        if len(x) != len(y):
            raise ValueError(f"curve x and y have different lengths ({len(x)} vs {len(y)})")
        band = {k: [float(v) for v in data[k]] if data.get(k) is not None else None for k in ("lo", "hi")}
        return cls(x, y, band["lo"], band["hi"], str(data.get("x_label", "x")), str(data.get("y_label", "y")))


_Y_COLUMNS = ("accuracy", "acc", "top1", "y", "value")
_LO_COLUMNS = ("lo", "low", "ci_low")
_HI_COLUMNS = ("hi", "high", "ci_high")


def curve_from_rows(rows: Sequence[Mapping[str, Any]]) -> Curve | None:
    """A curve from table rows (a figure's CSV, or a `levels` entry of results.json): x is the `level`
    column (else the first), y the `accuracy`/`acc`/`top1`/`y`/`value` column (else the first other numeric
    one), the band from `<y>_low`/`lo`/`low`/`ci_low` and `<y>_high`/`hi`/`high`/`ci_high`. Rows whose x is
    not finite (a high-pass 'inf' = the clean image) are left out. None without numeric x and y."""
    if not rows:
        return None
    columns = list(rows[0])

    def numeric(col: str | None) -> list[float] | None:
        try:
            return [float(r[col]) for r in rows] if col is not None else None
        except (TypeError, ValueError, KeyError):
            return None

    x_col = "level" if "level" in columns else columns[0]
    y_col = next((c for c in _Y_COLUMNS if c in columns), None) or next(
        (c for c in columns if c != x_col and not c.endswith(("_low", "_high")) and c not in _LO_COLUMNS + _HI_COLUMNS
         and numeric(c) is not None), None)
    x, y = numeric(x_col), numeric(y_col)
    if x is None or y is None:
        return None
    lo = next((numeric(c) for c in (f"{y_col}_low", *_LO_COLUMNS) if c in columns), None)
    hi = next((numeric(c) for c in (f"{y_col}_high", *_HI_COLUMNS) if c in columns), None)
    keep = [i for i, v in enumerate(x) if math.isfinite(v)]
    if not keep:
        return None

    def pick(values: list[float] | None) -> list[float] | None:
        return None if values is None else [values[i] for i in keep]

    return Curve(pick(x), pick(y), pick(lo), pick(hi), x_col, y_col)  # type: ignore[arg-type]


def read_curve_csv(path: Path) -> Curve | None:
    """A curve from a figure's CSV (see :func:`curve_from_rows`)."""
    with open(path, newline="") as fh:
        return curve_from_rows(list(csv.DictReader(fh)))


@dataclass
class EvalResult:
    """One evaluation of one seed's checkpoint at one milestone."""

    name: str
    milestone: int | None
    status: str
    run_id: str | None
    run_dir: Path | None
    metrics: dict[str, Any]

    def interval(self, metric: str) -> tuple[float, float] | None:
        """The evaluation's own 95% interval of `metric` (e.g. shape_bias_low/high), if it stored one."""
        for low, high in _INTERVAL_SUFFIXES:
            lo, hi = self.metrics.get(metric + low), self.metrics.get(metric + high)
            if isinstance(lo, (int, float)) and isinstance(hi, (int, float)):
                return float(lo), float(hi)
        return None

    @cached_property
    def curves(self) -> dict[str, Curve]:
        """Curves of this evaluation: `curves` in results.json, then its `levels` (curve name -> rows), then
        every `*.csv` in its run dir and its figures/ (docs/report.md)."""
        out: dict[str, Curve] = {}
        if self.run_dir is None or not self.run_dir.is_dir():
            return out
        results = self.run_dir / "results.json"
        if results.is_file():
            try:
                data = json.loads(results.read_text())
                for name, curve in (data.get("curves") or {}).items():
                    out[str(name)] = Curve.from_json(curve)
                for name, rows in (data.get("levels") or {}).items():
                    curve = curve_from_rows(rows) if str(name) not in out else None
                    if curve is not None:
                        out[str(name)] = curve
            except (ValueError, KeyError, TypeError, AttributeError) as err:
                raise BlockMAEError(f"{results}: malformed `curves` or `levels` entry ({err}); see docs/report.md") from err
        for path in sorted([*self.run_dir.glob("*.csv"), *self.run_dir.glob("figures/*.csv")]):
            if path.stem not in out and path.stem != "predictions":
                curve = read_curve_csv(path)
                if curve is not None:
                    out[path.stem] = curve
        return out

    def per_image(self, metric: str) -> dict[int, bool] | None:
        """Image index -> correct for `metric`, from predictions.json / predictions.csv in the run dir, if
        saved. The file's correctness is that of its `metric` entry (JSON), default `top1`; a probe's own
        predictions.json (labels and per-probe classes) gives `top1` (linear, else k-NN) and `knn_top1`."""
        return (self._predictions or {}).get(metric)

    @cached_property
    def _predictions(self) -> dict[str, dict[int, bool]] | None:
        if self.run_dir is None:
            return None
        path_json, path_csv = self.run_dir / "predictions.json", self.run_dir / "predictions.csv"
        if path_json.is_file():
            data = json.loads(path_json.read_text())
            if isinstance(data, Mapping) and "labels" in data:
                return _probe_correctness(data)
            if isinstance(data, Mapping):
                metric = str(data.get("metric", "top1"))
                correct = list(data["correct"])
                index = list(data.get("index", range(len(correct))))
                return {metric: {int(i): bool(c) for i, c in zip(index, correct)}}
            return {"top1": {int(r.get("index", k)): bool(r["correct"]) for k, r in enumerate(data)}}
        if path_csv.is_file():
            with open(path_csv, newline="") as fh:
                rows = list(csv.DictReader(fh))
            return {"top1": {int(r.get("index", k)): r["correct"].strip().lower() in ("1", "true", "yes")
                             for k, r in enumerate(rows)}}
        return None


def _probe_correctness(data: Mapping[str, Any]) -> dict[str, dict[int, bool]]:
    """Per-image correctness from `blockmae probe`'s predictions.json: `linear` scores its `top1`, `knn` its
    `knn_top1`, and `top1` too when there is no linear probe (a sweep's knn evaluation calls it top1)."""
    labels = list(data["labels"])
    correct = {probe: {i: p == y for i, (p, y) in enumerate(zip(data[probe], labels))}
               for probe in ("linear", "knn") if probe in data}
    out = {"knn_top1": correct["knn"]} if "knn" in correct else {}
    if "linear" in correct or "knn" in correct:
        out["top1"] = correct.get("linear", correct.get("knn"))
    return out


@dataclass
class SeedRun:
    """One seed of an arm: its pretraining run directory and its evaluations."""

    seed: int
    run_dir: Path | None
    status: str
    hash: str | None = None
    pretrain_run_id: str | None = None
    evaluations: list[EvalResult] = field(default_factory=list)

    def evaluation(self, name: str, milestone: int | None) -> EvalResult | None:
        """The evaluation `name` at `milestone`; an encoder with no pretraining (no milestones) answers for
        every milestone with its one evaluation."""
        found = [e for e in self.evaluations if e.name == name and e.milestone == milestone]
        if not found and self.run_dir is None:
            found = [e for e in self.evaluations if e.name == name and e.milestone is None]
        completed = [e for e in found if e.status == "completed"]
        return (completed or found or [None])[-1]

    @cached_property
    def records(self) -> list[dict[str, Any]]:
        """The pretraining's metrics.jsonl records (none when it has no run dir or log)."""
        if self.run_dir is None:
            return []

        return read_metrics(self.run_dir)

    def final_loss(self) -> float | None:
        epochs = [r for r in self.records if r.get("kind") == "epoch" and isinstance(r.get("loss"), float)]
        return float(epochs[-1]["loss"]) if epochs else None

    def loss_curve(self) -> tuple[list[float], list[float]]:
        """(epoch, loss) at every logged step (epoch records where no step was logged)."""
        steps = [r for r in self.records if r.get("kind") == "step" and "loss" in r and "epoch" in r]
        steps = steps or [r for r in self.records if r.get("kind") == "epoch" and "loss" in r and "epoch" in r]
        return [float(r["epoch"]) for r in steps], [float(r["loss"]) for r in steps]

    def figures(self) -> list[Path]:
        return sorted((self.run_dir / "figures").glob("*.png")) if self.run_dir else []

    def env(self) -> dict[str, Any]:
        path = self.run_dir / "env.json" if self.run_dir else None
        if path is None or not path.is_file():
            return {}
        try:
            return json.loads(path.read_text())
        except ValueError:
            return {}

    def config_text(self) -> str | None:
        path = self.run_dir / "config.yaml" if self.run_dir else None
        return path.read_text() if path is not None and path.is_file() else None


@dataclass
class Arm:
    name: str
    values: dict[str, Any]
    runs: dict[int, SeedRun] = field(default_factory=dict)  # seed -> run, in seed order


@dataclass
class Study:
    """The arms of one ablation and how they were laid out."""

    name: str
    root: Path
    arms: list[Arm]
    title: str | None = None
    description: str | None = None  # the design in words (e.g. why patch 16 runs at 128 px), from sweep.json or the spec
    ablated: list[str] = field(default_factory=list)
    baseline: str | None = None
    milestone_mode: str | None = None
    spec: str | None = None
    base_config: str | None = None
    source: str = SWEEP_FILE  # sweep.json | registry
    notes: list[str] = field(default_factory=list)

    @property
    def seeds(self) -> list[int]:
        return sorted({s for a in self.arms for s in a.runs})

    def arm(self, name: str) -> Arm:
        for a in self.arms:
            if a.name == name:
                return a
        raise BlockMAEError(f"no arm named {name!r} in study {self.name} (arms: {[a.name for a in self.arms]})")

    def milestones(self, evaluation: str) -> list[int | None]:
        found = {e.milestone for a in self.arms for r in a.runs.values() for e in r.evaluations if e.name == evaluation}
        return sorted(found, key=lambda m: (m is None, m or 0))

    def final_milestone(self, evaluation: str) -> int | None:
        """The milestone the tables use: the last one evaluated in the study."""
        found = [m for m in self.milestones(evaluation) if m is not None]
        return max(found) if found else None

    def metric_keys(self) -> list[str]:
        """`<evaluation>.<metric>` of every result metric, in first-seen order; `pretrain.loss` last."""
        keys: dict[str, None] = {}
        for a in self.arms:
            for r in a.runs.values():
                for e in r.evaluations:
                    for m, v in e.metrics.items():
                        if e.status == "completed" and is_result_metric(m, v):
                            keys[f"{e.name}.{m}"] = None
        if any(r.final_loss() is not None for a in self.arms for r in a.runs.values()):
            keys[PRETRAIN_LOSS] = None
        return list(keys)

    def observation(self, run: SeedRun, key: str, milestone: int | None = None) -> tuple[float | None, EvalResult | None]:
        """The value of metric `key` for one seed (at `milestone`, default the final one), and its evaluation."""
        if key == PRETRAIN_LOSS:
            return run.final_loss(), None
        evaluation, metric = key.split(".", 1)
        e = run.evaluation(evaluation, self.final_milestone(evaluation) if milestone is None else milestone)
        if e is None or e.status != "completed" or not is_result_metric(metric, e.metrics.get(metric)):
            return None, e
        return float(e.metrics[metric]), e

    def values(self, key: str, milestone: int | None = None) -> dict[str, dict[int, float]]:
        """Arm -> seed -> value of `key` (seeds without a value are left out)."""
        out: dict[str, dict[int, float]] = {}
        for a in self.arms:
            out[a.name] = {}
            for seed, run in a.runs.items():
                value, _ = self.observation(run, key, milestone)
                if value is not None:
                    out[a.name][seed] = value
        return out


# ---------------------------------------------------------------------------------------------
# Reading studies


def load_studies(root: str | Path, spec: str | Path | None = None) -> list[Study]:
    """The studies under `root`: its sweep.json, else one per sub-folder holding one, else its registry."""
    root = Path(root)
    if not root.is_dir():
        raise BlockMAEError(f"--root {root} is not a folder")
    overrides = read_spec(spec) if spec else {}
    if (root / SWEEP_FILE).is_file():
        studies = [study_from_sweep(root / SWEEP_FILE)]
    else:
        studies = [study_from_sweep(p) for p in sorted(root.glob(f"*/{SWEEP_FILE}"))]
    if not studies:
        if not (root / DB_NAME).is_file():
            raise BlockMAEError(f"{root} holds no {SWEEP_FILE} (nor sub-folders with one) and no {DB_NAME}; "
                                "pass the --out folder of `blockmae sweep run` or an output root with runs")
        studies = [study_from_registry(root)]
    for study in studies:
        if spec:
            study.spec = str(spec)
        for key in ("title", "description", "baseline"):
            if overrides.get(key) is not None:
                setattr(study, key, overrides[key])
        if study.baseline is not None:
            study.arm(study.baseline)  # a named baseline must exist
    return studies


def read_spec(spec: str | Path) -> dict[str, Any]:
    """The few keys of a sweep spec that the report uses (title, description, baseline); the rest is the sweep's."""
    path = Path(spec)
    if not path.is_file():
        raise BlockMAEError(f"--spec {spec} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise BlockMAEError(f"--spec {spec} is not valid YAML: {err}") from err
    if not isinstance(data, Mapping):
        raise BlockMAEError(f"--spec {spec} is not a YAML mapping")
    return {k: data.get(k) for k in ("title", "description", "baseline")}


def _rel(root: Path, path: Any) -> Path | None:
    return None if path in (None, "") else (root / str(path))


def study_from_sweep(path: Path) -> Study:
    """A study from a sweep.json of schema 1 (docs/report.md)."""
    try:
        data = json.loads(path.read_text())
    except ValueError as err:
        raise BlockMAEError(f"{path} is not valid JSON ({err}); is a sweep still writing it?") from err
    if not isinstance(data, Mapping) or data.get("schema") != SWEEP_SCHEMA:
        found = data.get("schema") if isinstance(data, Mapping) else None
        raise BlockMAEError(f"{path} has schema {found!r}; this report reads schema {SWEEP_SCHEMA}")
    root = path.parent
    arms: dict[str, Arm] = {}
    try:
        for entry in data["arms"]:
            arm = arms.setdefault(entry["arm"], Arm(entry["arm"], dict(entry.get("values") or {})))
            run = SeedRun(
                seed=int(entry["seed"]), run_dir=_rel(root, entry.get("run_dir")), status=entry.get("status", "planned"),
                hash=entry.get("hash"), pretrain_run_id=entry.get("pretrain_run_id"),
                evaluations=[
                    EvalResult(e["name"], e.get("milestone"), e.get("status", "planned"), e.get("run_id"),
                               _rel(root, e.get("run_dir")), dict(e.get("metrics") or {}))
                    for e in entry.get("evaluations") or []
                ],
            )
            if run.seed in arm.runs:
                raise BlockMAEError(f"{path}: arm {arm.name} lists seed {run.seed} twice")
            arm.runs[run.seed] = run
    except (KeyError, TypeError, ValueError) as err:
        raise BlockMAEError(f"{path}: malformed arm entry ({type(err).__name__}: {err}); see docs/report.md") from err
    for arm in arms.values():
        arm.runs = dict(sorted(arm.runs.items()))
    return Study(
        name=str(data.get("name") or root.name), root=root, arms=list(arms.values()), title=data.get("title"),
        description=data.get("description"),
        ablated=list(data.get("ablated") or []), baseline=data.get("baseline"),
        milestone_mode=data.get("milestone_mode"), spec=data.get("spec"), base_config=data.get("base_config"),
    )


_EPOCH_DIR = re.compile(r"epoch_(\d+)")


def _seed_of(config: Mapping[str, Any]) -> int:
    flat = flatten(config)
    for key in ("run.seed", "seed", "linear.seed", "encoder.seed"):
        if isinstance(flat.get(key), int):
            return int(flat[key])
    return 0


def settings_key(config: Mapping[str, Any]) -> str:
    """What makes runs seeds of one arm: the hash of their settings less the seed and the settings that do
    not change the result (run dir, name, devices, logging, ...)."""
    flat = flatten(dict(config))
    return config_hash({k: v for k, v in flat.items()
                        if k not in FREE_KEYS and k != "run.milestones" and not _NON_SEMANTIC.search(k)})


def _arm_names(groups: Mapping[str, tuple[str, Mapping[str, Any]]]) -> dict[str, str]:
    """settings key -> arm name: the runs' name, followed by the settings that tell apart the arms sharing it
    ('pretrain (mask.block=1)', 'pretrain (mask.block=4)')."""
    by_name: dict[str, list[str]] = {}
    for key, (name, _) in groups.items():
        by_name.setdefault(name, []).append(key)
    names = {}
    for name, keys in by_name.items():
        varying = varying_keys([groups[k][1] for k in keys])
        for key in keys:
            flat = groups[key][1]
            shown = ", ".join(f"{k}={flat.get(k)}" for k in varying)
            names[key] = f"{name} ({shown or key[:8]})" if len(keys) > 1 else name
    return names


def study_from_registry(root: Path) -> Study:
    """A study from the registry alone: pretraining runs grouped into arms by their settings less the seed
    (`settings_key`; one seed each, from run.seed; named after the runs), evaluations attached through their
    parent checkpoint; evaluations with no pretraining
    behind them form arms of their own, named after the checkpoint they evaluated where it is not a file (a
    random-init encoder: "random"), else after the first run of their chain."""
    records = Registry(root).list_runs()
    by_id = {r.id: r for r in records}
    by_dir = {Path(r.run_dir): r for r in records if r.run_dir}

    def owner(parent: str | None) -> Any:
        if not parent:
            return None
        if parent in by_id:
            return by_id[parent]
        try:
            path = Path(parent).resolve()
        except OSError:
            return None
        for candidate in (path, *path.parents):
            if candidate in by_dir:
                return by_dir[candidate]
        return None

    def chain_root(rec: Any) -> tuple[Any, int | None]:
        milestone = None
        seen = set()
        while rec.kind != "pretrain" and rec.id not in seen:
            seen.add(rec.id)
            match = _EPOCH_DIR.search(str(rec.parent or ""))
            if match and milestone is None:
                milestone = int(match.group(1))
            up = owner(rec.parent)
            if up is None:
                break
            rec = up
        return rec, milestone

    arms: dict[str, Arm] = {}
    runs_by_id: dict[str, SeedRun] = {}
    pretrain_configs: dict[str, dict[str, Any]] = {}
    notes = []
    pretraining = [rec for rec in records if rec.kind == "pretrain"]
    groups = {settings_key(rec.config): (rec.name or rec.id, flatten(rec.config)) for rec in reversed(pretraining)}
    arm_names = _arm_names(groups)
    for rec in pretraining:
        name = arm_names[settings_key(rec.config)]
        arm = arms.setdefault(name, Arm(name, {}))
        seed = _seed_of(rec.config)
        if seed in arm.runs:
            notes.append(f"arm {name}: seed {seed} was run more than once; the report uses the last run ({rec.id})")
        run = SeedRun(seed, Path(rec.run_dir) if rec.run_dir else None, rec.status, rec.config_hash, rec.id)
        arm.runs[seed] = run
        runs_by_id[rec.id] = run
        pretrain_configs.setdefault(name, flatten(rec.config))
    for rec in records:
        if rec.kind == "pretrain":
            continue
        top, milestone = chain_root(rec)
        if top.kind == "pretrain":
            run = runs_by_id[top.id]
            if milestone is None:
                epochs = [r for r in run.records if r.get("kind") == "epoch"]
                milestone = int(epochs[-1]["epoch"]) if epochs else None
        else:
            # No pretraining behind it: group by the checkpoint it evaluated (e.g. "random"), else its name.
            name = top.parent if top.parent and owner(top.parent) is None and not Path(top.parent).exists() \
                else (top.name or top.id)
            arm = arms.setdefault(name, Arm(name, {}))
            run = arm.runs.setdefault(_seed_of(top.config), SeedRun(_seed_of(top.config), None, top.status))
        run.evaluations.append(EvalResult(rec.kind, milestone, rec.status, rec.id,
                                          Path(rec.run_dir) if rec.run_dir else None, dict(rec.metrics)))
    ablated = varying_keys(list(pretrain_configs.values()))
    for name, flat in pretrain_configs.items():
        arms[name].values = {k: flat.get(k) for k in ablated}
    for arm in arms.values():
        arm.runs = dict(sorted(arm.runs.items()))
    return Study(name=root.resolve().name, root=root, arms=list(arms.values()), ablated=ablated,
                 source="registry", notes=notes)


def varying_keys(configs: Sequence[Mapping[str, Any]]) -> list[str]:
    """Flattened config keys whose values differ between configs, leaving out non-semantic ones."""
    if len(configs) < 2:
        return []
    keys = sorted({k for c in configs for k in c})
    return [k for k in keys if not _NON_SEMANTIC.search(k)
            and len({json.dumps(c.get(k), sort_keys=True, default=str) for c in configs}) > 1]
