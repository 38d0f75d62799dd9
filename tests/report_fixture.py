"""A realistic sweep folder for the report tests, written as `blockmae sweep run` would (the contract in
docs/report.md): sweep.json plus metrics.jsonl, env.json, config.yaml and figures per arm and seed.

Three arms (block 1, 2, 4) x seeds 1, 2, with seed 2 of b4 missing; linear probe at milestones 2 and 3
(with per-image predictions at 3), a low-pass diagnostic with curves in results.json."""

from __future__ import annotations

import json
import math
from pathlib import Path

ARMS = {"b1": 1, "b2": 2, "b4": 4}
SEEDS = (1, 2)
MISSING = ("b4", 2)
IMAGES = 200


def linear_top1(block: int, seed: int, milestone: int) -> float:
    """Block 2 is clearly better than block 1 on every seed; block 4 sits close to block 1."""
    base = {1: 0.30, 2: 0.40, 4: 0.31}[block]
    noise = {(1, 1): 0.0, (1, 2): 0.02, (2, 1): 0.0, (2, 2): 0.03, (4, 1): 0.005}[(block, seed)]
    return round(base + noise - 0.05 * (3 - milestone), 4)


def lowpass_curve(block: int, seed: int) -> dict:
    levels = [0.0, 1.0, 2.0, 4.0, 8.0]
    clean = linear_top1(block, seed, 3)
    acc = [round(clean * math.exp(-lv / (2.0 + block)), 4) for lv in levels]
    return {"x": levels, "y": acc, "lo": [a - 0.03 for a in acc], "hi": [a + 0.03 for a in acc],
            "x_label": "sigma (px)", "y_label": "top-1"}


def _png(path: Path, shade: int) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", (96, 32), (shade, 120, 255 - shade))
    for x in range(0, 96, 8):
        for y in range(32):
            img.putpixel((x, y), (20, 20, 20))
    img.save(path)


def make_sweep(root: Path, name: str = "block_size") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    arms = []
    for arm, block in ARMS.items():
        for seed in SEEDS:
            if (arm, seed) == MISSING:
                continue
            run_dir = root / arm / f"s{seed}"
            run_dir.mkdir(parents=True)
            with open(run_dir / "metrics.jsonl", "w") as fh:
                for step in range(1, 13):
                    loss = 1.0 + 0.5 * math.exp(-step / (3 + block)) + 0.01 * seed
                    fh.write(json.dumps({"kind": "step", "epoch": step / 4, "step": step, "loss": loss}) + "\n")
                    if step % 4 == 0:
                        fh.write(json.dumps({"kind": "epoch", "epoch": step // 4, "loss": loss}) + "\n")
            (run_dir / "env.json").write_text(json.dumps({
                "git_commit": "0123abc", "python": "3.11.7", "seed": seed, "device": {"type": "cpu"},
                "packages": {"torch": "2.14.1", "timm": "1.0.31"}}))
            (run_dir / "config.yaml").write_text(f"mask:\n  block: {block}\n  ratio: 0.75\nrun:\n  seed: {seed}\n")
            for epoch in (2, 3):
                _png(run_dir / "figures" / f"reconstructions_epoch_{epoch:04d}.png", 40 * block + 20 * epoch)
            evaluations = []
            for milestone in (2, 3):
                top1 = linear_top1(block, seed, milestone)
                eval_dir = run_dir / "eval" / f"linear-e{milestone}"
                eval_dir.mkdir(parents=True)
                if milestone == 3:
                    correct = [(i * 7919 + seed * 31 + block) % 1000 < 1000 * top1 for i in range(IMAGES)]
                    (eval_dir / "predictions.json").write_text(json.dumps({"correct": correct}))
                evaluations.append({"name": "linear", "milestone": milestone, "status": "completed",
                                    "run_id": f"lin-{arm}-{seed}-{milestone}",
                                    "run_dir": f"{arm}/s{seed}/eval/linear-e{milestone}",
                                    "metrics": {"top1": top1, "top5": round(min(1.0, top1 + 0.3), 4), "n": IMAGES}})
            lp_dir = run_dir / "eval" / "lowpass-e3"
            lp_dir.mkdir(parents=True)
            curve = lowpass_curve(block, seed)
            (lp_dir / "results.json").write_text(json.dumps({"curves": {"lowpass": curve},
                                                             "summary": {"auc": sum(curve["y"]) / 5}}))
            evaluations.append({"name": "lowpass", "milestone": 3, "status": "completed", "run_id": f"lp-{arm}-{seed}",
                                "run_dir": f"{arm}/s{seed}/eval/lowpass-e3",
                                "metrics": {"auc": round(sum(curve["y"]) / 5, 4)}})
            arms.append({"arm": arm, "seed": seed, "hash": f"h{block}{seed}", "values": {"mask.block": block},
                         "run_dir": f"{arm}/s{seed}", "status": "completed", "pretrain_run_id": f"pre-{arm}-{seed}",
                         "evaluations": evaluations})
    (root / "sweep.json").write_text(json.dumps({
        "schema": 1, "name": name, "spec": f"configs/ablations/{name}.yaml", "title": "Block size",
        "base_config": "configs/pretrain_block.yaml", "ablated": ["mask.block"], "baseline": "b1",
        "milestone_mode": "snapshots", "arms": arms}, indent=1))
    return root
