"""Figures of the attention diagnostic; every function returns (matplotlib figure, CSV rows of what it draws)."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from blockmae.diagnostics import occlusion as occ


def _pyplot() -> Any:
    import matplotlib  # heavy: only when a figure is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # heavy: only when a figure is drawn

    return plt


def _image(ax: Any, image: Tensor) -> None:
    ax.imshow(image.permute(1, 2, 0).cpu().numpy())
    ax.set_xticks([])
    ax.set_yticks([])


def _overlay(ax: Any, image: Tensor, rollout: Tensor) -> None:
    """The image under its rollout map (nearest-neighbour upsampled, maximum = opaque)."""
    _image(ax, image)
    size = image.shape[-1]
    ax.imshow(rollout.cpu().numpy(), cmap="inferno", alpha=0.6, extent=(0, size, size, 0), interpolation="nearest")


def _mark(ax: Any, com: Tensor, patch: int, style: str, label: str | None = None) -> None:
    """A centre of mass (row, column in patches) drawn at its pixel position."""
    row, col = com.tolist()
    ax.plot((col + 0.5) * patch, (row + 0.5) * patch, style, markersize=9, markeredgecolor="white", label=label)


def covering_position(corners: Tensor, block: int, com: Tensor) -> int:
    """The occluder position whose centre is nearest to a centre of mass (the occluder over the attention)."""
    centres = occ.block_centres(corners, block)
    return int(torch.linalg.vector_norm(centres - com, dim=-1).argmin())


def sample_grid(sub: Any, clean: Mapping[str, Tensor], sliding: Mapping[str, Tensor], block: int, patch: int,
                samples: int, fill: Tensor) -> tuple[Any, list[dict[str, Any]]]:
    """Per sample: image, clean rollout, image with the occluder over its attention, occluded rollout;
    centres of mass marked (circle clean, cross occluded)."""
    plt = _pyplot()
    fig, axes = plt.subplots(samples, 4, figsize=(8, 2.1 * samples), squeeze=False)
    rows = []
    masks, _ = occ.sliding_block_masks(tuple(clean["maps"].shape[-2:]), block)
    for i in range(samples):
        image = sub.images[i].float() / 255
        p = covering_position(sliding["corners"], block, clean["com"][i])
        occluded = occ.occlude(image[None], masks[p], patch, "mean", fill)[0]
        com_occ = sliding["com"][i, p]
        _image(axes[i, 0], image)
        _mark(axes[i, 0], clean["com"][i], patch, "o")
        _overlay(axes[i, 1], image, clean["maps"][i])
        _mark(axes[i, 1], clean["com"][i], patch, "o")
        _image(axes[i, 2], occluded)
        _overlay(axes[i, 3], occluded, sliding["maps"][i, p])
        _mark(axes[i, 3], clean["com"][i], patch, "o")
        _mark(axes[i, 3], com_occ, patch, "X")
        corner = sliding["corners"][p].tolist()
        rows.append({"sample": i, "label": int(sub.labels[i]), "clean_correct": bool(clean["correct"][i]),
                     "occluded_correct": bool(sliding["correct"][i, p]), "block": block,
                     "occluder_row": corner[0], "occluder_col": corner[1],
                     "com_clean_row": clean["com"][i, 0].item(), "com_clean_col": clean["com"][i, 1].item(),
                     "com_occluded_row": com_occ[0].item(), "com_occluded_col": com_occ[1].item(),
                     "displacement": sliding["displacement"][i, p].item(),
                     "similarity": sliding["similarity"][i, p].item()})
    for ax, title in zip(axes[0], ("image", "rollout", f"{block}x{block} occluder", "occluded rollout")):
        ax.set_title(title, fontsize=9)
    fig.suptitle("o: clean centre of mass, x: occluded (occluder over the clean centre)", fontsize=9)
    fig.tight_layout()
    return fig, rows


def trajectories(sub: Any, clean: Mapping[str, Tensor], sliding: Mapping[str, Tensor], block: int, patch: int,
                 samples: int) -> tuple[Any, list[dict[str, Any]]]:
    """Per sample: the rollout's centre of mass under every occluder position, joined in raster order of the
    occluder (colour = position), the clean centre as a white circle."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, samples, figsize=(2.4 * samples, 2.6), squeeze=False)
    rows = []
    centres = occ.block_centres(sliding["corners"], block)
    for i in range(samples):
        ax = axes[0, i]
        _image(ax, sub.images[i].float() / 255)
        path = (sliding["com"][i] + 0.5) * patch
        ax.plot(path[:, 1].numpy(), path[:, 0].numpy(), "-", color="white", linewidth=0.6, alpha=0.7)
        ax.scatter(path[:, 1].numpy(), path[:, 0].numpy(), c=range(len(path)), cmap="viridis", s=10)
        _mark(ax, clean["com"][i], patch, "o")
        for p in range(len(path)):
            rows.append({"sample": i, "position": p, "occluder_centre_row": centres[p, 0].item(),
                         "occluder_centre_col": centres[p, 1].item(), "com_row": sliding["com"][i, p, 0].item(),
                         "com_col": sliding["com"][i, p, 1].item(), "com_clean_row": clean["com"][i, 0].item(),
                         "com_clean_col": clean["com"][i, 1].item()})
    fig.suptitle(f"centre of mass as a {block}x{block} occluder slides (colour: occluder position)", fontsize=9)
    fig.tight_layout()
    return fig, rows


