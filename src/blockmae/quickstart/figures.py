"""Stage: the quickstart's own figures (reconstructions, every metric per arm and seed) and the curves its
report draws."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from blockmae.data import load_dataset
from blockmae.data.augment import normalize
from blockmae.engine.logs import loss_curve, read_metrics
from blockmae.masking import MaskGenerator, canonical_mask
from blockmae.models.factory import load_encoder
from blockmae.quickstart.config import BASELINE, QuickstartConfig, arm_key, arm_name
from blockmae.quickstart.evaluate import EncoderSpec
from blockmae.report.document import Image
from blockmae.report.figures import BASELINE_GREY, arm_colour, new_figure
from blockmae.report.stats import t_interval
from blockmae.visualisation.reconstructions import reconstruction_figure


def reconstructions(cfg: QuickstartConfig, out: Path, specs: Sequence[EncoderSpec]) -> list[Any]:
    """One figure per pretrained model: the same validation images under each arm's mask (1x1, 2x2, 4x4),
    so a column compares what the models fill in for the same hidden patches."""
    pc = cfg.pretrain
    count = cfg.reconstruction_images
    val = load_dataset(pc.data.dataset, pc.val_split(), image_size=pc.data.image_size,
                       **{**pc.data.options, "num_images": max(64, count)})
    images = normalize(val.images[:count])
    grid = pc.img_size // int(pc.model.patch_size or 4)
    masks = {}
    for block in cfg.blocks:
        gen = torch.Generator().manual_seed(1234 + block)
        masks[f"{block}x{block}"] = MaskGenerator(grid, pc.mask.ratio, *canonical_mask("block", block),
                                                  pc.mask.align)(count, generator=gen)
    figures = []
    for spec in specs:
        model = load_encoder(spec.checkpoint).mae
        model.float().eval()
        path = out / "figures" / f"reconstructions_{spec.key}.png"
        with torch.no_grad():
            reconstruction_figure(model, images, masks, path, title=spec.name)
        figures.append(Image(path, f"Reconstructions by {spec.name} (columns: the mask used at test time)"))
    return figures


def own_loss_curves(cfg: QuickstartConfig, out: Path) -> dict[str, tuple[list[int], list[float]]]:
    """Arm name -> (images seen, loss) at every logged step of the arm's pretraining run here."""
    return {arm_name(block): loss_curve(read_metrics(out / "pretrain" / arm_key(block)), cfg.pretrain.train.batch_size)
            for block in cfg.blocks}


def seed_figure(arms: Mapping[str, Mapping[int, Any]], stages: Mapping[str, Any]) -> Any:
    """Four panels (linear top-1, k-NN top-1, shape-only accuracy, shape bias), one column per arm: a dot
    per seed (ArmResults by arm and seed index) and a bar for the mean over seeds with its 95% t-interval.
    An arm whose probe has not learned shape (`stages[arm].learned_shape` false) has its shape bias drawn
    hollow and marked "not interpretable"."""
    from matplotlib.figure import Figure  # heavy: only when a figure is drawn

    names = list(arms)
    panels = [("linear top-1 (%)", lambda a: 100 * a.linear_top1), ("k-NN top-1 (%)", lambda a: 100 * a.knn_top1),
              ("shape-only accuracy (%)", lambda a: 100 * a.shape_only_accuracy),
              ("shape bias", lambda a: a.shape_bias.value)]
    fig = Figure(figsize=(max(9.0, 1.1 * len(names) * len(panels)), 3.8))
    axes = fig.subplots(1, len(panels))
    colours = [BASELINE_GREY if n == BASELINE else arm_colour(i) for i, n in enumerate(names)]
    for ax, (label, value) in zip(axes, panels):
        ax.spines[["top", "right"]].set_visible(False)
        for x, (name, colour) in enumerate(zip(names, colours)):
            values = [value(a) for _, a in sorted(arms[name].items())]
            mean = sum(values) / len(values)
            interval = t_interval(values)
            hollow = label == "shape bias" and stages.get(name) is not None and not stages[name].learned_shape
            err = None if interval is None else [[mean - interval.low], [interval.high - mean]]
            ax.bar(x, mean, width=0.6, color="none" if hollow else colour, edgecolor=colour, linewidth=1.2,
                   hatch="//" if hollow else None, yerr=err, capsize=5, alpha=0.85)
            ax.scatter([x] * len(values), values, color="black", s=12, zorder=3)
        if label == "shape bias":
            ax.axhline(0.5, color="black", linestyle=":", linewidth=1)
            ax.set_ylim(0, 1.05)
        else:
            if "shape-only" in label and stages:
                chance = 100 * next(iter(stages.values())).chance
                ax.axhline(chance, color="black", linestyle=":", linewidth=1)
                ax.axhline(2 * chance, color="black", linestyle="--", linewidth=0.8)
                ax.set_ylim(top=max(ax.get_ylim()[1], 2 * chance + 5))
            ax.set_ylim(0, min(100.0, ax.get_ylim()[1]))  # a wide t-interval is cut at 0 and 100
        ax.set_title(label, fontsize=9)
        # Arm names are long ("4x4 blocks"): wrapped onto two lines and turned, so neighbours never overlap.
        ax.set_xticks(range(len(names)), [n.replace(" ", "\n", 1) for n in names], rotation=30, ha="right",
                      fontsize=8)
    fig.suptitle("Per arm: one dot per seed, bar = mean over seeds with its 95% t-interval; hatched shape bias = "
                 "not interpretable (shape not learned); dotted: chance / no preference, dashed: 2x chance",
                 fontsize=8)
    fig.tight_layout()
    return fig


def reference_loss_figure(curves: Mapping[str, Mapping[int, tuple[Sequence[int], Sequence[float]]]],
                          shape_curves: Mapping[str, Mapping[int, tuple[Sequence[int], Sequence[float]]]] | None = None,
                          chance: float = 0.1) -> Any:
    """Pretraining loss against images seen of every reference: arm -> seed -> (images seen, loss); one
    colour per arm (the other figures' order), one line style per seed. With `shape_curves` (the online
    monitor's shape-only accuracy, same layout), a second panel shows them beside chance and 2x chance."""
    styles = ["-", "--", ":", "-."]
    panels = [(curves, "MAE loss (masked patches)", "Pretraining loss")]
    if shape_curves and any(x for per_seed in shape_curves.values() for x, _ in per_seed.values()):
        panels.append((shape_curves, "shape-only top-1 (monitor's linear probe)", "Shape read from the features"))
    fig, axes = new_figure(5.6 * len(panels), 3.6, ncols=len(panels))
    axes = list(axes) if len(panels) > 1 else [axes]
    for ax, (data, ylabel, title) in zip(axes, panels):
        for i, (arm, per_seed) in enumerate(data.items()):
            for k, (seed, (images, values)) in enumerate(sorted(per_seed.items())):
                ax.plot([x / 1000 for x in images], values, color=arm_colour(i), linestyle=styles[k % len(styles)],
                        linewidth=1.3, marker="." if data is not curves else None,
                        label=f"{arm}, seed {seed}")
        ax.set_xlabel("images seen (thousands)")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        if data is not curves:
            ax.axhline(chance, color="grey", linestyle="--", linewidth=1)
            ax.axhline(2 * chance, color="grey", linestyle=":", linewidth=1)
    axes[0].legend(fontsize=7, frameon=False, ncols=len(curves))
    fig.tight_layout()
    return fig
