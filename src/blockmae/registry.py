"""Experiment registry: one SQLite file (`registry.sqlite`) in the output root lists every run.

A run is recorded when it starts (status ``running``) and finished with ``completed``, ``failed``
or ``interrupted`` plus its final metrics. A run still marked ``running`` whose process is gone
(same host: its pid is dead or reused; other host: no heartbeat for ``STALE_AFTER_S``) is shown as
``interrupted``; the stored row is left alone so that a slow heartbeat never rewrites history.

Also the ``blockmae runs`` command (``add_arguments``/``run``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import hashlib
import json
import math
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from blockmae.errors import BlockMAEError

DB_NAME = "registry.sqlite"
DEFAULT_ROOT = Path("outputs")
STATUSES = ("running", "completed", "failed", "interrupted")
HEARTBEAT_EVERY_S = 30.0
# A run on another host is presumed dead after this long without a heartbeat.
STALE_AFTER_S = 10 * HEARTBEAT_EVERY_S

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    name TEXT,
    run_dir TEXT,
    parent TEXT,
    config_json TEXT NOT NULL,
    config_hash TEXT NOT NULL,
    git_commit TEXT,
    host TEXT,
    pid INTEGER,
    proc_start TEXT,
    started_at REAL NOT NULL,
    heartbeat_at REAL,
    ended_at REAL,
    status TEXT NOT NULL,
    metrics_json TEXT
);
CREATE INDEX IF NOT EXISTS runs_kind ON runs(kind);
"""


def config_hash(config: Mapping[str, Any]) -> str:
    """A short stable hash of a config: sha256 of its canonical JSON (sorted keys)."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def git_commit(path: str | Path | None = None) -> str | None:
    """The commit of the git checkout holding `path` (default: this package), '+dirty' if modified."""
    cwd = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True, text=True, timeout=5
        )
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _proc_start(pid: int) -> str | None:
    """The kernel's start time of `pid` (Linux), to tell a live run from a reused pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22 (starttime); the command name (field 2) may contain spaces, so split after ')'.
    return stat.rsplit(")", 1)[1].split()[19]


