"""The quickstart's output folder: refuse foreign content, resume our own; one progress line per stage."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

from omegaconf import OmegaConf

from blockmae.config import differences, to_dict, to_yaml
from blockmae.errors import BlockMAEError
from blockmae.fileio import output_kind, write_text_atomic

CONFIG_NAME = "quickstart.yaml"
STATE_NAME = "quickstart_state.json"


class Stages:
    """Completed stages of a quickstart folder: stage key -> registry run id, plus the measured sizes and
    wall times (quickstart_state.json)."""

    def __init__(self, out: Path, registry: Any) -> None:
        self.path = out / STATE_NAME
        self.registry = registry
        self.data: dict[str, Any] = {}
        if self.path.is_file():
            try:
                self.data = json.loads(self.path.read_text())
            except (ValueError, UnicodeDecodeError):
                self.data = None  # type: ignore[assignment]
            if not isinstance(self.data, dict):
                raise BlockMAEError(f"{self.path} is unreadable (truncated or damaged); delete it to redo the "
                                    "stages from the registry, or use a new --out folder")

    def done(self, key: str) -> str | None:
        """The stage's run id if its registry run completed, else None."""
        run_id = self.data.get("runs", {}).get(key)
        if run_id is None:
            return None
        try:
            return run_id if self.registry.get(run_id).status == "completed" else None
        except BlockMAEError:
            return None

    def run_dir(self, key: str) -> Path:
        """The folder of a completed stage's registry run."""
        run_id = self.done(key)
        if run_id is None:
            raise BlockMAEError(f"internal: stage {key} has not completed")
        return Path(self.registry.get(run_id).run_dir)

    def record(self, key: str, run_id: str) -> None:
        self.data.setdefault("runs", {})[key] = run_id
        self.save()

    def add_seconds(self, label: str, seconds: float) -> None:
        timed = self.data.setdefault("seconds", {})
        timed[label] = timed.get(label, 0.0) + seconds
        self.save()

    def save(self) -> None:
        write_text_atomic(self.path, json.dumps(self.data, indent=1, sort_keys=True))


def prepare_output(out: Path, cfg: Any) -> bool:
    """Create or check the output folder; True when resuming an earlier quickstart with the same settings."""
    stored = out / CONFIG_NAME
    wanted = to_dict(cfg)
    if out.exists() and not out.is_dir() or any(p.is_file() for p in out.parents):
        raise BlockMAEError(f"--out {out}: a file is in the way (a folder is needed); use another --out")
    if stored.is_file():
        previous = OmegaConf.to_container(OmegaConf.load(stored), resolve=True)
        diffs = differences(previous, wanted)
        if diffs:
            raise BlockMAEError(
                f"{out} holds a quickstart with other settings ({'; '.join(diffs[:3])}); "
                f"use a new --out folder or delete {out} to start over"
            )
        return True
    if output_kind(out) is not None:  # anything but the lock of this run (or an empty output root)
        raise BlockMAEError(f"{out} exists and is not a quickstart folder (no {CONFIG_NAME}); use a new or empty --out")
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(stored, to_yaml(cfg))
    return False


class Progress:
    """One line per stage, `[k/n elapsed] stage: what happened`; the wall time of each lands in `stages`."""

    def __init__(self, total: int, stages: Stages) -> None:
        self.total, self.count, self.start, self.stages = total, 0, time.monotonic(), stages

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def _clock(self) -> str:
        s = int(self.elapsed)
        return f"{s // 60}:{s % 60:02d}"

    def skip(self) -> None:
        self.count += 1

    def run(self, label: str, fn: Callable[[], str], timing: str | None = None) -> None:
        """Run one stage; its seconds are added to the state under `timing` (default: the label)."""
        self.count += 1
        print(f"[{self.count}/{self.total} {self._clock()}] {label} ...", file=sys.stderr, flush=True)
        t0 = time.monotonic()
        summary = fn()
        seconds = time.monotonic() - t0
        self.stages.add_seconds(timing or label, seconds)
        print(f"[{self.count}/{self.total} {self._clock()}] {label}: {summary} ({seconds:.0f} s)",
              file=sys.stderr, flush=True)
