"""`blockmae eval dtd --root DTD`: texture transfer, a linear probe on DTD beside the object-dataset probe.

For each official partition (``labels/{train,val,test}<N>.txt``; all that the root has, at most
``--partitions``), the standard linear probe (the object probe's head settings:
`evaluation.linear.train_linear_probe`) is fitted on the frozen features of train + val and scored on
test. Images are centre-cropped to a square and resized to the encoder's input (`data.dtd`). Reported:
top-1 per partition (95% Wilson interval), mean and standard deviation over partitions (t-interval of
the mean), the same encoder's linear-probe top-1 on its object dataset (the probe run's), and the ratio
DTD / object (also chance-corrected). Every image's features are computed once, whatever the number of
partitions (the partitions re-split the same images).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from blockmae.data.dtd import LAYOUT, PARTITIONS, find_data_dir, list_items
from blockmae.data.roots import resolve_root
from blockmae.config import number
from blockmae.diagnostics.context import Context
from blockmae.diagnostics.plugin import Diagnostic, DiagnosticResult, accuracy_row
from blockmae.diagnostics.runner import command
from blockmae.errors import BlockMAEError
from blockmae.evaluation.config import LinearConfig
from blockmae.evaluation.linear import train_linear_probe
from blockmae.report.stats import wilson_interval

# Student t quantiles t(0.975, df) for the mean over partitions (df = partitions - 1).
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def mean_interval(values: list[float]) -> tuple[float, float, float, float]:
    """(mean, sample std, 95% t-interval low, high); std and interval nan for one value."""
    v = np.asarray(values, dtype=float)
    mean = float(v.mean())
    if len(v) < 2:
        return mean, math.nan, math.nan, math.nan
    std = float(v.std(ddof=1))
    half = _T975.get(len(v) - 1, 1.96) * std / math.sqrt(len(v))
    return mean, std, mean - half, mean + half


class DTDTransfer(Diagnostic):
    name = "dtd"
    description = "DTD texture transfer: linear probe per official partition beside the object-dataset probe"
    needs_probe = True  # the object-dataset probe: its accuracy and head settings
    own_data = True  # --root is the DTD folder

    @classmethod
    def add_options(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--partitions", type=number(int, "1..10"), default=10,
                            help="use the first N official partitions the root has (default 10; 1 = quick run)")
        parser.add_argument("--dtd-epochs", type=number(int, ">=1"),
                            help="linear-probe epochs on DTD (default: the object probe's)")

    def evaluate(self, ctx: Context) -> DiagnosticResult:
        args = ctx.args
        if args.root is None:
            raise BlockMAEError("pass --root DIR: the DTD folder (images/ and labels/), e.g. ../shared/data/dtd-mini")
        if args.partitions < 1:
            raise BlockMAEError(f"--partitions must be >= 1, got {args.partitions}")
        data_dir, _ = resolve_root("dtd", args.root, find_data_dir, LAYOUT, None)
        available = [p for p in PARTITIONS if all((data_dir / "labels" / f"{s}{p}.txt").is_file()
                                                   for s in ("train", "val", "test"))]
        if not available:
            raise BlockMAEError(f"{data_dir / 'labels'} has no complete partition (train/val/test<N>.txt)")
        partitions = available[:args.partitions]
        cfg = LinearConfig(**dict(ctx.probe.config.get("linear", {}))) if ctx.probe.config else LinearConfig()
        if args.dtd_epochs is not None:
            cfg.epochs, cfg.warmup_epochs = args.dtd_epochs, min(cfg.warmup_epochs, args.dtd_epochs)
        cfg.validate()

        bank: dict[Path, torch.Tensor] = {}  # image file -> frozen features (each image encoded once)

        def features(split: str, partition: int) -> tuple[torch.Tensor, torch.Tensor, int]:
            items, classes = list_items(data_dir, split, partition)
            if any(path not in bank for path, _ in items):
                ds = ctx.dataset("dtd", split, args.root, partition=partition)
                feats = ctx.features(ds, desc=f"features dtd {split}{partition}")
                bank.update({path: f for (path, _), f in zip(items, feats)})
            x = torch.stack([bank[path] for path, _ in items])
            y = torch.tensor([label for _, label in items])
            return x, y, len(classes)

        rows = []
        for p in partitions:
            tx, ty, num_classes = features("train", p)
            vx, vy, _ = features("val", p)
            ex, ey, _ = features("test", p)
            result = train_linear_probe(torch.cat([tx, vx]), torch.cat([ty, vy]), ex, ey, num_classes, cfg,
                                        ctx.device)
            correct = round(result.final["top1"] * len(ey))
            rows.append(accuracy_row(p, correct, len(ey), top5=result.final["top5"], num_train=len(ty) + len(vy),
                                     num_classes=num_classes))
        chance = 1.0 / rows[0]["num_classes"]
        mean, std, low, high = mean_interval([r["top1"] for r in rows])
        obj_top1 = ctx.probe.metrics.get("top1")
        obj_n = int(ctx.probe.metrics.get("num_eval") or 0)
        obj_classes = int(ctx.probe.metrics.get("num_classes") or ctx.num_classes)
        obj_dataset = ctx.probe.meta.get("dataset")
        summary: dict[str, Any] = {"dtd_top1_mean": mean, "dtd_top1_std": std, "dtd_top1_low": low,
                                   "dtd_top1_high": high, "partitions": len(rows), "dtd_chance": chance}
        lines = [f"DTD ({rows[0]['num_classes']} classes, {len(rows)} partition(s) of {data_dir}; fit on train+val "
                 f"{rows[0]['num_train']} images, test {rows[0]['n']}):"]
        lines += [f"  partition {r['level']}: top-1 {r['top1']:.3f} [{r['top1_low']:.3f}, {r['top1_high']:.3f}]"
                  for r in rows]
        spread = f" +- {std:.3f} (std), mean's 95% CI [{low:.3f}, {high:.3f}]" if len(rows) > 1 else \
            f" (one partition: Wilson CI [{rows[0]['top1_low']:.3f}, {rows[0]['top1_high']:.3f}])"
        lines.append(f"  mean top-1 {mean:.3f}{spread}")
        if obj_top1 is not None:
            obj = wilson_interval(obj_top1, obj_n)
            obj_chance = 1.0 / obj_classes
            ratio = mean / obj_top1 if obj_top1 > 0 else math.nan
            above = (mean - chance) / (obj_top1 - obj_chance) if obj_top1 > obj_chance else math.nan
            summary.update({"object_top1": obj_top1, "object_top1_low": obj.low, "object_top1_high": obj.high,
                            "object_dataset": obj_dataset, "object_num_eval": obj_n, "dtd_to_object_ratio": ratio,
                            "dtd_to_object_ratio_above_chance": above})
            lines.append(f"  object dataset ({obj_dataset}, probe run {ctx.probe.run_id}): top-1 {obj_top1:.3f} "
                         f"[{obj.low:.3f}, {obj.high:.3f}] on {obj_n} images")
            lines.append(f"  DTD / object: {ratio:.3f} (above chance: {above:.3f}); a texture-reliant encoder "
                         f"is expected to score relatively high here")
        ordered = {k: summary[k] for k in ("dtd_top1_mean", "dtd_top1_std") if k in summary}
        ordered.update({k: summary[k] for k in ("object_top1", "dtd_to_object_ratio") if k in summary})
        ordered.update(summary)
        self._figure(ctx, rows, summary, chance)
        settings = {"root": str(data_dir), "partitions": partitions, "available_partitions": available,
                    "linear": vars(cfg), "image_size": ctx.image_size}
        return DiagnosticResult(settings, {"partitions": rows}, ordered, lines)

    @staticmethod
    def _figure(ctx: Context, rows: list[dict[str, Any]], summary: dict[str, Any], chance: float) -> None:
        import matplotlib  # heavy: only when a figure is drawn

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # heavy: only when a figure is drawn

        bars = [dict(r, label=f"DTD {r['level']}") for r in rows]
        if "object_top1" in summary:
            bars.append({"label": f"object: {summary['object_dataset']}", "top1": summary["object_top1"],
                         "top1_low": summary["object_top1_low"], "top1_high": summary["object_top1_high"],
                         "n": summary["object_num_eval"]})
        fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(bars) + 2), 3.8))
        x = np.arange(len(bars))
        ax.bar(x, [b["top1"] for b in bars],
               yerr=[[b["top1"] - b["top1_low"] for b in bars], [b["top1_high"] - b["top1"] for b in bars]],
               capsize=3, color=["tab:orange"] * len(rows) + ["tab:blue"] * (len(bars) - len(rows)))
        ax.axhline(summary["dtd_top1_mean"], color="tab:orange", linestyle="-", linewidth=1,
                   label=f"DTD mean {summary['dtd_top1_mean']:.3f}")
        ax.axhline(chance, color="grey", linestyle="--", linewidth=1, label=f"DTD chance {chance:.3f}")
        ax.set_xticks(x, [b["label"] for b in bars], rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("linear-probe top-1 (95% Wilson)")
        ax.set_ylim(0, 1)
        ax.set_title("DTD transfer beside the object dataset")
        ax.legend(fontsize=8)
        ctx.save_figure("dtd_transfer", fig, [{k: v for k, v in b.items()} for b in bars])


add_arguments, run = command(DTDTransfer)