def _curve_rows(name: str, drop_rows: Sequence[Mapping[str, Any]], slide_rows: Sequence[Mapping[str, Any]]
                ) -> list[dict[str, Any]]:
    rows = []
    for r in drop_rows:
        rows.append({"checkpoint": name, "curve": "patch drop" if r.get("kind") != "clean" else "clean",
                     "fraction_occluded": r.get("fraction_occluded", 0.0), "top1": r["top1"],
                     "top1_low": r["top1_low"], "top1_high": r["top1_high"], "interval": "wilson"})
    for r in slide_rows:
        rows.append({"checkpoint": name, "curve": f"sliding {r['level']}x{r['level']}",
                     "fraction_occluded": r["fraction_occluded"], "top1": r["top1"], "top1_low": r["top1_low"],
                     "top1_high": r["top1_high"], "interval": "bootstrap over images"})
    return rows


def _draw_curves(ax: Any, rows: Sequence[Mapping[str, Any]], label_prefix: str = "", colour: Any = None) -> None:
    drop = sorted((r for r in rows if r["curve"] in ("clean", "patch drop")), key=lambda r: r["fraction_occluded"])
    x = [r["fraction_occluded"] for r in drop]
    y = [r["top1"] for r in drop]
    err = [[r["top1"] - r["top1_low"] for r in drop], [r["top1_high"] - r["top1"] for r in drop]]
    line = ax.errorbar(x, y, yerr=err, marker="o", capsize=2, label=f"{label_prefix}patch drop", color=colour)
    slide = [r for r in rows if r["curve"].startswith("sliding")]
    if slide:
        ax.errorbar([r["fraction_occluded"] for r in slide], [r["top1"] for r in slide],
                    yerr=[[r["top1"] - r["top1_low"] for r in slide], [r["top1_high"] - r["top1"] for r in slide]],
                    marker="s", linestyle="--", capsize=2, label=f"{label_prefix}sliding block",
                    color=line.lines[0].get_color())


def occlusion_curve(curves: Mapping[str, tuple[Sequence[Mapping], Sequence[Mapping]]], chance: float
                    ) -> tuple[Any, list[dict[str, Any]]]:
    """Probe top-1 against the fraction of patches occluded: PatchDrop (Wilson intervals) and sliding blocks
    (accuracy over all positions, bootstrap interval over images)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    rows = []
    for name, (drop_rows, slide_rows) in curves.items():
        these = _curve_rows(name, drop_rows, slide_rows)
        _draw_curves(ax, these, f"{name}: " if name else "")
        rows += these
    ax.axhline(chance, color="grey", linestyle=":", label="chance")
    ax.set_xlabel("fraction of patches occluded")
    ax.set_ylabel("probe top-1")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig, rows


def position_heatmaps(position_rows: Sequence[Mapping[str, Any]], grid: tuple[int, int]) -> tuple[Any, list]:
    """Accuracy drop (clean minus occluded top-1 on the same images) per occluder position, one panel per
    block size, drawn at the occluder's centre on the patch grid."""
    plt = _pyplot()
    blocks = sorted({r["level"] for r in position_rows})
    fig, axes = plt.subplots(1, len(blocks), figsize=(3 * len(blocks), 3), squeeze=False)
    vmax = max([abs(r["drop"]) for r in position_rows] + [1e-6])
    for ax, b in zip(axes[0], blocks):
        rows = [r for r in position_rows if r["level"] == b]
        side_r, side_c = grid[0] - b + 1, grid[1] - b + 1
        values = torch.full((side_r, side_c), float("nan"))
        for r in rows:
            values[r["corner_row"], r["corner_col"]] = r["drop"]
        half = (b - 1) / 2
        image = ax.imshow(values.numpy(), cmap="RdBu_r", vmin=-vmax, vmax=vmax,
                          extent=(half - 0.5, half + side_c - 0.5, half + side_r - 0.5, half - 0.5))
        ax.set_xlim(-0.5, grid[1] - 0.5)
        ax.set_ylim(grid[0] - 0.5, -0.5)
        ax.set_title(f"{b}x{b} occluder", fontsize=9)
        fig.colorbar(image, ax=ax, fraction=0.046)
    fig.suptitle("top-1 drop by occluder centre (patch coordinates)", fontsize=9)
    fig.tight_layout()
    return fig, [dict(r) for r in position_rows]


