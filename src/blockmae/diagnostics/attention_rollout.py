"""`blockmae eval attention`: attention rollout under occlusion (docs/diagnostics.md, "Attention").

Clean images: probe accuracy, rollout maps (Abnar & Zuidema 2020), their entropy, and per layer and head
the entropy of the raw attention and the mean attention distance. Occluded images: random patch drop
(PatchDrop, Naseer et al. 2021) over all evaluation images at each fraction, and b x b occluders slid
over every position of a seeded subset; per occluder the accuracy, the rollout's centre-of-mass
displacement and its similarity to the clean rollout outside the occluded patches (the stability score).
On ShapeTex, the share of rollout mass on the figure. The maths lives in `diagnostics.attention`, the
occluders in `diagnostics.occlusion`.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors.torch import save_file
from torch import Tensor

from blockmae.config import number
from blockmae.diagnostics import attention as att, attention_figures as figs, occlusion as occ
from blockmae.data.augment import unit_float
from blockmae.diagnostics.context import Context, take_subset, write_figure
from blockmae.diagnostics.plugin import Diagnostic, DiagnosticResult, accuracy_row
from blockmae.diagnostics.runner import command
from blockmae.errors import BlockMAEError
from blockmae.fileio import atomic_path, write_json_atomic
from blockmae.progress import ImageProgress

DEFAULT_FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
_BOOTSTRAP_SAMPLES = 2000


@dataclass
class Measured:
    """Per-image measurements of one pass (CPU tensors, first axis = images or (image, occluder) pairs)."""

    correct: list[Tensor] = field(default_factory=list)
    maps: list[Tensor] = field(default_factory=list)

    def cat(self) -> tuple[Tensor, Tensor]:
        return torch.cat(self.correct), torch.cat(self.maps)


def bootstrap_mean_interval(values: Tensor, seed: int, num_samples: int = _BOOTSTRAP_SAMPLES) -> tuple[float, float]:
    """Percentile 95% bootstrap interval of the mean of per-image values (n,), NaNs left out."""
    values = values.double().flatten()
    values = values[~torch.isnan(values)]
    if values.numel() == 0:
        return float("nan"), float("nan")
    gen = torch.Generator().manual_seed(seed)
    draws = torch.randint(0, values.numel(), (num_samples, values.numel()), generator=gen)
    means = values[draws].mean(dim=1)
    return torch.quantile(means, 0.025).item(), torch.quantile(means, 0.975).item()


def channel_stats(dataset: Any, size: int, chunk: int = 1024) -> tuple[Tensor, Tensor]:
    """Per-channel mean and std (3,) of a dataset's images in [0, 1] at `size`, computed in chunks."""
    total, squares, count = torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64), 0
    for start in range(0, len(dataset), chunk):
        x = unit_float(dataset.images[start:start + chunk], size).double()
        total += x.sum((0, 2, 3))
        squares += (x * x).sum((0, 2, 3))
        count += x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / count
    return mean.float(), (squares / count - mean * mean).clamp(min=0).sqrt().float()


