"""Export a study to TensorBoard's HParams view: one event folder per arm and seed, its hyperparameters the
ablated values plus the seed, its metrics the report's metrics (`tensorboard --logdir DIR`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from torch.utils.tensorboard import SummaryWriter

from blockmae.report.model import Study


def _hparam(value: Any) -> Any:
    """TensorBoard takes numbers, strings and booleans; anything else is shown as its text."""
    return value if isinstance(value, (int, float, str, bool)) else str(value)


def export_hparams(studies: Sequence[Study], folder: str | Path) -> list[Path]:
    """Write `<folder>/<study>/<arm>/s<seed>` event files; returns those folders."""
    written = []
    for study in studies:
        keys = study.metric_keys()
        for arm in study.arms:
            for seed, run in arm.runs.items():
                metrics = {}
                for key in keys:
                    value, _ = study.observation(run, key)
                    if value is not None:
                        metrics[f"report/{key}"] = value
                if not metrics:
                    continue
                target = Path(folder) / study.name / arm.name / f"s{seed}"
                hparams = {"arm": arm.name, "seed": seed, **{k: _hparam(v) for k, v in arm.values.items()}}
                with SummaryWriter(str(target)) as writer:
                    writer.add_hparams(hparams, metrics, run_name=".")
                written.append(target)
    return written
