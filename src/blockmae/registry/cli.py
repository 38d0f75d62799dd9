"""`blockmae runs`: the runs recorded in an output root's registry as a table or JSON, filtered with the
query language (blockmae.registry.query); `--reindex` rebuilds the registry from the run record files."""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

from blockmae.config import number
from blockmae.errors import BlockMAEError
from blockmae.registry.query import flatten
from blockmae.registry.store import DB_NAME, DEFAULT_ROOT, STATUSES, Registry, RunRecord, reindex
from blockmae.text import table as text_table

# Metrics shown in the table, in this order of preference (the first few that a run has).
KEY_METRICS = (
    "top1", "top5", "knn_top1", "knn_top5", "shape_bias", "shape_only_acc", "texture_only_as_shape",
    "frac_neither", "epoch", "loss",
)


def key_metrics(metrics: Mapping[str, Any], limit: int = 4) -> str:
    """A short `name=value` summary; shape bias shows its interval; other numbers fill up to `limit`."""
    flat = flatten(metrics)
    keys = [k for k in KEY_METRICS if k in flat]
    if len(keys) < limit:
        keys += [k for k, v in flat.items() if k not in keys and k not in ("shape_bias_low", "shape_bias_high")
                 and isinstance(v, (int, float)) and not isinstance(v, bool)]
    parts = []
    for k in keys[:limit]:
        text = f"{k}={_fmt_value(flat[k])}"
        if k == "shape_bias" and "shape_bias_low" in flat and "shape_bias_high" in flat:
            text += f"[{_fmt_value(flat['shape_bias_low'])},{_fmt_value(flat['shape_bias_high'])}]"
        parts.append(text)
    return " ".join(parts)


def _fmt_time(ts: float | None) -> str:
    return "-" if ts is None else _dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def _fmt_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)


def _parent_label(parent: str | None, records: Sequence[RunRecord]) -> str:
    """The id of the registered run whose directory holds `parent`, else the path's tail."""
    if not parent:
        return "-"
    if any(r.id == parent for r in records):
        return parent
    try:
        path = Path(parent).resolve()
    except OSError:
        return parent
    for rec in records:
        if rec.run_dir and (path == Path(rec.run_dir) or Path(rec.run_dir) in path.parents):
            return rec.id
    parts = Path(parent).parts
    return str(Path(*parts[-2:])) if len(parts) > 2 else parent


def format_table(records: Sequence[RunRecord], all_records: Sequence[RunRecord] | None = None) -> str:
    header = ("id", "kind", "name", "status", "parent", "start", "duration", "metrics")
    rows = [
        (
            r.id, r.kind, r.name or "-", r.status, _parent_label(r.parent, all_records or records),
            _fmt_time(r.started_at), _fmt_duration(r.duration_s), key_metrics(r.metrics) or "-",
        )
        for r in records
    ]
    return text_table(header, rows)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", default=str(DEFAULT_ROOT), help="output root holding registry.sqlite (default: outputs)")
    parser.add_argument("--kind", help="only runs of this kind (pretrain, probe, knn, shape-bias, ...)")
    parser.add_argument("--status", choices=STATUSES, help="only runs with this status")
    parser.add_argument(
        "--where", action="append", default=[], metavar="KEY=VALUE",
        help="filter on a dotted config key, a metric or a column (also != > >= < <=); repeatable, all must hold",
    )
    parser.add_argument("--last", type=number(int, ">=1"), metavar="N", help="only the N most recent matching runs")
    parser.add_argument("--json", action="store_true", help="print the runs as a JSON list")
    parser.add_argument("--reindex", action="store_true",
                        help="rebuild registry.sqlite from the run_record.json files under --root (keeps the old file)")


def run(args: argparse.Namespace) -> int:
    root = Path(args.root)
    if args.reindex:
        if not root.is_dir():
            raise BlockMAEError(f"no folder {root}; pass the output root holding the runs with --root DIR")
        count, kept = reindex(root)
        print(f"reindexed {count} runs into {root / DB_NAME}" + (f" (the old file is kept as {kept})" if kept else ""))
        return 0
    if not (root / DB_NAME).is_file():
        raise BlockMAEError(f"no registry at {root / DB_NAME}; run something first or pass --root DIR")
    registry = Registry(root)
    records = registry.list_runs(kind=args.kind, where=list(args.where), status=args.status)
    if args.last is not None:
        records = records[-args.last:]
    if args.json:
        print(json.dumps([r.to_dict() for r in records], indent=2, default=str))
        return 0
    if not records:
        print("no matching runs", file=sys.stderr)
        return 0
    print(format_table(records, registry.list_runs()))
    return 0