class AttentionRollout(Diagnostic):
    name = "attention"
    description = "attention rollout under occlusion: accuracy, centre-of-mass stability, entropy, distance"
    needs_probe = True
    compares_checkpoints = True

    @classmethod
    def add_options(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--blocks", type=number(int, ">=1"), nargs="+", default=[1, 2, 4],
                            help="sliding occluder sizes in patches (default 1 2 4)")
        parser.add_argument("--drop-fractions", type=number(float, "(0..1)"), nargs="+", default=list(DEFAULT_FRACTIONS),
                            help="PatchDrop fractions of the patches (default 0.1 .. 0.9)")
        parser.add_argument("--fill", choices=occ.FILLS, default="mean",
                            help="occluded pixels: the dataset's mean colour, or noise of its statistics")
        parser.add_argument("--head-fusion", choices=att.HEAD_FUSIONS, default="mean", help="rollout head fusion")
        parser.add_argument("--discard-ratio", type=number(float, "0..1"), default=0.0,
                            help="rollout: drop this fraction of the weakest patch-to-patch weights per image")
        parser.add_argument("--rollout-source", choices=("auto", *att.ROLLOUT_SOURCES), default="auto",
                            help="rollout rows read as the map: cls row, or the mean of the patch rows "
                                 "(auto: patches for an avg-pooled probe, else cls)")
        parser.add_argument("--similarity", choices=att.SIMILARITIES, default="spearman",
                            help="clean-vs-occluded map similarity outside the occluder")
        parser.add_argument("--sliding-images", type=number(int, ">=1"), default=64,
                            help="images (seeded subset) that every sliding occluder visits (default 64)")
        parser.add_argument("--samples", type=number(int, ">=1"),
                            default=4, help="images in the sample and trajectory figures")
        parser.add_argument("--trajectory-block", type=number(int, ">=1"),
                            help="occluder size of the headline stability, samples and trajectories "
                                 "(default: 2 if among --blocks, else the first)")

    # ------------------------------------------------------------------------------------- passes
    def check(self, args: argparse.Namespace, encoder: Any) -> None:
        grid = tuple(encoder.model.grid_size)
        for b in args.blocks:
            occ.sliding_block_masks(grid, b)  # refuses sizes that do not fit
        if not 0.0 <= args.discard_ratio < 1.0:
            raise BlockMAEError(f"--discard-ratio {args.discard_ratio} must lie in [0, 1)")
        if args.sliding_images < 1 or args.samples < 0:
            raise BlockMAEError("--sliding-images must be positive and --samples non-negative")
        block = args.trajectory_block or (2 if 2 in args.blocks else args.blocks[0])
        if block not in args.blocks:
            raise BlockMAEError(f"--trajectory-block {block} is not among --blocks {' '.join(map(str, args.blocks))}")

    def _setup(self, ctx: Context) -> None:
        args = ctx.args
        model = ctx.encoder.model
        self.grid, self.patch = tuple(model.grid_size), int(model.patch_size)
        self.side = self.grid[0]
        self.source = args.rollout_source if args.rollout_source != "auto" else (
            "patches" if ctx.pool == "avg" else "cls")
        self.block = args.trajectory_block or (2 if 2 in args.blocks else args.blocks[0])
        self.similarity = args.similarity

    def _forward(self, ctx: Context, images: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
        """(predictions (B,), rollout maps (B, gh, gw) float32, raw attention per layer) of [0, 1] images."""
        with ctx.encoder.model.capturing_attention() as attentions:
            scores = ctx.scores_of(images)
        maps = att.rollout_maps(attentions, self.grid, ctx.args.head_fusion, ctx.args.discard_ratio, self.source)
        return scores.argmax(dim=-1), maps.float(), attentions

    def _occlude(self, ctx: Context, images: Tensor, masks: Tensor, noise: torch.Generator) -> Tensor:
        return occ.occlude(images, masks, self.patch, ctx.args.fill, self.mean, self.std, noise)

    def _clean_pass(self, ctx: Context, ds: Any) -> dict[str, Tensor]:
        depth_heads: tuple[int, int] | None = None
        correct, maps, entropy_sum, distance_sum = [], [], None, None
        for images, labels, _ in ctx.batches(ds, "attention: clean"):
            pred, batch_maps, attentions = self._forward(ctx, images)
            correct.append((pred == labels).cpu())
            maps.append(batch_maps.cpu())
            entropy = torch.stack([att.attention_entropy(a).sum(0) for a in attentions]).cpu()  # (layers, heads)
            distance = torch.stack([att.mean_attention_distance(a, self.grid).sum(0) for a in attentions]).cpu()
            entropy_sum = entropy if entropy_sum is None else entropy_sum + entropy
            distance_sum = distance if distance_sum is None else distance_sum + distance
            depth_heads = tuple(entropy.shape)
        assert depth_heads is not None
        maps_t = torch.cat(maps)
        return {"correct": torch.cat(correct), "maps": maps_t, "com": att.centre_of_mass(maps_t),
                "layer_head_entropy": entropy_sum / len(ds), "layer_head_distance": distance_sum / len(ds)}

    def _occluded_stats(self, clean: dict[str, Tensor], index: Tensor, correct: Tensor, maps: Tensor, masks: Tensor,
                        figure: Tensor | None) -> dict[str, Tensor]:
        """Per occluded image: correct, displacement (patches), similarity outside the occluder, entropy, figure mass."""
        com = att.centre_of_mass(maps)
        out = {"correct": correct, "com": com, "displacement": att.displacement(clean["com"][index], com),
               "similarity": att.map_similarity(clean["maps"][index], maps, ~masks, self.similarity),
               "entropy": att.map_entropy(maps)}
        if figure is not None:
            out["figure_mass"] = att.region_mass(maps, figure[index])
        return out

    def _patch_drop(self, ctx: Context, ds: Any, clean: dict[str, Tensor], figure: Tensor | None,
                    fraction: float, i: int) -> dict[str, Tensor]:
        masks = occ.patch_drop_masks(len(ds), self.grid, fraction, torch.Generator().manual_seed(ctx.seed * 1009 + i))
        noise = torch.Generator(device=ctx.device).manual_seed(ctx.seed * 1013 + i)
        correct, maps = [], []
        for images, labels, index in ctx.batches(ds, f"attention: patch drop {fraction:g}"):
            batch_masks = masks[index.cpu()]
            pred, batch_maps, _ = self._forward(ctx, self._occlude(ctx, images, batch_masks, noise))
            correct.append((pred == labels).cpu())
            maps.append(batch_maps.cpu())
        return self._occluded_stats(clean, torch.arange(len(ds)), torch.cat(correct), torch.cat(maps), masks, figure)

    def _sliding(self, ctx: Context, ds: Any, clean: dict[str, Tensor], figure: Tensor | None,
                 block: int, bar: Any) -> dict[str, Tensor]:
        """Every occluder position for every image: tensors (images, positions, ...)."""
        masks, corners = occ.sliding_block_masks(self.grid, block)
        n, positions = len(ds), masks.shape[0]
        noise = torch.Generator(device=ctx.device).manual_seed(ctx.seed * 1019 + block)
        pairs = torch.arange(n * positions)
        correct, maps = [], []
        labels_all = ds.labels
        for start in range(0, len(pairs), ctx.batch_size):
            chunk = pairs[start:start + ctx.batch_size]
            image_index, position = chunk // positions, chunk % positions
            images = unit_float(ds.images[image_index].to(ctx.device), ctx.image_size)
            pred, batch_maps, _ = self._forward(ctx, self._occlude(ctx, images, masks[position], noise))
            correct.append((pred.cpu() == labels_all[image_index]))
            maps.append(batch_maps.cpu())
            bar.update(len(chunk))
        image_index, position = pairs // positions, pairs % positions
        stats = self._occluded_stats(clean, image_index, torch.cat(correct), torch.cat(maps), masks[position], figure)
        out = {k: v.view(n, positions, *v.shape[1:]) for k, v in stats.items()}
        out["corners"] = corners
        out["maps"] = torch.cat(maps).view(n, positions, *self.grid)
        return out

    # ------------------------------------------------------------------------------------- evaluate
    def evaluate(self, ctx: Context) -> DiagnosticResult:
        self._setup(ctx)
        args = ctx.args
        settings = ctx.data_settings()
        with_figure = settings["dataset"] == "shapetex" and settings["split"] != "texture_only"
        ds = ctx.dataset(**({"figure_masks": True} if with_figure else {}))
        self.mean, self.std = channel_stats(ds, ctx.image_size)
        figure = att.patch_coverage(ds.extra_labels["figure"].float() / 255, self.patch) if with_figure else None
        n = len(ds)
        chance = 1.0 / max(ctx.num_classes, 1)

        clean = self._clean_pass(ctx, ds)
        clean_top1 = clean["correct"].float().mean().item()
        clean_entropy = att.map_entropy(clean["maps"])
        levels: dict[str, list[dict[str, Any]]] = {}
        summary: dict[str, Any] = {"top1_clean": clean_top1, "rollout_entropy": clean_entropy.mean().item()}

        # PatchDrop over every evaluation image.
        drop_rows = [accuracy_row(0.0, int(clean["correct"].sum()), n, kind="clean")]
        for i, fraction in enumerate(args.drop_fractions):
            s = self._patch_drop(ctx, ds, clean, figure, fraction, i)
            dropped = max(1, round(fraction * self.grid[0] * self.grid[1])) / (self.grid[0] * self.grid[1])
            drop_rows.append(accuracy_row(fraction, int(s["correct"].sum()), n, kind="patch_drop",
                                          fraction_occluded=dropped, **self._map_columns(s, ctx.seed)))
        levels["patch_drop"] = drop_rows

        # Sliding occluders over a seeded subset.
        sub = take_subset(ds, args.sliding_images, ctx.seed)
        sub_figure = (att.patch_coverage(sub.extra_labels["figure"].float() / 255, self.patch)
                      if with_figure else None)
        sub_clean = self._clean_pass(ctx, sub)
        total = sum(len(sub) * occ.sliding_block_masks(self.grid, b)[0].shape[0] for b in args.blocks)
        sliding: dict[int, dict[str, Tensor]] = {}
        with ImageProgress(total, "attention: sliding occluders") as bar:
            for b in args.blocks:
                sliding[b] = self._sliding(ctx, sub, sub_clean, sub_figure, b, bar)
        sub_correct = sub_clean["correct"].float()
        slide_rows, position_rows = [], []
        for b, s in sliding.items():
            per_image = s["correct"].float().mean(1)  # accuracy over positions, per image
            low, high = bootstrap_mean_interval(per_image, ctx.seed)
            drop_low, drop_high = bootstrap_mean_interval(sub_correct - per_image, ctx.seed)
            stability = att.stability_per_image(s["similarity"])
            st_low, st_high = bootstrap_mean_interval(stability, ctx.seed)
            slide_rows.append({
                "level": b, "kind": "sliding", "fraction_occluded": b * b / (self.grid[0] * self.grid[1]),
                "n_images": len(sub), "positions": s["correct"].shape[1], "top1": per_image.mean().item(),
                "top1_low": low, "top1_high": high, "top1_clean_subset": sub_correct.mean().item(),
                "drop": (sub_correct - per_image).mean().item(), "drop_low": drop_low, "drop_high": drop_high,
                "stability": stability.nanmean().item(), "stability_low": st_low, "stability_high": st_high,
                **self._map_columns(s, ctx.seed)})
            for p, (row, col) in enumerate(s["corners"].tolist()):
                r = accuracy_row(b, int(s["correct"][:, p].sum()), len(sub), corner_row=row, corner_col=col,
                                 centre_row=row + (b - 1) / 2, centre_col=col + (b - 1) / 2)
                r["drop"] = sub_correct.mean().item() - r["top1"]
                position_rows.append(r)
        levels["sliding"] = slide_rows
        levels["sliding_positions"] = position_rows

        # Raw attention per layer and head.
        entropy, distance = clean["layer_head_entropy"], clean["layer_head_distance"]
        head_rows = [{"layer": layer, "head": head, "entropy": entropy[layer, head].item(),
                      "distance_patches": distance[layer, head].item(),
                      "distance_px": distance[layer, head].item() * self.patch}
                     for layer in range(entropy.shape[0]) for head in range(entropy.shape[1])]
        layer_rows = [{"layer": layer, "entropy": entropy[layer].mean().item(),
                       "distance_patches": distance[layer].mean().item(),
                       "distance_px": distance[layer].mean().item() * self.patch} for layer in range(entropy.shape[0])]
        levels["layers"], levels["heads"] = layer_rows, head_rows

        headline = next(r for r in slide_rows if r["level"] == self.block)
        summary.update({
            **dict(zip(("rollout_entropy_low", "rollout_entropy_high"), bootstrap_mean_interval(clean_entropy, ctx.seed))),
            "stability_score": headline["stability"], "stability_low": headline["stability_low"],
            "stability_high": headline["stability_high"], "stability_block": self.block,
            **{f"com_displacement_{k}": headline[f"displacement_{k}"] for k in
               ("mean_patches", "median_patches", "p90_patches", "mean_fraction_of_side",
                "median_fraction_of_side", "p90_fraction_of_side")},
            **{f"top1_sliding_b{r['level']}": r["top1"] for r in slide_rows},
            **{f"top1_drop{r['level']:g}": r["top1"] for r in drop_rows[1:]},
            **{f"mean_attention_distance_layer{r['layer']}": r["distance_patches"] for r in layer_rows},
            "mean_attention_distance_last": layer_rows[-1]["distance_patches"], "chance": chance,
        })
        if figure is not None:
            mass = att.region_mass(clean["maps"], figure)
            summary.update({"figure_mass_clean": mass.mean().item(), "figure_area": figure.mean().item(),
                            **dict(zip(("figure_mass_clean_low", "figure_mass_clean_high"),
                                       bootstrap_mean_interval(mass, ctx.seed))),
                            f"figure_mass_sliding_b{self.block}": headline["figure_mass"]})

        self._figures(ctx, sub, sub_clean, sliding, drop_rows, slide_rows, position_rows, head_rows, chance)
        self._save_maps(ctx, ds, clean, sub)
        lines = [f"clean top-1 {clean_top1:.4f} on {n} images; rollout entropy {summary['rollout_entropy']:.3f} "
                 f"(1 = uniform); mean attention distance, last layer {layer_rows[-1]['distance_patches']:.2f} patches",
                 f"{self.block}x{self.block} occluder on {len(sub)} images: centre-of-mass displacement mean "
                 f"{headline['displacement_mean_patches']:.2f} patches (p90 {headline['displacement_p90_patches']:.2f}); "
                 f"stability {headline['stability']:.3f} [{headline['stability_low']:.3f}, {headline['stability_high']:.3f}]"]
        if figure is not None:
            lines.append(f"rollout mass on the figure {summary['figure_mass_clean']:.3f} (figure area "
                         f"{summary['figure_area']:.3f})")
        settings_out = {"blocks": list(args.blocks), "drop_fractions": list(args.drop_fractions), "fill": args.fill,
                        "head_fusion": args.head_fusion, "discard_ratio": args.discard_ratio,
                        "rollout_source": self.source, "similarity": args.similarity,
                        "sliding_images": len(sub), "trajectory_block": self.block, "grid": list(self.grid),
                        "patch_size": self.patch, "fill_mean": self.mean.tolist(), "fill_std": self.std.tolist(),
                        "evaluated_images": n, "layers_in_rollout": int(entropy.shape[0])}
        return DiagnosticResult(settings=settings_out, levels=levels, summary=summary, lines=lines)

    def _map_columns(self, s: dict[str, Tensor], seed: int) -> dict[str, Any]:
        """Displacement, similarity, entropy (and figure mass) columns of an occluded pass."""
        columns = {f"displacement_{k}": v for k, v in att.displacement_summary(s["displacement"], self.side).items()}
        similarity = s["similarity"].flatten()
        columns["similarity_mean"] = similarity.nanmean().item()
        columns["entropy_mean"] = s["entropy"].mean().item()
        if "figure_mass" in s:
            columns["figure_mass"] = s["figure_mass"].mean().item()
        return columns

    def _save_maps(self, ctx: Context, ds: Any, clean: dict[str, Tensor], sub: Any) -> None:
        """rollout_maps.safetensors: the clean maps (N, gh, gw) of the evaluated images, for downstream use."""
        tensors = {"clean_maps": clean["maps"].contiguous(), "labels": ds.labels.contiguous(),
                   "correct": clean["correct"].to(torch.uint8).contiguous(),
                   "sample_images": sub.images[: max(ctx.args.samples, 1)].contiguous()}
        with atomic_path(ctx.run_dir / "rollout_maps.safetensors", suffix=".safetensors") as tmp:
            save_file(tensors, str(tmp), metadata={"grid": json.dumps(list(self.grid)), "source": self.source})

    # ------------------------------------------------------------------------------------- figures
    def _figures(self, ctx: Context, sub: Any, sub_clean: dict[str, Tensor], sliding: dict[int, dict[str, Tensor]],
                 drop_rows: list[dict], slide_rows: list[dict], position_rows: list[dict], head_rows: list[dict],
                 chance: float) -> None:
        s = sliding[self.block]
        samples = min(ctx.args.samples, len(sub))
        if samples:
            fig, rows = figs.sample_grid(sub, sub_clean, s, self.block, self.patch, samples, self.mean)
            ctx.save_figure("samples", fig, rows)
            fig, rows = figs.trajectories(sub, sub_clean, s, self.block, self.patch, samples)
            ctx.save_figure("trajectories", fig, rows)
        fig, rows = figs.occlusion_curve({"": (drop_rows, slide_rows)}, chance)
        ctx.save_figure("occlusion_accuracy", fig, rows)
        fig, rows = figs.position_heatmaps(position_rows, self.grid)
        ctx.save_figure("occlusion_heatmap", fig, rows)
        fig, rows = figs.displacement_histogram({b: v["displacement"] for b, v in sliding.items()}, self.side)
        ctx.save_figure("displacement_histogram", fig, rows)
        for key, label, stem in (("entropy", "attention entropy (1 = uniform)", "attention_entropy"),
                                 ("distance_patches", "mean attention distance (patches)", "attention_distance")):
            fig, rows = figs.layer_head_heatmap(head_rows, key, label)
            ctx.save_figure(stem, fig, rows)

    def compare(self, runs: Sequence[tuple[str, Path, DiagnosticResult]], out_dir: Path) -> list[str]:
        """One figure with the runs side by side (occlusion curves, stability, attention distance, entropy)."""
        named = {f"{i}-{Path(run_dir).name.split('-', 1)[-1]}": result for i, (_, run_dir, result) in enumerate(runs)}
        fig, rows = figs.comparison(named)
        path = write_figure(out_dir / "figures", "comparison", fig, rows)
        write_json_atomic(out_dir / "comparison.json", {
            "diagnostic": self.name, "figures": ["figures/comparison.png"],
            "runs": [{"run_id": run_id, "run_dir": str(run_dir), "summary": result.summary}
                     for run_id, run_dir, result in runs]}, default=str)
        lines = [f"{name}: stability {r.summary['stability_score']:.3f} [{r.summary['stability_low']:.3f}, "
                 f"{r.summary['stability_high']:.3f}], displacement {r.summary['com_displacement_mean_patches']:.2f} "
                 f"patches, clean top-1 {r.summary['top1_clean']:.4f}" for name, r in named.items()]
        return [*lines, f"comparison figure: {path}"]


add_arguments, run = command(AttentionRollout)
