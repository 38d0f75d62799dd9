"""`blockmae sweep plan | run | status SPEC [--out DIR]` (docs/ablations.md).

The command modules (cli_plan, cli_run, cli_status) are thin: the work is here.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from blockmae.config import number
from blockmae.lock import RunLock
from blockmae.errors import BlockMAEError
from blockmae.fileio import claim_output_dir, write_json_atomic
from blockmae.sweep import executors
from blockmae.sweep.executors import EXECUTORS
from blockmae.sweep.plan import format_plan, measured_rates
from blockmae.sweep.load import load_spec
from blockmae.sweep.spec import SweepSpec
from blockmae.sweep.state import (
    PLAN_NAME, TASK_NAME, arm_task, check_evaluations_current, check_identity, effective_status, plan_record,
    read_json, read_state, sweep_record, write_plan, write_sweep_json,
)
from blockmae.text import table

DEFAULT_OUT = Path("outputs") / "sweeps"
SWEEP_KIND = "sweep"  # fileio.output_kind's name for a sweep folder


def add_common(parser: argparse.ArgumentParser, out_help: str) -> None:
    parser.add_argument("spec", metavar="SPEC", help="sweep spec: a file or a shipped name (e.g. ablations/block_size)")
    parser.add_argument("--out", metavar="DIR", help=out_help)


def out_dir(args: argparse.Namespace, spec: SweepSpec) -> Path:
    return Path(args.out) if args.out else DEFAULT_OUT / spec.name


def check_out(spec: SweepSpec, out: Path) -> None:
    """Refuse a folder that holds another sweep, or arms made from another version of this spec."""
    plan = out / PLAN_NAME
    if plan.is_file():
        old = read_json(plan).get("name")
        if old != spec.name:
            raise BlockMAEError(f"{out} holds the sweep '{old}', not '{spec.name}'; pass another --out")
    elif out.is_dir() and any(p.name != "registry.sqlite" for p in out.iterdir()):
        raise BlockMAEError(f"{out} is not empty and holds no sweep ({PLAN_NAME} missing); pass another --out")
    check_identity(spec, out)
    check_evaluations_current(spec, out)


def statuses(spec: SweepSpec, out: Path) -> dict[str, str]:
    wanted = {a["run_dir"]: a["evaluations"] for a in plan_record(spec)["arms"]}
    return {arm.key: effective_status(read_state(out, arm.run_dir), wanted[arm.run_dir]) for arm in spec.arms()}


# ---- plan -------------------------------------------------------------------------------------------

def plan_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Print the arms of a sweep spec and what they cost (images to process; time at the rate "
                          "measured by earlier pretraining of the same model here), before anything runs. With --out, "
                          "also write DIR/sweep.json (all arms planned) and show the arms' progress there.")
    add_common(parser, "sweep folder: write its sweep.json and show each arm's status")
    parser.add_argument("--rates-from", action="append", default=[], metavar="DIR",
                        help="also read measured img/s from the registry in DIR (default: --out and outputs)")


def plan(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec)
    roots = [Path(r) for r in args.rates_from] + ([Path(args.out)] if args.out else []) + [Path("outputs")]
    states = None
    if args.out:
        out = Path(args.out)
        check_out(spec, out)
        out.mkdir(parents=True, exist_ok=True)
        write_plan(spec, out)
        states = statuses(spec, out)
    print(format_plan(spec, measured_rates(roots), states))
    return 0


# ---- run --------------------------------------------------------------------------------------------

def run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Run every arm of a sweep (pretraining, then the evaluations at each milestone). "
                          "Idempotent: completed arms are skipped, interrupted ones resume from their checkpoints, "
                          "failed ones rerun only with --retry-failed. A folder whose arms came from another version "
                          "of the spec is refused.")
    add_common(parser, "sweep folder (default: outputs/sweeps/<spec name>); its registry.sqlite records every run")
    parser.add_argument("--executor", choices=EXECUTORS, default="local",
                        help="local: a process per arm (default); slurm: a submitit job array; debug: inline")
    parser.add_argument("--retry-failed", action="store_true", help="rerun the arms that failed")
    local = parser.add_argument_group("local executor")
    local.add_argument("--slots", type=number(int, ">=1"), help="arms at once (default: 1 on a CPU, one per GPU place)")
    local.add_argument("--gpus", help="GPUs to use, e.g. 0,1 (default: CUDA_VISIBLE_DEVICES or all visible)")
    local.add_argument("--arms-per-gpu", type=number(int, ">=1"),
                       default=1, help="small arms sharing one GPU (default 1)")
    slurm = parser.add_argument_group("slurm executor (defaults from the spec's `slurm:` block)")
    slurm.add_argument("--partition")
    slurm.add_argument("--timeout-min", type=number(int, ">=1"),
                       help="per job; a timed-out arm is requeued from its checkpoint")
    slurm.add_argument("--max-parallel", type=number(int, ">=1"),
                       help="cap on array tasks running at once (array_parallelism)")
    slurm.add_argument("--gpus-per-task", type=number(int, ">=1"), help="GPUs per arm (gpus_per_node)")
    slurm.add_argument("--cluster", choices=("slurm", "local"),
                       help="submitit cluster (default: slurm if sbatch exists); local runs the jobs here (tests)")
    slurm.add_argument("--no-wait", action="store_true", help="submit and return; `sweep status` follows them")


def run(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec)
    out = out_dir(args, spec)
    claim_output_dir(out, SWEEP_KIND)
    check_out(spec, out)
    with RunLock(out):  # one `sweep run` per folder: a second would call the first one's arms failed
        return _run_locked(args, spec, out)


def _stop(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # SIGTERM as Ctrl-C: the executors stop their arms at a checkpoint


def _run_locked(args: argparse.Namespace, spec: SweepSpec, out: Path) -> int:
    for arm in spec.arms():
        write_json_atomic(out / arm.run_dir / TASK_NAME, arm_task(spec, arm))
    write_plan(spec, out)
    current = statuses(spec, out)
    todo, skipped, failed, busy = [], [], [], []
    for arm in spec.arms():
        status = current[arm.key]
        if status == "completed":
            skipped.append(arm.key)
        elif status == "failed" and not args.retry_failed:
            failed.append(arm.key)
        elif status == "running":
            busy.append(arm.key)
        else:
            todo.append(out / arm.run_dir / TASK_NAME)
    print(f"sweep {spec.name} in {out}: {len(spec.arms())} arms; {len(skipped)} completed (skipped), "
          f"{len(todo)} to run" + (f", {len(busy)} running elsewhere" if busy else "")
          + (f", {len(failed)} failed (rerun with --retry-failed: {', '.join(failed)})" if failed else ""), flush=True)
    results: dict[str, str] = {}
    if todo:
        bar = tqdm(total=len(todo), desc=f"sweep {spec.name}", unit="arm", dynamic_ncols=True,
                   disable=not sys.stderr.isatty())

        def on_done(task: Path, status: str) -> None:
            write_sweep_json(out)
            key = str(task.parent.relative_to(out))
            results[key] = status
            bar.update(1)
            bar.write(f"arm {key}: {status}" + (f" (log {task.parent / 'sweep.log'})" if status == "failed" else ""))

        previous = signal.signal(signal.SIGTERM, _stop)
        try:
            _execute(args, spec, out, todo, on_done)
        except KeyboardInterrupt:
            print(f"sweep {spec.name} interrupted: the running arms saved a checkpoint and stopped; rerun the same "
                  f"command to resume", file=sys.stderr)
            return 130
        finally:
            signal.signal(signal.SIGTERM, previous)
            bar.close()
            write_sweep_json(out)
    record = sweep_record(out)
    done = sum(a["status"] == "completed" for a in record["arms"])
    print(f"{done}/{len(record['arms'])} arms completed; {out / 'sweep.json'}")
    bad = [k for k, s in results.items() if s != "completed"] + failed
    if args.executor == "slurm" and args.no_wait:
        return 0
    return 1 if bad else 0


def _execute(args: argparse.Namespace, spec: SweepSpec, out: Path, todo: list[Path], on_done: Any) -> None:
    if args.executor == "debug":
        executors.run_debug(todo, on_done)
    elif args.executor == "local":
        gpus = [g.strip() for g in args.gpus.split(",") if g.strip()] if args.gpus else executors.visible_gpus()
        executors.run_local(todo, on_done, executors.slot_devices(args.slots, gpus, args.arms_per_gpu))
    else:
        settings = dict(spec.slurm)
        for key, value in (("partition", args.partition), ("timeout_min", args.timeout_min),
                           ("array_parallelism", args.max_parallel), ("gpus_per_node", args.gpus_per_task)):
            if value is not None:
                settings[key] = value
        executors.run_slurm(todo, on_done, out, settings, cluster=args.cluster, wait=not args.no_wait)


# ---- status -----------------------------------------------------------------------------------------

def status_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = "Show each arm's progress and each evaluation's result in a sweep folder."
    add_common(parser, "sweep folder (default: outputs/sweeps/<spec name>)")
    parser.add_argument("--json", action="store_true", help="print sweep.json as it is now")


def status(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec)
    out = out_dir(args, spec)
    if not (out / PLAN_NAME).is_file():
        raise BlockMAEError(f"no sweep in {out}; start it with: blockmae sweep run {args.spec} --out {out}")
    check_out(spec, out)
    write_plan(spec, out)  # the spec's current evaluations
    record = sweep_record(out)
    if args.json:
        print(json.dumps(record, indent=2))
        return 0
    columns = list(dict.fromkeys(f"{e['name']}@{e['milestone']}" for a in record["arms"] for e in a["evaluations"]))
    rows = []
    for arm in record["arms"]:
        cells = {f"{e['name']}@{e['milestone']}": _cell(e) for e in arm["evaluations"]}
        rows.append([arm["run_dir"], arm["status"], *[cells.get(c, "-") for c in columns]])
    print(table(["arm", "status", *columns], rows))
    counts: dict[str, int] = {}
    for arm in record["arms"]:
        counts[arm["status"]] = counts.get(arm["status"], 0) + 1
    evals = [e for a in record["arms"] for e in a["evaluations"]]
    print("arms: " + ", ".join(f"{n} {s}" for s, n in counts.items()) + f" (of {len(record['arms'])}); evaluations: "
          f"{sum(e['status'] == 'completed' for e in evals)}/{len(evals)} completed")
    return 0


def _cell(evaluation: dict[str, Any]) -> str:
    if evaluation["status"] != "completed":
        return evaluation["status"]
    metrics = evaluation["metrics"]
    for key in ("top1", "shape_bias"):
        if key in metrics:
            return f"{key} {metrics[key]:.3f}"
    first = next(((k, v) for k, v in metrics.items() if k != "n"), None)
    return f"{first[0]} {first[1]:.3g}" if first else "done"
