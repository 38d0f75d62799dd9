"""The registry's query language: dotted keys over a run's columns, config and metrics, and conditions on
them (`key=value`, also != > >= < <=), as `blockmae runs --where` and :meth:`Registry.list_runs` take them.

A key that no run has is an error naming the valid ones, so that a typo never reads as "no matching runs".
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from blockmae.errors import BlockMAEError

if TYPE_CHECKING:  # the store imports this module to filter its records
    from blockmae.registry.store import RunRecord


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, Mapping):
        for key, sub in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), sub, out)
    else:
        out[prefix] = value


def flatten(d: Mapping[str, Any]) -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}."""
    out: dict[str, Any] = {}
    _flatten("", d, out)
    return out


def field_value(record: RunRecord, key: str) -> tuple[bool, Any]:
    """Look `key` up in `record`: 'metrics.x' / 'config.x' explicitly, else a column, a config key, a metric."""
    columns = {k: v for k, v in asdict(record).items() if k not in ("config", "metrics", "history")}
    cfg, met = flatten(record.config), flatten(record.metrics)
    if key.startswith("metrics."):
        sub = key[len("metrics."):]
        return (sub in met, met.get(sub))
    if key.startswith("config."):
        sub = key[len("config."):]
        return (sub in cfg, cfg.get(sub))
    for table in (columns, cfg, met):
        if key in table:
            return True, table[key]
    return False, None


_OPS = ("!=", ">=", "<=", "=", ">", "<")


def parse_condition(expr: str) -> tuple[str, str, str]:
    """'mask.block=2' -> ('mask.block', '=', '2'); operators = != > >= < <=."""
    for i, ch in enumerate(expr):
        for op in _OPS:
            if expr.startswith(op, i) and i > 0:
                key, value = expr[:i].strip(), expr[i + len(op):].strip()
                if key and value[:1] in ("=", "<", ">", "!", "~"):
                    raise BlockMAEError(f"--where '{expr}': unknown operator; use one of = != > >= < <= "
                                        f"(e.g. --where mask.block=2, --where top1>=0.5)")
                if key and op in ("<", "<=", ">", ">=") and not _is_number(value):
                    raise BlockMAEError(f"--where '{expr}': {op} compares numbers, and {value!r} is not one")
                if key:
                    return key, op, value
                break
    raise BlockMAEError(f"--where '{expr}' is not of the form key=value (also != > >= < <=), e.g. --where mask.block=2")


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _coerce(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _matches(actual: Any, op: str, wanted: Any) -> bool:
    if isinstance(wanted, str):
        wanted = _coerce(wanted)
    if op in ("=", "!="):
        equal = actual == wanted or str(actual) == str(wanted)
        if isinstance(actual, bool) or isinstance(wanted, bool):
            equal = str(actual).lower() == str(wanted).lower()
        return equal if op == "=" else not equal
    try:
        a, w = float(actual), float(wanted)
    except (TypeError, ValueError):
        a, w = str(actual), str(wanted)  # type: ignore[assignment]
    return {">": a > w, ">=": a >= w, "<": a < w, "<=": a <= w}[op]


def check_keys(keys: Sequence[str], records: Sequence[RunRecord]) -> None:
    """A key that no record has is an error naming the valid ones (a typo must not read as "no matching runs")."""
    unknown = [k for k in keys if not any(field_value(r, k)[0] for r in records)]
    if not unknown:
        return
    columns = [k for k in asdict(records[0]) if k not in ("config", "metrics", "history")]
    metrics = sorted({k for r in records for k in flatten(r.metrics)})
    config = sorted({k for r in records for k in flatten(r.config)})
    shown = config[:25] + ([f"... ({len(config) - 25} more, see --json)"] if len(config) > 25 else [])
    raise BlockMAEError(f"--where: no run has the key '{unknown[0]}'; valid keys: columns {', '.join(columns)}; "
                        f"metrics {', '.join(metrics) or '-'}; config {', '.join(shown) or '-'}")


def select(records: Sequence[RunRecord], where: Mapping[str, Any] | Sequence[str] | None) -> list[RunRecord]:
    """The records, in order, that meet every condition of `where`: {key: value} (equality) or
    ['key>=value', ...] expressions (:func:`parse_condition`); keys as :func:`field_value` looks them up."""
    if where is None:
        conditions: list[tuple[str, str, Any]] = []
    elif isinstance(where, Mapping):
        conditions = [(k, "=", v) for k, v in where.items()]
    else:
        conditions = [parse_condition(w) for w in where]
    if records:
        check_keys([key for key, _, _ in conditions], records)
    out = []
    for rec in records:
        for key, op, value in conditions:
            found, actual = field_value(rec, key)
            if not found or not _matches(actual, op, value):
                break
        else:
            out.append(rec)
    return out
