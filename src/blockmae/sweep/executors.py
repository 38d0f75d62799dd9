"""Where the arms run: `debug` (inline), `local` (processes, N slots, GPUs via CUDA_VISIBLE_DEVICES) and
`slurm` (submitit job arrays, requeued on preemption and timeout).

Every executor runs the same thing per arm, `blockmae.sweep.runner` on the arm's task file, and calls
`on_done(task_path, status)` as arms finish (the CLI refreshes sweep.json and prints a line).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

import blockmae
from blockmae.errors import BlockMAEError
from blockmae.sweep.runner import run_arm

EXECUTORS = ("local", "slurm", "debug")
OnDone = Callable[[Path, str], None]
EXIT_STATUS = {0: "completed", 130: "interrupted"}
LOG_NAME = "sweep.log"


def worker_command(task_path: Path) -> list[str]:
    return [sys.executable, "-m", "blockmae.sweep.runner", str(task_path)]


# ---- debug ------------------------------------------------------------------------------------------

def run_debug(tasks: Sequence[Path], on_done: OnDone) -> None:
    """Inline, one arm after the other, in this process (tests, pdb)."""
    for task in tasks:
        on_done(task, run_arm(task))


# ---- local ------------------------------------------------------------------------------------------

def slot_devices(slots: int | None, gpus: Sequence[str] | None, arms_per_gpu: int) -> list[str | None]:
    """CUDA_VISIBLE_DEVICES of each slot (None: leave the environment as it is, e.g. on a CPU).

    With GPUs each holds `arms_per_gpu` slots (small arms do not fill a big GPU); `slots` defaults to all
    of them, and more slots than GPU places is an error rather than a silent overload."""
    if arms_per_gpu < 1:
        raise BlockMAEError(f"--arms-per-gpu must be >= 1, got {arms_per_gpu}")
    if slots is not None and slots < 1:
        raise BlockMAEError(f"--slots must be >= 1, got {slots}")
    if not gpus:
        if arms_per_gpu != 1:
            raise BlockMAEError("--arms-per-gpu needs GPUs (none visible; name them with --gpus 0,1)")
        return [None] * (slots or 1)
    places = [g for g in gpus for _ in range(arms_per_gpu)]
    slots = slots or len(places)
    if slots > len(places):
        raise BlockMAEError(f"--slots {slots} is more than {len(gpus)} GPU(s) x --arms-per-gpu {arms_per_gpu}")
    # Spread the slots over the GPUs first (slot i on GPU i mod G), then stack them.
    return [gpus[i % len(gpus)] for i in range(slots)]


def visible_gpus() -> list[str]:
    """The GPUs this process may use: CUDA_VISIBLE_DEVICES if set, else all that torch sees."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g for g in env.split(",") if g.strip()]
    try:
        return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    except Exception:  # noqa: BLE001 - no usable CUDA is the same as no GPU here
        return []


def run_local(tasks: Sequence[Path], on_done: OnDone, devices: Sequence[str | None]) -> None:
    """One process per arm, at most len(devices) at once; each slot's process sees only its GPU."""
    pending = list(tasks)
    running: dict[int, tuple[subprocess.Popen, Path, Any]] = {}
    try:
        while pending or running:
            for slot, device in enumerate(devices):
                if slot in running or not pending:
                    continue
                task = pending.pop(0)
                env = dict(os.environ)
                if device is not None:
                    env["CUDA_VISIBLE_DEVICES"] = device
                log = open(task.parent / LOG_NAME, "a")  # noqa: SIM115 - closed when the process ends
                proc = subprocess.Popen(worker_command(task), env=env, stdout=log, stderr=subprocess.STDOUT)
                running[slot] = (proc, task, log)
            time.sleep(0.2)
            for slot, (proc, task, log) in list(running.items()):
                code = proc.poll()
                if code is None:
                    continue
                log.close()
                del running[slot]
                on_done(task, EXIT_STATUS.get(code, "failed"))
    except KeyboardInterrupt:
        # Ctrl-C: every arm saves a checkpoint (the engine's SIGTERM path) before we leave.
        for proc, _, _ in running.values():
            proc.send_signal(signal.SIGTERM)
        for proc, task, log in running.values():
            proc.wait()
            log.close()
            on_done(task, "interrupted")
        raise


# ---- slurm (submitit) -------------------------------------------------------------------------------

