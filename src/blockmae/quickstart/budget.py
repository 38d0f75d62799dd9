"""Stage: fit your arms' pretraining (--train) to the time budget (CPU quickstart).

The answer (reference encoders) runs first and is not counted; your run gets `budget_seconds`: its
pretraining gets that, less the time its evaluation will need (measured on the answer's encoders) and a
margin. The speed is measured on this machine with a short engine run, and the sizes are kept in the
folder's state so that a resumed quickstart trains the same arms.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

from blockmae.engine.logs import read_metrics
from blockmae.engine.pretrain import pretrain
from blockmae.errors import BlockMAEError
from blockmae.quickstart.config import QuickstartConfig, arm_pretrain_config
from blockmae.quickstart.folder import Progress, Stages

# Without a measured evaluation time (no answer stage) pretraining gets this share of what is left: the
# probes, figures and data generation took about half as long as the pretraining on a 2-core CPU.
PRETRAIN_SHARE = 0.6
# The speed reading varied by about 20% between runs here; the figures and report need some seconds too.
SPEED_MARGIN = 0.8
REPORT_SECONDS = 10.0


def measure_speed(cfg: QuickstartConfig, out: Path) -> float:
    """Pretraining images/s on this machine: a two-epoch engine run on a few batches, read in its second
    epoch (the first pays for start-up: CUDA context, kernel selection, allocator growth)."""
    base = cfg.pretrain
    probe = arm_pretrain_config(base, max(cfg.blocks), out, out / "calibration")
    probe.train.epochs, probe.data.num_images, probe.run.registry = 2, 4 * base.train.batch_size, False
    probe.optim.warmup_epochs = 0
    run_dir = pretrain(probe)
    speeds = [r["img_per_s"] for r in read_metrics(run_dir, "epoch") if r.get("img_per_s")]
    if not speeds:
        raise BlockMAEError(f"could not read the pretraining speed from {run_dir / 'metrics.jsonl'}")
    return float(speeds[-1])


def fit_sizes(images_per_arm: float, max_epochs: int, max_images: int, batch_size: int) -> tuple[int, int]:
    """(epochs, images) with epochs * images close to `images_per_arm`, neither above the config's.

    The epochs are rounded up and the image set shrunk to match, so the budget is filled (for MAE on
    generated data, images seen matter more than distinct images); at least 4 batches of images."""
    epochs = max(1, min(max_epochs, math.ceil(images_per_arm / max_images)))
    images = min(max_images, max(4 * batch_size, int(images_per_arm // epochs)))
    return epochs, images


def pretraining_seconds(seconds_left: float, evaluation_seconds: float | None) -> float:
    """Seconds the arms' pretraining may take, of `seconds_left`, when evaluating all arms afterwards is
    expected to take `evaluation_seconds` (None: unknown, use PRETRAIN_SHARE)."""
    if evaluation_seconds is None:
        return max(0.0, PRETRAIN_SHARE * seconds_left)
    return max(0.0, SPEED_MARGIN * (seconds_left - evaluation_seconds - REPORT_SECONDS))


def resolve_sizes(cfg: QuickstartConfig, out: Path, stages: Stages, progress: Progress,
                  seconds_left: float, evaluation_seconds: float | None) -> QuickstartConfig:
    """The settings with the arms' epochs and images fitted to the budget (measured once, then kept)."""
    if cfg.budget_seconds is None:
        return cfg
    if "sizes" not in stages.data:
        def calibrate() -> str:
            ips = measure_speed(cfg, out)
            seconds = pretraining_seconds(seconds_left, evaluation_seconds)
            base = cfg.pretrain
            epochs, num_images = fit_sizes(seconds * ips / len(cfg.blocks), base.train.epochs,
                                           int(base.data.num_images or 4000), base.train.batch_size)
            stages.data["sizes"] = {"epochs": epochs, "num_images": num_images, "img_per_s": ips,
                                    "pretrain_seconds": seconds, "seconds_left": seconds_left,
                                    "evaluation_seconds": evaluation_seconds}
            stages.save()
            return (f"{ips:.0f} img/s, {seconds:.0f} s for pretraining -> {epochs} epochs x {num_images} "
                    "images per arm")

        progress.run("fit the pretraining to the budget", calibrate)
    else:
        progress.skip()
    sizes = stages.data["sizes"]
    cfg = copy.deepcopy(cfg)
    cfg.pretrain.train.epochs = int(sizes["epochs"])
    cfg.pretrain.data.num_images = int(sizes["num_images"])
    cfg.pretrain.optim.warmup_epochs = min(cfg.pretrain.optim.warmup_epochs, max(0.0, cfg.pretrain.train.epochs / 4))
    return cfg
