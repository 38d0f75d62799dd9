"""The registry's store: one SQLite file (`registry.sqlite`) in the output root lists every run, and each run
also leaves its own `run_record.json` in its run dir (from which :func:`reindex` rebuilds the file).

A run is recorded when it starts (status ``running``) and finished with ``completed``, ``failed``
or ``interrupted`` plus its final metrics. A run still marked ``running`` whose process is gone
(same host: its pid is dead or reused; other host: no heartbeat for ``STALE_AFTER_S``) is shown as
``interrupted``; the stored row is left alone so that a slow heartbeat never rewrites history.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import random
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
from blockmae.fileio import write_json_atomic
from blockmae.registry.query import select

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
CREATE TABLE IF NOT EXISTS metrics_history (
    run_id TEXT NOT NULL,
    epoch INTEGER,
    recorded_at REAL NOT NULL,
    metrics_json TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS metrics_history_run ON metrics_history(run_id);
"""
# The registry's marker in the SQLite header ("bmae"), and the schema version (PRAGMA user_version).
APPLICATION_ID = 0x626D6165
SCHEMA_VERSION = 2
RECORD_NAME = "run_record.json"


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


def process_start_time(pid: int) -> str | None:
    """The kernel's start time of `pid` (Linux), to tell a live run from a reused pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22 (starttime); the command name (field 2) may contain spaces, so split after ')'.
    return stat.rsplit(")", 1)[1].split()[19]


def pid_alive(pid: int, proc_start: str | None) -> bool:
    """Is `pid` a live process on this host, and the same one (not a reused pid) when its start time is known?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    if proc_start is not None:
        current = process_start_time(pid)
        if current is not None and current != proc_start:
            return False
    return True


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
    history: list[dict[str, Any]] = field(default_factory=list)  # [{epoch, recorded_at, metrics}], oldest first

    @property
    def duration_s(self) -> float | None:
        return None if self.ended_at is None else self.ended_at - self.started_at

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["duration_s"] = self.duration_s
        return d


