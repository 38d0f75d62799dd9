"""`blockmae eval stylized`: stylised transfer, from a Stylized-ImageNet folder and built in.

* ``--stylized-root DIR`` (when the user has Stylized-ImageNet, made by rgeirhos/Stylized-ImageNet:
  ImageNet layout ``[val/]<wnid>/*.png``): the folders of the probe's classes (Tiny-ImageNet's 200 wnids;
  for other datasets folders named like the probe's classes), centre-cropped and resized to the input;
  top-1/top-5 beside the clean evaluation images and the drop, with 95% intervals (Wilson; the drop's
  is Newcombe's hybrid score interval, the two image sets being independent).
* Built in, offline, no style-transfer weights: amplitude-phase recombination
  (:func:`blockmae.diagnostics.filters.amplitude_swap`). Each evaluation image keeps its Fourier phase
  and takes an amplitude spectrum interpolated by alpha towards a texture donor's: a DTD image
  (``--donor dtd --donor-root DTD``) or another evaluation image of another class (``--donor val``,
  default). Donors are drawn once per (image, seed). Accuracy (of the image's own class) against alpha.
* Phase-vs-amplitude cue conflict, from the evaluation images themselves: the phase of an image of class
  A with the full amplitude (alpha = 1) of an image of class B != A. Phase bias = decisions for A /
  (decisions for A + decisions for B), with a bootstrap 95% interval
  (`evaluation.shape_bias.shape_bias_from_decisions`, phase in the role of shape).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import torch

from blockmae.config import number
from blockmae.diagnostics import filters
from blockmae.data.augment import unit_float
from blockmae.diagnostics.context import Context
from blockmae.diagnostics.curves import accuracy_figure, curve_summary
from blockmae.diagnostics.plugin import Diagnostic, DiagnosticResult, accuracy_row, correct_count
from blockmae.diagnostics.runner import command
from blockmae.errors import BlockMAEError
from blockmae.evaluation.metrics import topk_correct
from blockmae.evaluation.shape_bias import shape_bias_from_decisions
from blockmae.fileio import write_text_atomic
from blockmae.report.stats import wilson_interval

DEFAULT_ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)


def conflict_donors(labels: torch.Tensor, seed: int, pool_labels: torch.Tensor | None = None) -> torch.Tensor:
    """For each image i a donor index j into the pool (default: the images themselves) whose labels differ
    from i's in every column (labels (N,) or (N, K)); drawn from `seed` alone, so the same for any batch
    size. Raises when some image has no possible donor."""
    labels = labels.view(len(labels), -1).cpu()
    pool = labels if pool_labels is None else pool_labels.view(len(pool_labels), -1).cpu()
    gen = torch.Generator().manual_seed(seed)
    donors = torch.randint(len(pool), (len(labels),), generator=gen)
    for _ in range(1000):  # rejection: redraw the donors that share a label
        clash = (pool[donors] == labels).any(dim=1)
        if not clash.any():
            return donors
        donors[clash] = torch.randint(len(pool), (int(clash.sum()),), generator=gen)
    raise BlockMAEError("cannot find donors of another class for every image (one class only?)")


def random_donors(n: int, pool_size: int, seed: int) -> torch.Tensor:
    """For each of n images a donor index into a pool of `pool_size` images, from `seed` alone."""
    return torch.randint(pool_size, (n,), generator=torch.Generator().manual_seed(seed))


def phase_amplitude_bias(decisions: torch.Tensor, phase_labels: torch.Tensor, amplitude_labels: torch.Tensor,
                         seed: int = 0) -> dict[str, Any]:
    """Phase bias of decisions on phase(A) + amplitude(B) images, with its bootstrap 95% interval."""
    result = shape_bias_from_decisions(decisions, phase_labels, amplitude_labels, seed=seed)
    return {"phase_bias": result.shape_bias, "phase_bias_low": result.low, "phase_bias_high": result.high,
            "n_images": result.n_images, "n_phase": result.n_shape, "n_amplitude": result.n_texture,
            "n_neither": result.n_neither, "frac_phase": result.frac_shape, "frac_amplitude": result.frac_texture,
            "frac_neither": result.frac_neither}


def difference_interval(p1: float, n1: int, p2: float, n2: int) -> tuple[float, float]:
    """Newcombe's hybrid score 95% interval of p1 - p2 (independent samples), from the Wilson intervals."""
    a, b = wilson_interval(p1, n1), wilson_interval(p2, n2)
    d = p1 - p2
    return d - math.hypot(p1 - a.low, b.high - p2), d + math.hypot(a.high - p1, p2 - b.low)