SLURM_KEYS = ("partition", "timeout_min", "gpus_per_node", "cpus_per_task", "mem_gb", "array_parallelism",
              "account", "qos", "constraint", "signal_delay_s", "max_num_timeout")
GRACE_S = 60.0  # how long a preempted arm may take to write its checkpoint


try:  # submitit is the optional extra `slurm`; the other executors do not need it
    from submitit.helpers import Checkpointable as _Checkpointable  # optional: the slurm executor only
except ImportError:  # pragma: no cover - run_slurm says how to install it
    _Checkpointable = object  # type: ignore[misc,assignment]


class ArmJob(_Checkpointable):
    """The submitit callable: runs one arm's process from the code snapshot; on preemption or timeout
    (submitit's USR2, which NCCL leaves alone, unlike USR1) it asks the arm to checkpoint (SIGTERM: the
    engine saves `last` at the next step boundary) and requeues itself; the requeued job resumes from
    that checkpoint."""

    def __init__(self, code_dir: str | None) -> None:
        self.code_dir = code_dir
        self._proc: subprocess.Popen | None = None

    def __call__(self, task_path: str) -> str:
        env = dict(os.environ)
        if self.code_dir:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [self.code_dir, env.get("PYTHONPATH")]))
        task = Path(task_path)
        with open(task.parent / LOG_NAME, "a") as log:
            self._proc = subprocess.Popen(worker_command(task), env=env, stdout=log, stderr=subprocess.STDOUT)
            code = self._proc.wait()
        self._proc = None
        status = EXIT_STATUS.get(code, "failed")
        if status == "failed":
            raise RuntimeError(f"arm {task.parent} failed (exit {code}); see {task.parent / LOG_NAME}")
        return status

    def checkpoint(self, task_path: str) -> Any:
        import submitit  # optional: the slurm executor only

        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
        return submitit.helpers.DelayedSubmission(type(self)(self.code_dir), task_path)

    def __getstate__(self) -> dict[str, Any]:
        return {"code_dir": self.code_dir}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.code_dir, self._proc = state["code_dir"], None


def snapshot_code(out: Path) -> Path:
    """Copy this blockmae package into <out>/code/<stamp>/ so that queued and requeued jobs run the code of
    the submission, whatever happens to the checkout meanwhile."""
    package = Path(blockmae.__file__).resolve().parent
    target = out / "code" / time.strftime("%Y%m%d-%H%M%S")
    shutil.copytree(package, target / "blockmae", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return target


def run_slurm(tasks: Sequence[Path], on_done: OnDone, out: Path, settings: dict[str, Any], cluster: str | None = None,
              wait: bool = True) -> list[Any]:
    """Submit the arms as one job array (at most `array_parallelism` at once); with `wait`, follow them."""
    try:
        import submitit  # optional: the slurm executor only
    except ImportError:
        raise BlockMAEError("the slurm executor needs submitit: pip install 'blockmae[slurm]'") from None
    unknown = set(settings) - set(SLURM_KEYS)
    if unknown:
        raise BlockMAEError(f"unknown slurm setting '{sorted(unknown)[0]}'; valid: {', '.join(SLURM_KEYS)}")
    code_dir = snapshot_code(out)
    executor = submitit.AutoExecutor(folder=str(out / "slurm" / "%j"), cluster=cluster)
    params = dict(settings)
    parallelism = params.pop("array_parallelism", None)
    timeout_min = params.pop("timeout_min", 24 * 60)
    prefixed = {("slurm_" + k if k in ("partition", "account", "qos", "constraint") else k): v for k, v in params.items()}
    executor.update_parameters(name=f"blockmae-sweep-{out.name}", timeout_min=timeout_min, tasks_per_node=1,
                               nodes=1, **prefixed)
    if parallelism is not None and executor.cluster == "slurm":
        executor.update_parameters(slurm_array_parallelism=int(parallelism))
    jobs = executor.map_array(ArmJob(str(code_dir)), [str(t) for t in tasks])
    print(f"submitted {len(jobs)} arm(s) as job array {jobs[0].job_id.split('_')[0] if jobs else '-'} "
          f"(code snapshot {code_dir})", flush=True)
    if wait:
        for job, task in zip(jobs, tasks):
            try:
                status = job.result()
            except Exception:  # noqa: BLE001 - the arm's own log and state say why
                status = "failed"
            on_done(Path(task), status)
    return jobs