def displacement_histogram(displacements: Mapping[int, Tensor], side: int) -> tuple[Any, list[dict[str, Any]]]:
    """Distribution of the centre-of-mass displacement (patches) over images and occluder positions."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    top = max(float(torch.nan_to_num(d).max()) for d in displacements.values())
    bins = torch.linspace(0, max(top, 1e-3), 31)
    rows = []
    for b, d in displacements.items():
        values = d.flatten()
        ax.hist(values.numpy(), bins=bins.numpy(), histtype="step", label=f"{b}x{b}", density=True)
        for (image, position), v in zip(torch.cartesian_prod(torch.arange(d.shape[0]), torch.arange(d.shape[1])).tolist(),
                                        values.tolist()):
            rows.append({"block": b, "image": image, "position": position, "displacement_patches": v,
                         "displacement_fraction_of_side": v / side})
    ax.set_xlabel("centre-of-mass displacement (patches)")
    ax.set_ylabel("density")
    ax.legend(title="occluder", fontsize=7)
    fig.tight_layout()
    return fig, rows


def layer_head_heatmap(head_rows: Sequence[Mapping[str, Any]], key: str, label: str) -> tuple[Any, list]:
    """A layers x heads grid of one per-head statistic."""
    plt = _pyplot()
    layers = 1 + max(r["layer"] for r in head_rows)
    heads = 1 + max(r["head"] for r in head_rows)
    values = torch.zeros(layers, heads)
    for r in head_rows:
        values[r["layer"], r["head"]] = r[key]
    fig, ax = plt.subplots(figsize=(1.2 + 0.5 * heads, 1.2 + 0.4 * layers))
    image = ax.imshow(values.numpy(), cmap="viridis", aspect="auto")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(heads))
    ax.set_yticks(range(layers))
    for (layer, head), v in zip(torch.cartesian_prod(torch.arange(layers), torch.arange(heads)).tolist(),
                                values.flatten().tolist()):
        ax.text(head, layer, f"{v:.2f}", ha="center", va="center", fontsize=6, color="white")
    fig.colorbar(image, ax=ax, label=label)
    fig.tight_layout()
    return fig, [{"layer": r["layer"], "head": r["head"], key: r[key]} for r in head_rows]


def comparison(results: Mapping[str, Any]) -> tuple[Any, list[dict[str, Any]]]:
    """Runs side by side: occlusion curves, stability per occluder size, mean attention distance per layer,
    rollout entropy; every point with its interval where it has one."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    rows: list[dict[str, Any]] = []
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    width = 0.8 / max(len(results), 1)
    for k, (name, result) in enumerate(results.items()):
        colour = colours[k % len(colours)]
        curve = _curve_rows(name, result.levels["patch_drop"], result.levels["sliding"])
        _draw_curves(axes[0], curve, f"{name}: ", colour)
        rows += [{"panel": "occlusion accuracy", **r} for r in curve]
        slide = result.levels["sliding"]
        x = [i + k * width for i in range(len(slide))]
        axes[1].bar(x, [r["stability"] for r in slide], width, color=colour, label=name,
                    yerr=[[r["stability"] - r["stability_low"] for r in slide],
                          [r["stability_high"] - r["stability"] for r in slide]], capsize=2)
        axes[1].set_xticks([i + 0.4 - width / 2 for i in range(len(slide))],
                           [f"{r['level']}x{r['level']}" for r in slide])
        rows += [{"panel": "stability", "checkpoint": name, "block": r["level"], "stability": r["stability"],
                  "stability_low": r["stability_low"], "stability_high": r["stability_high"],
                  "displacement_mean_patches": r["displacement_mean_patches"]} for r in slide]
        layers = result.levels["layers"]
        axes[2].plot([r["layer"] for r in layers], [r["distance_patches"] for r in layers], "o-", color=colour,
                     label=name)
        rows += [{"panel": "attention distance", "checkpoint": name, "layer": r["layer"],
                  "distance_patches": r["distance_patches"], "entropy": r["entropy"]} for r in layers]
        s = result.summary
        low, high = s["rollout_entropy_low"], s["rollout_entropy_high"]
        axes[3].bar([k], [s["rollout_entropy"]], color=colour, yerr=[[s["rollout_entropy"] - low],
                                                                      [high - s["rollout_entropy"]]], capsize=3)
        rows.append({"panel": "rollout entropy", "checkpoint": name, "rollout_entropy": s["rollout_entropy"],
                     "rollout_entropy_low": low, "rollout_entropy_high": high})
    axes[0].set(xlabel="fraction of patches occluded", ylabel="probe top-1", ylim=(0, 1), title="occlusion")
    axes[0].legend(fontsize=6)
    axes[1].set(ylabel="stability (map correlation outside occluder)", title="stability by occluder size")
    axes[1].legend(fontsize=6)
    axes[2].set(xlabel="layer", ylabel="mean attention distance (patches)", title="attention distance")
    axes[2].legend(fontsize=6)
    axes[3].set_xticks(range(len(results)), list(results), rotation=20, fontsize=7)
    axes[3].set(ylabel="rollout entropy (1 = uniform)", title="rollout entropy")
    fig.tight_layout()
    return fig, rows