class Stylized(Diagnostic):
    name = "stylized"
    description = "stylised transfer: Stylized-ImageNet or amplitude-phase recombination, phase-vs-amplitude bias"
    needs_probe = True

    @classmethod
    def add_options(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--stylized-root", help="Stylized-ImageNet folder ([val/]<wnid>/*.png); off by default")
        parser.add_argument("--donor", choices=("val", "dtd"), default="val",
                            help="amplitude donors of the alpha sweep: other evaluation images (default) or DTD")
        parser.add_argument("--donor-root", help="DTD root for --donor dtd")
        parser.add_argument("--alphas", nargs="+", type=number(float, "0..1"),
                            default=list(DEFAULT_ALPHAS), metavar="A",
                            help="amplitude interpolation strengths in [0, 1] (default: 0 0.25 0.5 0.75 1)")

    def evaluate(self, ctx: Context) -> DiagnosticResult:
        args = ctx.args
        if not args.alphas or any(not 0 <= a <= 1 for a in args.alphas):
            raise BlockMAEError(f"--alphas must lie in [0, 1], got {args.alphas}")
        if args.donor == "dtd" and not args.donor_root:
            raise BlockMAEError("--donor dtd needs --donor-root DIR (a DTD folder)")
        ds = ctx.dataset()
        chance = 1.0 / ctx.num_classes
        levels: dict[str, list[dict[str, Any]]] = {}
        summary: dict[str, Any] = {}
        lines = [f"stylized on {len(ds)} {ds.name} images at {ctx.image_size} px, chance {chance:.3f}"]

        # phase(A) + amplitude(B), B of another class: the cue conflict
        conflict = conflict_donors(ds.labels, ctx.seed)
        scores = ctx.scores(ds, self._swap(ds, conflict, 1.0, ctx), desc="phase-amplitude conflict")
        bias = phase_amplitude_bias(scores.argmax(1), ds.labels, ds.labels[conflict], seed=ctx.seed)
        levels["cue_conflict"] = [{"level": "phase(A)+amplitude(B)", **bias}]
        summary.update(bias)

        # alpha sweep
        if args.donor == "dtd":
            donor_ds = ctx.dataset("dtd", "train", args.donor_root, subset=None)
            donors = random_donors(len(ds), len(donor_ds), ctx.seed)
            donor_name = f"DTD ({len(donor_ds)} images of {args.donor_root})"
        else:
            donor_ds, donors, donor_name = ds, conflict, "another evaluation image of another class"
        rows = []
        for alpha in args.alphas:
            s = ctx.scores(ds, self._swap(donor_ds, donors, alpha, ctx), desc=f"amplitude alpha {alpha:g}")
            rows.append(accuracy_row(alpha, correct_count(s, ds.labels), len(ds),
                                     top5=correct_count(s, ds.labels, 5) / len(ds)))
        levels["alpha"] = rows

        sweep = curve_summary(args.alphas, [r["top1"] for r in rows], chance)
        summary.update({"alpha_auc": sweep["auc"], "alpha_auc_normalised": sweep["auc_normalised"],
                        "alpha_half_level": sweep["half_level"], "alpha1_top1": rows[-1]["top1"]})
        lines.append("  alpha sweep (donor: " + donor_name + "): " + "  ".join(
            f"{r['level']:g}:{r['top1']:.3f}[{r['top1_low']:.3f},{r['top1_high']:.3f}]" for r in rows))
        lines.append(f"  phase-vs-amplitude bias {bias['phase_bias']:.3f} [95% CI {bias['phase_bias_low']:.3f}, "
                     f"{bias['phase_bias_high']:.3f}] on {bias['n_images']} images (decisions: phase "
                     f"{bias['frac_phase']:.3f}, amplitude {bias['frac_amplitude']:.3f}, neither "
                     f"{bias['frac_neither']:.3f}); 1 = follows the phase (layout), 0 = the amplitude (texture)")

        if args.stylized_root:
            rows, stylized_summary = self._stylized_imagenet(ctx, ds, Path(args.stylized_root))
            levels["stylized_imagenet"] = rows
            summary.update(stylized_summary)
            s = stylized_summary
            lines.append(f"  Stylized-ImageNet: top-1 {s['stylized_top1']:.3f} top-5 {s['stylized_top5']:.3f} on "
                         f"{s['stylized_images']} images; clean {s['clean_top1']:.3f} / {s['clean_top5']:.3f}; "
                         f"drop {s['drop_top1']:.3f} [95% CI {s['drop_top1_low']:.3f}, {s['drop_top1_high']:.3f}]")
        self._figures(ctx, levels, chance)
        ordered = {k: summary[k] for k in ("phase_bias", "phase_bias_low", "phase_bias_high", "alpha_auc")}
        ordered.update(summary)
        settings = {"alphas": list(args.alphas), "donor": args.donor, "donor_root": args.donor_root,
                    "stylized_root": args.stylized_root, "num_images": len(ds), "chance": chance,
                    "image_size": ctx.image_size}
        return DiagnosticResult(settings, levels, ordered, lines)

    @staticmethod
    def _swap(donor_ds: Any, donors: torch.Tensor, alpha: float, ctx: Context) -> Any:
        def transform(images: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
            chosen = donor_ds.images[donors[index.cpu()]].to(images.device)
            return filters.amplitude_swap(images, unit_float(chosen, ctx.image_size), alpha)

        return transform

    def _stylized_imagenet(self, ctx: Context, clean: Any, root: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Top-1/top-5 on the probe's classes of a Stylized-ImageNet folder, beside the clean images."""
        class_ids = list(ctx.probe.meta.get("class_ids") or ctx.probe.meta.get("class_names") or [])
        tree = root / "val" if (root / "val").is_dir() else root
        if not tree.is_dir():
            raise BlockMAEError(f"--stylized-root {root} is not a folder")
        folders = sorted(p.name for p in tree.iterdir() if p.is_dir())
        kept = [f for f in folders if f in class_ids]
        if not kept:
            raise BlockMAEError(f"none of the {len(folders)} class folders of {tree} is one of the probe's classes "
                                f"(e.g. {class_ids[:2]}); pass a Stylized-ImageNet folder of <wnid>/*.png")
        mapping = ctx.run_dir / "stylized_classes.tsv"  # identity mapping: keeps only the probe's classes
        write_text_atomic(mapping, "".join(f"{f}\t{f}\n" for f in kept))
        stylized = ctx.dataset("folder", "all", str(tree), subset=ctx.args.num_images, mapping=str(mapping),
                               skip_unmapped=True)
        index = {c: i for i, c in enumerate(class_ids)}
        to_probe = torch.tensor([index[c] for c in stylized.class_names])
        labels = to_probe[stylized.labels]
        s_scores = ctx.scores(stylized, desc="Stylized-ImageNet")
        c_scores = ctx.scores(clean, desc="clean")
        s_hit, c_hit = topk_correct(s_scores, labels), topk_correct(c_scores, clean.labels)
        ns, nc = len(stylized), len(clean)
        rows = [accuracy_row("clean", c_hit[1], nc, top5=c_hit[5] / nc),
                accuracy_row("stylized", s_hit[1], ns, top5=s_hit[5] / ns, classes=len(kept))]
        drop = rows[0]["top1"] - rows[1]["top1"]
        low, high = difference_interval(rows[0]["top1"], nc, rows[1]["top1"], ns)
        summary = {"stylized_top1": rows[1]["top1"], "stylized_top5": rows[1]["top5"], "clean_top1": rows[0]["top1"],
                   "clean_top5": rows[0]["top5"], "drop_top1": drop, "drop_top1_low": low, "drop_top1_high": high,
                   "drop_top5": rows[0]["top5"] - rows[1]["top5"], "stylized_images": ns, "stylized_classes": len(kept)}
        return rows, summary

    @staticmethod
    def _figures(ctx: Context, levels: dict[str, list[dict[str, Any]]], chance: float) -> None:
        import matplotlib  # heavy: only when a figure is drawn

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # heavy: only when a figure is drawn

        labelled = [dict(r, label=f"{r['level']:g}") for r in levels["alpha"]]
        fig = accuracy_figure({"phase kept, amplitude from donor": labelled}, chance,
                              "amplitude-phase recombination", "alpha (0 = own amplitude, 1 = donor's)")
        ctx.save_figure("stylized_alpha", fig, levels["alpha"])
        b = levels["cue_conflict"][0]
        fig, ax = plt.subplots(figsize=(5.2, 3.6))
        ax.bar(["phase (A)", "amplitude (B)", "neither"], [b["frac_phase"], b["frac_amplitude"], b["frac_neither"]],
               color=["tab:blue", "tab:orange", "tab:grey"])
        ax.set_ylabel("fraction of decisions")
        ax.set_ylim(0, 1)
        ax.set_title(f"phase(A)+amplitude(B): phase bias {b['phase_bias']:.3f} "
                     f"[{b['phase_bias_low']:.3f}, {b['phase_bias_high']:.3f}]", fontsize=10)
        ctx.save_figure("stylized_cue_conflict", fig, levels["cue_conflict"])
        if "stylized_imagenet" in levels:
            rows = levels["stylized_imagenet"]
            fig, ax = plt.subplots(figsize=(4.8, 3.6))
            x = range(len(rows))
            ax.bar(x, [r["top1"] for r in rows], yerr=[[r["top1"] - r["top1_low"] for r in rows],
                                                        [r["top1_high"] - r["top1"] for r in rows]], capsize=4)
            ax.set_xticks(list(x), [r["level"] for r in rows])
            ax.axhline(chance, color="grey", linestyle="--", linewidth=1)
            ax.set_ylabel("top-1 (95% Wilson interval)")
            ax.set_title("Stylized-ImageNet vs clean")
            ctx.save_figure("stylized_imagenet", fig, rows)


add_arguments, run = command(Stylized)
