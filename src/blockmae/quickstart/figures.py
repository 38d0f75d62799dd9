"""Stage: the quickstart's own figures (reconstructions) and the curves its report draws."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from blockmae.data import load_dataset
from blockmae.data.augment import normalize
from blockmae.engine.logs import loss_curve, read_metrics
from blockmae.masking import MaskGenerator, canonical_mask
from blockmae.models.io import load_mae
from blockmae.quickstart.config import QuickstartConfig, arm_key, arm_name
from blockmae.quickstart.evaluate import EncoderSpec
from blockmae.report.document import Image
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
        model, _ = load_mae(spec.checkpoint)
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
