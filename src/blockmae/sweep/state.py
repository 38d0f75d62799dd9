"""The sweep folder: one task file and one progress file per arm, and `sweep.json` made from them.

    <out>/sweep_plan.json             the expanded spec (arms, evaluations), written by plan --out / run
    <out>/<arm>/s<seed>/arm.json      the arm's task: identity (hash), resolved configs, evaluations
    <out>/<arm>/s<seed>/arm_state.json  its progress, written only by the process running the arm
    <out>/sweep.json                  the report's input (docs/ablations.md), rebuilt from the above

Each arm's files have a single writer, so parallel slots and array tasks never contend; `sweep.json`
is rebuilt whole from them and replaced atomically by whoever finished something last.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from blockmae.config import differences, to_dict
from blockmae.errors import BlockMAEError
from blockmae.fileio import sha256_file, write_json_atomic
from blockmae.registry import process_start_time, process_alive
from blockmae.sweep.spec import Arm, SweepSpec

SCHEMA = 1
PLAN_NAME = "sweep_plan.json"
SWEEP_JSON = "sweep.json"
TASK_NAME = "arm.json"
STATE_NAME = "arm_state.json"
ARM_STATUSES = ("planned", "running", "completed", "failed", "interrupted")


def eval_key(label: str, milestone: int) -> str:
    return f"{label}@{milestone}"


def run_dirs(spec: SweepSpec, arm: Arm) -> dict[int, str]:
    """Run length -> run dir (relative to out): the longest run in the arm's folder, shorter ones inside it."""
    longest = max(arm.configs)
    return {length: arm.run_dir if length == longest else f"{arm.run_dir}/epochs_{length:04d}" for length in arm.configs}


def arm_task(spec: SweepSpec, arm: Arm) -> dict[str, Any]:
    """Everything the arm's process needs, independent of the spec file (which may change meanwhile)."""
    dirs = run_dirs(spec, arm)
    probe_config = spec.probe_config
    return {
        "schema": SCHEMA, "sweep": spec.name, "arm": arm.name, "seed": arm.seed, "hash": arm.hash,
        "values": arm.values, "run_dir": arm.run_dir, "milestone_mode": spec.milestone_mode,
        "milestones": spec.milestones_of(arm),
        "runs": [{"epochs": length, "run_dir": dirs[length], "config": to_dict(cfg)}
                 for length, cfg in sorted(arm.configs.items())],
        "evaluations": [e.to_dict() for e in spec.evaluations],
        "probe_config": str(Path(probe_config).resolve()) if probe_config else None,
        "probe_overrides": list(spec.probe_overrides),
        "semantic": arm.semantic_config(),
    }


def check_identity(spec: SweepSpec, out: Path) -> None:
    """Refuse a folder whose arms were made from another version of the spec (their hash differs)."""
    for arm in spec.arms():
        path = out / arm.run_dir / TASK_NAME
        if not path.is_file():
            continue
        old = read_json(path)
        if old.get("hash") != arm.hash:
            changed = differences(old.get("semantic", {}), arm.semantic_config())
            detail = "; ".join(changed[:3]) + (f"; ... ({len(changed)} keys)" if len(changed) > 3 else "")
            raise BlockMAEError(f"arm {arm.run_dir} in {out} was run with another config (hash {old.get('hash')}, the "
                                f"spec now gives {arm.hash}: {detail or 'milestone mode'}); use another --out, "
                                f"or remove {out / arm.run_dir} to rerun it")


def eval_settings(evaluation: dict[str, Any], probe_config: str | None, probe_overrides: list[str]) -> dict[str, Any]:
    """What an evaluation's result depends on besides its checkpoint: its spec entry and the probe settings
    (the probe config file by its contents), stored with each completed evaluation (its key)."""
    # The file by its contents, not its path: a moved checkout is the same setting.
    sha = sha256_file(probe_config) if probe_config and Path(probe_config).is_file() else None
    return {"evaluation": dict(evaluation), "probe_config_sha256": sha, "probe_overrides": list(probe_overrides)}


def stale_evaluation(out: Path, run_dir: str, key: str, entry: dict[str, Any], wanted: dict[str, Any]) -> str | None:
    """Why the completed evaluation `entry` (of arm `run_dir`) cannot stand for the settings `wanted` (None:
    it can). One whose run dir is gone is simply run again."""
    stored = entry.get("settings")
    if entry.get("status") != "completed" or stored is None or stored == wanted:
        return None
    if entry.get("run_dir") and not (out / entry["run_dir"]).exists():
        return None
    changed = differences(stored, wanted)
    detail = "; ".join(changed[:3]) + (f"; ... ({len(changed)} keys)" if len(changed) > 3 else "")
    where = out / entry["run_dir"] if entry.get("run_dir") else out / run_dir
    return (f"evaluation {key} of arm {run_dir} in {out} was run with other settings ({detail}); use another "
            f"--out, or remove {where} to run it again")