class Registry:
    """The run table in `root/registry.sqlite`, safe for concurrent writers on local and network file systems.

    SQLite's WAL mode needs shared memory that NFS and most cluster file systems do not provide, so the
    database keeps the rollback journal; writers take the lock with BEGIN IMMEDIATE, wait (busy timeout)
    and retry with jitter. Each run also leaves its own `run_record.json` in its run dir, from which
    :func:`reindex` rebuilds the database. The file carries a schema marker (application_id) so that an
    unrelated SQLite file is refused rather than written into."""

    def __init__(self, root: str | Path = DEFAULT_ROOT, timeout_s: float = 60.0) -> None:
        self.root = Path(root)
        self.path = self.root / DB_NAME
        self.timeout_s = timeout_s
        self._heartbeats: dict[str, threading.Event] = {}
        self.root.mkdir(parents=True, exist_ok=True)
        self._init_schema()

    def _init_schema(self) -> None:
        with self._connect() as con:
            app_id = con.execute("PRAGMA application_id").fetchone()[0]
            if app_id == APPLICATION_ID and con.execute("PRAGMA user_version").fetchone()[0] >= SCHEMA_VERSION:
                return
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if app_id != APPLICATION_ID and tables and not _is_legacy_registry(con, tables):
                shown = ", ".join(sorted(tables)[:5])
                raise BlockMAEError(f"{self.path} is an SQLite database but not a blockmae registry (tables: {shown}); "
                                    f"it was left untouched: pass another --root")

            def create(c: sqlite3.Connection) -> None:
                for statement in filter(str.strip, _SCHEMA.split(";")):  # executescript would commit
                    c.execute(statement)
                c.execute(f"PRAGMA application_id={APPLICATION_ID}")
                c.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

            self._write(create, con)

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            con = sqlite3.connect(self.path, timeout=self.timeout_s, isolation_level=None)
        except sqlite3.OperationalError as err:
            raise BlockMAEError(f"cannot open the registry {self.path}: {err}") from None
        try:
            con.execute("PRAGMA busy_timeout=%d" % int(self.timeout_s * 1000))
            with contextlib.suppress(sqlite3.OperationalError):  # another process holds it: it has set it too
                con.execute("PRAGMA journal_mode=DELETE")  # no WAL: unsafe on network file systems
            yield con
        except sqlite3.DatabaseError as err:
            if isinstance(err, sqlite3.OperationalError) and _is_busy(err):
                raise
            if isinstance(err, sqlite3.OperationalError) and "no such table" not in str(err):
                raise BlockMAEError(f"registry {self.path}: {err}") from None
            raise BlockMAEError(f"{self.path} is not a valid blockmae registry ({err}); rebuild it from the runs' "
                                f"record files with: blockmae runs --root {self.root} --reindex") from None
        finally:
            con.close()

    def _write(self, fn: Any, con: sqlite3.Connection | None = None) -> Any:
        """Run `fn(con)` in one write transaction; retried (with jitter) while another writer holds the lock."""
        deadline = time.monotonic() + self.timeout_s
        attempt = 0
        while True:
            try:
                with contextlib.ExitStack() as stack:
                    c = con if con is not None else stack.enter_context(self._connect())
                    c.execute("BEGIN IMMEDIATE")
                    try:
                        result = fn(c)
                        c.execute("COMMIT")
                    except BaseException:
                        with contextlib.suppress(sqlite3.Error):
                            c.execute("ROLLBACK")
                        raise
                    return result
            except sqlite3.OperationalError as err:
                if not _is_busy(err) or time.monotonic() > deadline:
                    raise BlockMAEError(f"registry {self.path}: {err}") from None
                attempt += 1
                time.sleep(min(1.0, 0.01 * 2 ** min(attempt, 7)) * (0.5 + random.random()))

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
            git_commit(), socket.gethostname(), pid, process_start_time(pid), now, now, None, "running", None,
        )
        self._write(lambda c: c.execute("INSERT INTO runs VALUES (%s)" % ",".join("?" * len(row)), row))
        self._write_record_file(run_id)
        if heartbeat:
            self._start_heartbeat(run_id)
        return run_id

    def _start_heartbeat(self, run_id: str) -> None:
        stop = threading.Event()
        self._heartbeats[run_id] = stop

        def beat() -> None:
            while not stop.wait(HEARTBEAT_EVERY_S):
                with contextlib.suppress(sqlite3.Error, BlockMAEError):
                    self.heartbeat(run_id)

        threading.Thread(target=beat, name=f"registry-heartbeat-{run_id}", daemon=True).start()

    def heartbeat(self, run_id: str) -> None:
        self._write(lambda c: c.execute("UPDATE runs SET heartbeat_at=? WHERE id=?", (time.time(), run_id)))

    def log_metrics(self, run_id: str, metrics: Mapping[str, Any], epoch: int | None = None) -> None:
        """Add one entry to the run's metrics history (e.g. the metrics at a milestone epoch)."""
        metrics_json = json.dumps(dict(metrics), sort_keys=True, default=_json_default)
        self._write(lambda c: c.execute("INSERT INTO metrics_history VALUES (?,?,?,?)",
                                        (run_id, epoch, time.time(), metrics_json)))
        self._write_record_file(run_id)

    def finish_run(self, run_id: str, status: str, metrics: Mapping[str, Any] | None = None) -> None:
        """Set the final status (completed/failed/interrupted) and metrics of a run."""
        if status not in STATUSES or status == "running":
            raise BlockMAEError(f"finish_run status must be completed, failed or interrupted, not '{status}'")
        stop = self._heartbeats.pop(run_id, None)
        if stop is not None:
            stop.set()
        metrics_json = json.dumps(dict(metrics or {}), sort_keys=True, default=_json_default)
        cur = self._write(lambda c: c.execute("UPDATE runs SET status=?, ended_at=?, metrics_json=? WHERE id=?",
                                              (status, time.time(), metrics_json, run_id)))
        if cur.rowcount == 0:
            raise BlockMAEError(f"no run '{run_id}' in {self.path}")
        self._write_record_file(run_id)

    def _write_record_file(self, run_id: str) -> None:
        """The run's row and metrics history, as `run_record.json` in its run dir (what --reindex reads)."""
        with self._connect() as con:
            row = _fetch_rows(con, "WHERE id=?", (run_id,))[0]
            history = _fetch_history(con, [run_id]).get(run_id, [])
        if not row["run_dir"]:
            return
        write_json_atomic(record_path(Path(row["run_dir"]), run_id), {"record_schema": SCHEMA_VERSION, "row": row,
                                                                       "history": history}, default=str)

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
            rows = _fetch_rows(con, "WHERE id=?", (run_id,))
            history = _fetch_history(con, [run_id])
        if not rows:
            raise BlockMAEError(f"no run '{run_id}' in {self.path}")
        return self._record(rows[0], history.get(run_id, []))

    def find_run(self, kind: str, run_dir: str | Path, status: str | None = "completed") -> RunRecord | None:
        """The latest run of `kind` recorded for `run_dir` (with `status`, if given), or None."""
        wanted = str(Path(run_dir).resolve())
        runs = [r for r in self.list_runs(kind=kind, status=status) if r.run_dir == wanted]
        return runs[-1] if runs else None

    def list_runs(
        self,
        kind: str | None = None,
        where: Mapping[str, Any] | Sequence[str] | None = None,
        status: str | None = None,
    ) -> list[RunRecord]:
        """Runs in start order. `where`: {key: value} (equality) or ['key>=value', ...] expressions;
        keys are columns, dotted config keys or metrics ('config.'/'metrics.' to disambiguate). A key that
        no run has is an error naming the valid ones (a typo must not read as "no matching runs")."""
        with self._connect() as con:
            rows = _fetch_rows(con, "WHERE kind=?" if kind is not None else "", (kind,) if kind is not None else ())
            history = _fetch_history(con, None)
        records = select([self._record(r, history.get(r["id"], [])) for r in rows], where)
        return [r for r in records if status is None or r.status == status]

    def _record(self, row: dict[str, Any], history: list[dict[str, Any]] | None = None) -> RunRecord:
        status = row["status"]
        if status == "running" and not self._alive(row):
            status = "interrupted"
        return RunRecord(
            id=row["id"], kind=row["kind"], name=row["name"], run_dir=row["run_dir"], parent=row["parent"],
            config=json.loads(row["config_json"]), config_hash=row["config_hash"], git_commit=row["git_commit"],
            host=row["host"], pid=row["pid"], started_at=row["started_at"], ended_at=row["ended_at"],
            status=status, metrics=json.loads(row["metrics_json"]) if row["metrics_json"] else {},
            history=list(history or []),
        )

    @staticmethod
    def _alive(row: Mapping[str, Any]) -> bool:
        return process_alive(row["host"], row["pid"], row["proc_start"], row["heartbeat_at"] or row["started_at"])