def _pid_alive(pid: int, proc_start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    if proc_start is not None:
        current = _proc_start(pid)
        if current is not None and current != proc_start:
            return False
    return True


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


@dataclass
class RunRecord:
    """One row of the registry, with its effective status."""

    id: str
    kind: str
    name: str | None
    run_dir: str | None
    parent: str | None
    config: dict[str, Any]
    config_hash: str
    git_commit: str | None
    host: str | None
    pid: int | None
    started_at: float
    ended_at: float | None
    status: str
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def duration_s(self) -> float | None:
        return None if self.ended_at is None else self.ended_at - self.started_at

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["duration_s"] = self.duration_s
        return d

    def field_value(self, key: str) -> tuple[bool, Any]:
        """Look `key` up: 'metrics.x' / 'config.x' explicitly, else a column, a config key, a metric."""
        columns = {k: v for k, v in asdict(self).items() if k not in ("config", "metrics")}
        cfg, met = flatten(self.config), flatten(self.metrics)
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
                if key:
                    return key, op, value
                break
    raise BlockMAEError(f"--where '{expr}' is not of the form key=value (also != > >= < <=), e.g. --where mask.block=2")


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


class Registry:
    """The run table in `root/registry.sqlite`; safe for concurrent writers (WAL, busy timeout)."""

    def __init__(self, root: str | Path = DEFAULT_ROOT, timeout_s: float = 60.0) -> None:
        self.root = Path(root)
        self.path = self.root / DB_NAME
        self.timeout_s = timeout_s
        self._heartbeats: dict[str, threading.Event] = {}
        self.root.mkdir(parents=True, exist_ok=True)
        with self._connect() as con:
            con.executescript(_SCHEMA)

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        con = sqlite3.connect(self.path, timeout=self.timeout_s, isolation_level=None)
        try:
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA busy_timeout=%d" % int(self.timeout_s * 1000))
            yield con
        finally:
            con.close()

    # -- writing -------------------------------------------------------------------------
    def start_run(
        self,
        kind: str,
        run_dir: str | Path | None,
        config: Mapping[str, Any],
        parent: str | Path | None = None,
        name: str | None = None,
        heartbeat: bool = True,
    ) -> str:
        """Record a new running run and return its id. `parent`: the checkpoint (or run id) it derives from."""
        now = time.time()
        stamp = _dt.datetime.fromtimestamp(now).strftime("%Y%m%d-%H%M%S")
        run_id = f"{stamp}-{uuid.uuid4().hex[:6]}"
        config_json = json.dumps(config, sort_keys=True, default=str)
        pid = os.getpid()
        row = (
            run_id, kind, name, None if run_dir is None else str(Path(run_dir).resolve()),
            None if parent is None else str(parent), config_json, config_hash(json.loads(config_json)),
            git_commit(), socket.gethostname(), pid, _proc_start(pid), now, now, None, "running", None,
        )
        with self._connect() as con:
            con.execute("INSERT INTO runs VALUES (%s)" % ",".join("?" * len(row)), row)
        if heartbeat:
            self._start_heartbeat(run_id)
        return run_id

    def _start_heartbeat(self, run_id: str) -> None:
        stop = threading.Event()
        self._heartbeats[run_id] = stop

        def beat() -> None:
            while not stop.wait(HEARTBEAT_EVERY_S):
                with contextlib.suppress(sqlite3.Error):
                    self.heartbeat(run_id)

        threading.Thread(target=beat, name=f"registry-heartbeat-{run_id}", daemon=True).start()

    def heartbeat(self, run_id: str) -> None:
        with self._connect() as con:
            con.execute("UPDATE runs SET heartbeat_at=? WHERE id=?", (time.time(), run_id))

    def finish_run(self, run_id: str, status: str, metrics: Mapping[str, Any] | None = None) -> None:
        """Set the final status (completed/failed/interrupted) and metrics of a run."""
        if status not in STATUSES or status == "running":
            raise BlockMAEError(f"finish_run status must be completed, failed or interrupted, not '{status}'")
        stop = self._heartbeats.pop(run_id, None)
        if stop is not None:
            stop.set()
        metrics_json = json.dumps(dict(metrics or {}), sort_keys=True, default=_json_default)
        with self._connect() as con:
            cur = con.execute(
                "UPDATE runs SET status=?, ended_at=?, metrics_json=? WHERE id=?",
                (status, time.time(), metrics_json, run_id),
            )
            if cur.rowcount == 0:
                raise BlockMAEError(f"no run '{run_id}' in {self.path}")

    @contextlib.contextmanager
    def track(
        self,
        kind: str,
        run_dir: str | Path | None,
        config: Mapping[str, Any],
        parent: str | Path | None = None,
        name: str | None = None,
    ) -> Iterator["TrackedRun"]:
        """`with registry.track(...) as run: ...; run.metrics.update(...)`.

        Completed on normal exit, interrupted on KeyboardInterrupt, failed (with the error) otherwise.
        """
        run = TrackedRun(self.start_run(kind, run_dir, config, parent=parent, name=name))
        try:
            yield run
        except KeyboardInterrupt:
            self.finish_run(run.id, "interrupted", run.metrics)
            raise
        except BaseException as err:
            self.finish_run(run.id, "failed", {**run.metrics, "error": f"{type(err).__name__}: {err}"})
            raise
        else:
            self.finish_run(run.id, "completed", run.metrics)

    # -- reading -------------------------------------------------------------------------
    def get(self, run_id: str) -> RunRecord:
        with self._connect() as con:
            row = con.execute("SELECT * FROM runs WHERE id=?", (run_id,)).fetchone()
            cols = [d[0] for d in con.execute("SELECT * FROM runs LIMIT 0").description]
        if row is None:
            raise BlockMAEError(f"no run '{run_id}' in {self.path}")
        return self._record(dict(zip(cols, row)))

    def list_runs(
        self,
        kind: str | None = None,
        where: Mapping[str, Any] | Sequence[str] | None = None,
        status: str | None = None,
    ) -> list[RunRecord]:
        """Runs in start order. `where`: {key: value} (equality) or ['key>=value', ...] expressions;
        keys are columns, dotted config keys or metrics ('config.'/'metrics.' to disambiguate)."""
        query, params = "SELECT * FROM runs", []
        if kind is not None:
            query, params = query + " WHERE kind=?", [kind]
        with self._connect() as con:
            cur = con.execute(query + " ORDER BY started_at, id", params)
            cols = [d[0] for d in cur.description]
            rows = [dict(zip(cols, r)) for r in cur.fetchall()]
        if where is None:
            conditions: list[tuple[str, str, Any]] = []
        elif isinstance(where, Mapping):
            conditions = [(k, "=", v) for k, v in where.items()]
        else:
            conditions = [parse_condition(w) for w in where]
        records = [self._record(r) for r in rows]
        out = []
        for rec in records:
            if status is not None and rec.status != status:
                continue
            ok = True
            for key, op, value in conditions:
                found, actual = rec.field_value(key)
                if not found or not _matches(actual, op, value):
                    ok = False
                    break
            if ok:
                out.append(rec)
        return out

    def _record(self, row: dict[str, Any]) -> RunRecord:
        status = row["status"]
        if status == "running" and not self._alive(row):
            status = "interrupted"
        return RunRecord(
            id=row["id"], kind=row["kind"], name=row["name"], run_dir=row["run_dir"], parent=row["parent"],
            config=json.loads(row["config_json"]), config_hash=row["config_hash"], git_commit=row["git_commit"],
            host=row["host"], pid=row["pid"], started_at=row["started_at"], ended_at=row["ended_at"],
            status=status, metrics=json.loads(row["metrics_json"]) if row["metrics_json"] else {},
        )

    @staticmethod
    def _alive(row: Mapping[str, Any]) -> bool:
        if row["host"] == socket.gethostname() and row["pid"] is not None:
            return _pid_alive(int(row["pid"]), row["proc_start"])
        last = row["heartbeat_at"] or row["started_at"]
        return time.time() - last < STALE_AFTER_S


@dataclass
class TrackedRun:
    """Handle given by :meth:`Registry.track`; fill `metrics` before the block ends."""

    id: str
    metrics: dict[str, Any] = field(default_factory=dict)


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):  # tensors / numpy scalars
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# -- the `blockmae runs` command ---------------------------------------------------------------

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
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(line, widths)).rstrip() for line in (header, *rows)]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", default=str(DEFAULT_ROOT), help="output root holding registry.sqlite (default: outputs)")
    parser.add_argument("--kind", help="only runs of this kind (pretrain, probe, knn, shape-bias, ...)")
    parser.add_argument("--status", choices=STATUSES, help="only runs with this status")
    parser.add_argument(
        "--where", action="append", default=[], metavar="KEY=VALUE",
        help="filter on a dotted config key, a metric or a column (also != > >= < <=); repeatable, all must hold",
    )
    parser.add_argument("--last", type=int, metavar="N", help="only the N most recent matching runs")
    parser.add_argument("--json", action="store_true", help="print the runs as a JSON list")


def run(args: argparse.Namespace) -> int:
    root = Path(args.root)
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