def check_evaluations_current(spec: SweepSpec, out: Path) -> None:
    """Refuse a folder whose completed evaluations were made with settings the spec no longer gives."""
    for arm in spec.arms():
        done = read_state(out, arm.run_dir).get("evaluations", {})
        for ev in spec.evaluations:
            for milestone in spec.milestones_of(arm):
                key = eval_key(ev.label, milestone)
                if key in done:
                    probe_config = str(Path(spec.probe_config).resolve()) if spec.probe_config else None
                    problem = stale_evaluation(out, arm.run_dir, key, done[key],
                                               eval_settings(ev.to_dict(), probe_config, spec.probe_overrides))
                    if problem:
                        raise BlockMAEError(problem)


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise BlockMAEError(f"cannot read {path}: {err}") from None


def plan_record(spec: SweepSpec) -> dict[str, Any]:
    return {
        "schema": SCHEMA, "name": spec.name, "spec": spec.path, "title": spec.title, "notes": spec.notes,
        "base_config": spec.base, "ablated": spec.ablated(), "baseline": spec.baseline_arm(),
        "milestone_mode": spec.milestone_mode,
        "arms": [{"arm": a.name, "seed": a.seed, "hash": a.hash, "values": a.values, "run_dir": a.run_dir,
                  "evaluations": [[e.name, e.label, m] for m in spec.milestones_of(a) for e in spec.evaluations]}
                 for a in spec.arms()],
    }


def write_plan(spec: SweepSpec, out: Path) -> None:
    write_json_atomic(out / PLAN_NAME, plan_record(spec))
    write_sweep_json(out)


# ---- per-arm progress ------------------------------------------------------------------------------

def read_state(out: Path, run_dir: str) -> dict[str, Any]:
    path = out / run_dir / STATE_NAME
    return read_json(path) if path.is_file() else {}


def write_state(out: Path, run_dir: str, state: dict[str, Any]) -> None:
    write_json_atomic(out / run_dir / STATE_NAME, state)


def start_state(out: Path, run_dir: str) -> dict[str, Any]:
    state = read_state(out, run_dir)
    pid = os.getpid()
    state.update(status="running", host=socket.gethostname(), pid=pid, proc_start=process_start_time(pid),
                 started_at=time.time(), heartbeat_at=time.time(), ended_at=None, error=None)
    state.setdefault("evaluations", {})
    write_state(out, run_dir, state)
    return state


def effective_status(state: dict[str, Any], wanted: list[list[Any]]) -> str:
    """planned | running | completed | failed | interrupted; a dead `running` process is interrupted, and a
    completed arm that the spec now asks more evaluations of is planned again."""
    status = state.get("status", "planned")
    if status == "running" and not process_alive(state.get("host"), state.get("pid"), state.get("proc_start"),
                                                 state.get("heartbeat_at") or state.get("started_at")):
        return "interrupted"
    if status == "completed":
        done = state.get("evaluations", {})
        if any(done.get(eval_key(label, m), {}).get("status") != "completed" for _, label, m in wanted):
            return "planned"
    return status


# ---- sweep.json -------------------------------------------------------------------------------------

def sweep_record(out: Path) -> dict[str, Any]:
    """The contents of sweep.json (schema 1) from the plan and the arms' progress."""
    plan = read_json(out / PLAN_NAME)
    arms = []
    for arm in plan["arms"]:
        state = read_state(out, arm["run_dir"])
        done = state.get("evaluations", {})
        evaluations = []
        for _name, label, milestone in arm["evaluations"]:
            entry = done.get(eval_key(label, milestone), {})
            evaluations.append({
                "name": label, "milestone": milestone, "status": entry.get("status", "planned"),
                "run_id": entry.get("run_id"), "run_dir": entry.get("run_dir"), "metrics": entry.get("metrics", {}),
            })
        arms.append({
            "arm": arm["arm"], "seed": arm["seed"], "hash": arm["hash"], "values": arm["values"],
            "run_dir": arm["run_dir"], "status": effective_status(state, arm["evaluations"]),
            "pretrain_run_id": state.get("pretrain_run_id"), "evaluations": evaluations,
        })
    keys = ("schema", "name", "spec", "title", "notes", "base_config", "ablated", "baseline", "milestone_mode")
    return {**{k: plan.get(k) for k in keys}, "arms": arms}


def write_sweep_json(out: Path) -> Path:
    return write_json_atomic(out / SWEEP_JSON, sweep_record(out))