def process_alive(host: str | None, pid: int | None, proc_start: str | None, last_seen: float | None) -> bool:
    """Is a process still running? Same host: its pid lives (and is not reused); other host: it was seen
    (heartbeat) within STALE_AFTER_S."""
    if host == socket.gethostname() and pid is not None:
        return pid_alive(int(pid), proc_start)
    return last_seen is not None and time.time() - last_seen < STALE_AFTER_S


def _is_busy(err: sqlite3.OperationalError) -> bool:
    text = str(err).lower()
    return "locked" in text or "busy" in text


_COLUMNS = ("id", "kind", "name", "run_dir", "parent", "config_json", "config_hash", "git_commit", "host", "pid",
            "proc_start", "started_at", "heartbeat_at", "ended_at", "status", "metrics_json")


def _is_legacy_registry(con: sqlite3.Connection, tables: set[str]) -> bool:
    """A registry written before the schema marker: our `runs` table with our columns, nothing foreign."""
    if "runs" not in tables or tables - {"runs", "metrics_history"}:
        return False
    columns = tuple(r[1] for r in con.execute("PRAGMA table_info(runs)"))
    return columns == _COLUMNS


def _fetch_rows(con: sqlite3.Connection, clause: str, params: Sequence[Any]) -> list[dict[str, Any]]:
    cur = con.execute(f"SELECT * FROM runs {clause} ORDER BY started_at, id", tuple(params))
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, r)) for r in cur.fetchall()]


