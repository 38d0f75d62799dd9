"""Experiment registry: every run of an output root in one SQLite file, `registry.sqlite`.

- store: the records, the SQLite file and each run's `run_record.json`, liveness (heartbeats, pids);
- query: dotted keys over a run's columns, config and metrics, and `--where` conditions on them;
- cli: `blockmae runs`.

Everything the store and the query language offer is importable from here (`from blockmae.registry import
Registry`).
"""

from blockmae.registry.query import check_keys, field_value, flatten, parse_condition, select
from blockmae.registry.store import (
    APPLICATION_ID, DB_NAME, DEFAULT_ROOT, HEARTBEAT_EVERY_S, RECORD_NAME, SCHEMA_VERSION, STALE_AFTER_S, STATUSES,
    Registry, RunRecord, TrackedRun, config_hash, git_commit, pid_alive, process_alive, process_start_time,
    record_path, reindex,
)

__all__ = [
    "APPLICATION_ID", "DB_NAME", "DEFAULT_ROOT", "HEARTBEAT_EVERY_S", "RECORD_NAME", "SCHEMA_VERSION", "STALE_AFTER_S",
    "STATUSES", "Registry", "RunRecord", "TrackedRun", "check_keys", "config_hash", "field_value", "flatten",
    "git_commit", "parse_condition", "pid_alive", "process_alive", "process_start_time", "record_path", "reindex",
    "select",
]
