"""One arm, start to finish: its pretraining run(s), then every evaluation at every milestone.

Run as `python -m blockmae.sweep.runner <out>/<arm>/s<seed>/arm.json` by the local and SLURM executors
(a process per arm: a crash, a SIGTERM or a CUDA error stays inside it) and called inline by the debug
executor. Idempotent: the engine resumes a run dir holding a checkpoint (and returns at once when the
run is complete), and evaluations recorded as completed (in arm_state.json and the registry) are skipped.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from blockmae.engine import checkpoint as ckpt
from blockmae.engine.config import PretrainConfig
from blockmae.errors import BlockMAEError, error_line
from blockmae.evaluation.monitor import pretrain_monitored
from blockmae.registry import HEARTBEAT_EVERY_S, Registry
from blockmae.sweep.evaluations import EvalContext, EvalOutcome, get_evaluation
from blockmae.sweep.spec import EvaluationSpec, pretrain_config
from blockmae.sweep.state import (
    eval_key, eval_settings, read_json, stale_evaluation, start_state, write_state, write_sweep_json,
)


def out_of(task_path: Path, task: dict[str, Any]) -> Path:
    """The sweep folder of an arm's task file (<out>/<arm>/s<seed>/arm.json), wherever the folder moved."""
    return task_path.resolve().parent.parents[len(Path(task["run_dir"]).parts) - 1]


def _config(entry: dict[str, Any], out: Path, task: dict[str, Any]) -> PretrainConfig:
    cfg = pretrain_config(entry["config"])
    cfg.run.dir = str(out / entry["run_dir"])
    cfg.run.output_root = str(out)
    cfg.run.name = f"{task['sweep']}/{task['arm']}"  # seeds of an arm share the registry name
    cfg.run.registry = True
    return cfg


def run_arm(task_path: str | Path) -> str:
    """Run (or resume) the arm of `task_path`; returns its final status (completed, failed, interrupted)."""
    task_path = Path(task_path)
    task = read_json(task_path)
    out = out_of(task_path, task)
    run_dir = task["run_dir"]
    state = start_state(out, run_dir)
    registry = Registry(out)

    lock = threading.Lock()

    def save(**changes: Any) -> None:
        with lock:
            state.update(changes)
            write_state(out, run_dir, state)
            write_sweep_json(out)

    stop = threading.Event()

    def heartbeat() -> None:  # another host tells a live arm from a dead one by this (registry.process_alive)
        while not stop.wait(HEARTBEAT_EVERY_S):
            # RuntimeError: the main thread changed the state while it was being written; next beat
            with contextlib.suppress(OSError, RuntimeError, BlockMAEError):
                save(heartbeat_at=time.time())

    threading.Thread(target=heartbeat, name="sweep-arm-heartbeat", daemon=True).start()
    try:
        return _run(task, out, state, registry, save)
    finally:
        stop.set()


def _run(task: dict[str, Any], out: Path, state: dict[str, Any], registry: Registry, save: Any) -> str:
    try:
        ckpt_dirs: dict[int, Path] = {}
        for entry in task["runs"]:
            cfg = _config(entry, out, task)
            pretrain_monitored(cfg)
            record = registry.find_run("pretrain", cfg.run.dir)
            if record is None:
                raise BlockMAEError(f"the pretraining in {cfg.run.dir} is not recorded as completed in {registry.path}")
            for epoch in cfg.run.milestones:
                ckpt_dirs[epoch] = Path(cfg.run.dir) / "checkpoints" / ckpt.milestone_name(epoch)
            if entry is task["runs"][-1]:
                save(pretrain_run_id=record.id)
        specs = [EvaluationSpec(**e) for e in task["evaluations"]]
        for milestone in task["milestones"]:
            _evaluate_milestone(task, out, milestone, ckpt_dirs[milestone], specs, state, registry, save)
    except KeyboardInterrupt:
        save(status="interrupted", ended_at=time.time())
        return "interrupted"
    except Exception as err:  # noqa: BLE001 - the arm fails, the sweep goes on; the log has the traceback
        traceback.print_exc()
        save(status="failed", ended_at=time.time(), error=f"{type(err).__name__}: {err}")
        return "failed"
    save(status="completed", ended_at=time.time(), error=None)
    return "completed"


def _evaluate_milestone(task: dict[str, Any], out: Path, milestone: int, checkpoint: Path,
                        specs: list[EvaluationSpec], state: dict[str, Any], registry: Registry, save: Any) -> None:
    done: dict[str, EvalOutcome] = {}
    cache: dict[str, Any] = {}
    evaluations = state.setdefault("evaluations", {})
    for i, ev in enumerate(specs):
        key = eval_key(ev.label, milestone)
        previous = evaluations.get(key, {})
        settings = eval_settings(ev.to_dict(), task["probe_config"], task["probe_overrides"])
        problem = stale_evaluation(out, task["run_dir"], key, previous, settings)
        if problem:
            raise BlockMAEError(problem)
        if previous.get("status") == "completed" and previous.get("settings", settings) == settings \
                and _registered(registry, previous.get("run_id")):
            done[ev.label] = EvalOutcome(previous["run_id"], out / previous["run_dir"], previous["metrics"])
            continue
        rel = f"{task['run_dir']}/eval/{ev.label}-e{milestone}"
        ctx = EvalContext(out=out, arm=task["arm"], seed=task["seed"], milestone=milestone, checkpoint=checkpoint,
                          run_dir=out / rel, evaluation=ev, run_name=f"{task['sweep']}/{task['arm']}/{ev.label}-e{milestone}",
                          probe_config=task["probe_config"], probe_overrides=task["probe_overrides"],
                          earlier=specs[:i], done=done, cache=cache)
        evaluations[key] = {"name": ev.name, "label": ev.label, "milestone": milestone, "status": "running"}
        save()
        try:
            outcome = get_evaluation(ev.name).run(ctx)
        except BaseException as err:
            evaluations[key].update(status="interrupted" if isinstance(err, KeyboardInterrupt) else "failed",
                                    error=f"{type(err).__name__}: {err}")
            save()
            raise
        done[ev.label] = outcome
        evaluations[key].update(status="completed", run_id=outcome.run_id, metrics=outcome.metrics,
                                run_dir=_relative(outcome.run_dir, out), settings=settings)
        save()


def _registered(registry: Registry, run_id: str | None) -> bool:
    if run_id is None:
        return True  # an evaluation that records no registry run
    try:
        return registry.get(run_id).status == "completed"
    except BlockMAEError:
        return False


def _relative(path: Path, out: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(out.resolve()))
    except ValueError:
        return str(path)


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # outside training (which saves a checkpoint first), stop where we are


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m blockmae.sweep.runner <out>/<arm>/s<seed>/arm.json", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _terminate)
    try:
        status = run_arm(argv[0])
    except BlockMAEError as err:
        print(error_line(err), file=sys.stderr)
        return 2
    return {"completed": 0, "interrupted": 130}.get(status, 1)


if __name__ == "__main__":
    raise SystemExit(main())