def _fetch_history(con: sqlite3.Connection, run_ids: Sequence[str] | None) -> dict[str, list[dict[str, Any]]]:
    query = "SELECT run_id, epoch, recorded_at, metrics_json FROM metrics_history"
    params: tuple = ()
    if run_ids is not None:
        query += " WHERE run_id IN (%s)" % ",".join("?" * len(run_ids))
        params = tuple(run_ids)
    out: dict[str, list[dict[str, Any]]] = {}
    for run_id, epoch, at, metrics_json in con.execute(query + " ORDER BY recorded_at, rowid", params):
        out.setdefault(run_id, []).append({"epoch": epoch, "recorded_at": at, "metrics": json.loads(metrics_json)})
    return out


def record_path(run_dir: Path, run_id: str) -> Path:
    """`run_record.json`, unless that file belongs to another run of the same folder: then one named by id."""
    path = run_dir / RECORD_NAME
    if path.is_file():
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            if json.loads(path.read_text())["row"]["id"] != run_id:
                return run_dir / f"run_record-{run_id}.json"
    return path


def reindex(root: str | Path) -> tuple[int, Path | None]:
    """Rebuild `root/registry.sqlite` from the run_record*.json files under `root` (plus the rows of the old
    registry that have no record file, when it is still readable). The old file is kept beside it.
    Returns (runs indexed, path of the old registry or None)."""
    root = Path(root)
    path = root / DB_NAME
    rows: dict[str, dict[str, Any]] = {}
    history: dict[str, list[dict[str, Any]]] = {}
    kept = None
    if path.exists():
        with contextlib.suppress(BlockMAEError, sqlite3.Error):
            old = Registry.__new__(Registry)
            old.root, old.path, old.timeout_s, old._heartbeats = root, path, 60.0, {}
            with old._connect() as con:
                rows = {r["id"]: r for r in _fetch_rows(con, "", ())}
                history = _fetch_history(con, None)
        kept = path.with_name(f"{DB_NAME}.old-{_dt.datetime.now():%Y%m%d-%H%M%S}")
        os.replace(path, kept)
        for suffix in ("-journal", "-wal", "-shm"):
            Path(str(path) + suffix).unlink(missing_ok=True)
    for record_file in sorted(root.rglob("run_record*.json")):
        try:
            data = json.loads(record_file.read_text())
            row = {k: data["row"][k] for k in _COLUMNS}
        except (OSError, ValueError, KeyError, TypeError):
            print(f"blockmae: skipping {record_file}: not a run record", file=sys.stderr)
            continue
        rows[row["id"]] = row
        history[row["id"]] = list(data.get("history", []))
    registry = Registry(root)

    def insert(c: sqlite3.Connection) -> None:
        for row in rows.values():
            c.execute("INSERT INTO runs VALUES (%s)" % ",".join("?" * len(_COLUMNS)), tuple(row[k] for k in _COLUMNS))
            for entry in history.get(row["id"], []):
                c.execute("INSERT INTO metrics_history VALUES (?,?,?,?)",
                          (row["id"], entry.get("epoch"), entry.get("recorded_at"), json.dumps(entry.get("metrics", {}))))

    registry._write(insert)
    return len(rows), kept


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
