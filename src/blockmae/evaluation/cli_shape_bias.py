"""`blockmae eval shape-bias --probe HEAD [--checkpoint PATH] --data shapetex|cue-conflict [--root DIR]`.

The probe head (from `blockmae probe`) names the encoder it was trained on (checkpoint and weights
hash); `--checkpoint` may be left out, and a checkpoint with other weights is refused. Results go to
`<output root>/shape-bias/<name>/results.json` and the registry (kind `shape-bias`, parent = checkpoint);
the decision on every image, with its labels, to `decisions.json` beside it (for paired comparisons of
encoders on the same images; `read_decisions`).
"""

from __future__ import annotations

import argparse
import datetime as _dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from blockmae.data import load_dataset
from blockmae.data.cue_conflict import load_category_mapping
from blockmae.config import number
from blockmae.errors import BlockMAEError
from blockmae.evaluation.features import encoder_features, resolve_device
from blockmae.evaluation.linear import LinearProbeHead, head_scores, load_head
from blockmae.evaluation.metrics import read_run_output
from blockmae.evaluation.shape_bias import (
    HUMAN_SHAPE_BIAS_TIN_SUBSET, category_decisions, cue_conflict_shape_bias, shapetex_shape_bias,
)
from blockmae.fileio import write_json_atomic
from blockmae.models.factory import Encoder, canonical_spec, load_encoder
from blockmae.registry import Registry

FULL_TIN_SUBSET = 550  # conflicting cue-conflict images whose two categories have Tiny-ImageNet classes
DECISIONS = "decisions.json"  # per-image decisions of a shape-bias run, written just before results.json


@dataclass
class ShapeBiasOutcome:
    run_id: str
    run_dir: Path
    metrics: dict[str, Any]


def encoder_for_head(meta: dict[str, Any], checkpoint: str | None, device: torch.device) -> Encoder:
    """Load the encoder the head was trained on (or `checkpoint`, which must hold the same weights)."""
    checkpoint = checkpoint or meta.get("checkpoint")
    if not checkpoint:
        raise BlockMAEError("the probe head does not name its checkpoint; pass --checkpoint PATH")
    enc_cfg = meta.get("encoder", {})
    encoder = load_encoder(checkpoint, device, preset=enc_cfg.get("preset", "vit_micro"),
                           img_size=int(enc_cfg.get("img_size", 32)), patch_size=int(enc_cfg.get("patch_size", 4)),
                           seed=int(enc_cfg.get("seed", 0)), arch=meta.get("arch"))
    if meta.get("weights_hash") and meta["weights_hash"] != encoder.weights_hash:
        raise BlockMAEError(f"the probe head was trained on other weights ({meta['weights_hash']}) than {checkpoint} "
                            f"({encoder.weights_hash}); pass the checkpoint the probe was trained on")
    return encoder


def _decisions(head: LinearProbeHead, encoder: Encoder, ds: Any, meta: dict[str, Any], device: torch.device,
               batch_size: int) -> torch.Tensor:
    feats = encoder_features(encoder, ds, meta.get("pool", "cls"), meta.get("layer"), batch_size, device)
    return head_scores(head, feats)


def evaluate_shapetex(head: LinearProbeHead, encoder: Encoder, meta: dict[str, Any], device: torch.device,
                      num_images: int | None = None, batch_size: int = 256,
                      seed: int = 0) -> tuple[dict[str, Any], dict[str, Any]]:
    """ShapeTex: shape bias on cue_conflict, shape_only accuracy, texture_only read as shape k <-> texture k.
    Returns (metrics, decisions.json record: per split the decided class and the labels it is scored by)."""
    if meta.get("dataset") != "shapetex":
        raise BlockMAEError(f"--data shapetex needs a probe trained on shapetex, this one was trained on "
                            f"{meta.get('dataset')}")
    options = {} if num_images is None else {"num_images": num_images}
    splits = {s: load_dataset("shapetex", s, image_size=encoder.image_size, **options)
              for s in ("cue_conflict", "shape_only", "texture_only")}
    decided = {s: _decisions(head, encoder, ds, meta, device, batch_size).argmax(1) for s, ds in splits.items()}
    cc, so, to = splits["cue_conflict"], splits["shape_only"], splits["texture_only"]
    to_texture = to.extra_labels.get("texture", to.labels)
    report = shapetex_shape_bias(
        decided["cue_conflict"], cc.labels, cc.extra_labels["texture"],
        decided["shape_only"], so.labels,
        decided["texture_only"], to_texture, seed=seed,
    )
    decisions = {
        "data": "shapetex", "num_images": len(cc),
        "cue_conflict": {"decisions": decided["cue_conflict"].tolist(), "shape": cc.labels.tolist(),
                         "texture": cc.extra_labels["texture"].tolist()},
        "shape_only": {"decisions": decided["shape_only"].tolist(), "labels": so.labels.tolist()},
        "texture_only": {"decisions": decided["texture_only"].tolist(), "texture": to_texture.tolist()},
    }
    return report.metrics(), decisions


def evaluate_cue_conflict(head: LinearProbeHead, encoder: Encoder, meta: dict[str, Any], device: torch.device,
                          root: str | None, batch_size: int = 256,
                          seed: int = 0) -> tuple[dict[str, Any], dict[str, Any]]:
    """Geirhos cue-conflict with a Tiny-ImageNet probe: 16-category mean-probability decisions. Returns
    (metrics, decisions.json record: the used images' positions among the conflicting stimuli, their
    decided category and shape and texture categories, all as indices into `categories`)."""
    ids = meta.get("class_ids") or []
    mapping = load_category_mapping()
    if not any(w in ids for wnids in mapping.values() for w in wnids):
        raise BlockMAEError("--data cue-conflict needs a probe trained on Tiny-ImageNet classes (wnids); "
                            f"this head's classes ({meta.get('dataset')}) map to none of the 16 categories")
    ds = load_dataset("cue-conflict", "test", root=root, image_size=encoder.image_size, keep_agreeing=False)
    probs = _decisions(head, encoder, ds, meta, device, batch_size).softmax(dim=1)
    texture = ds.extra_labels["texture"]
    result, used, covered = cue_conflict_shape_bias(probs, ids, mapping, ds.class_names, ds.labels, texture, seed=seed)
    decided, _ = category_decisions(probs, ids, mapping, ds.class_names)
    metrics = {**result.metrics(), "covered_categories": covered, "aggregation": "mean",
               "human_shape_bias": HUMAN_SHAPE_BIAS_TIN_SUBSET, "full_subset_size": FULL_TIN_SUBSET}
    decisions = {
        "data": "cue-conflict", "categories": list(ds.class_names), "covered_categories": covered,
        "cue_conflict": {"index": torch.nonzero(used).flatten().tolist(), "decisions": decided[used].tolist(),
                         "shape": ds.labels[used].tolist(), "texture": texture[used].tolist()},
    }
    return metrics, decisions


def run_shape_bias(probe: str | Path, data: str, checkpoint: str | None = None, root: str | None = None,
                   output_root: str | Path = "outputs", name: str | None = None, device: str = "auto",
                   num_images: int | None = None, batch_size: int = 256, seed: int = 0,
                   verbose: bool = True, encoder: Encoder | None = None) -> ShapeBiasOutcome:
    """Evaluate a probe head's shape bias on `data` and record the run; see the module docstring.

    `encoder`: the already loaded encoder of the head (skips loading; its weights hash is checked)."""
    if data not in ("shapetex", "cue-conflict"):
        raise BlockMAEError(f"--data must be shapetex or cue-conflict, not '{data}'")
    dev = resolve_device(device)
    head, meta = load_head(probe, dev)
    if encoder is None:
        encoder = encoder_for_head(meta, checkpoint, dev)
    elif meta.get("weights_hash") not in (None, encoder.weights_hash):
        raise BlockMAEError("the probe head was trained on other weights than the encoder passed in")
    encoder.model.to(dev)
    parent = canonical_spec(encoder.checkpoint)
    probe_path = Path(probe).resolve()
    name = name or f"shape-bias-{data}-{(probe_path if probe_path.is_dir() else probe_path.parent).name}"
    out_root = Path(output_root)
    run_dir = out_root / "shape-bias" / f"{name}-{_dt.datetime.now():%Y%m%d-%H%M%S}"
    run_dir.mkdir(parents=True, exist_ok=True)
    config = {"probe": str(Path(probe).resolve()), "data": data, "root": root, "checkpoint": parent,
              "num_images": num_images, "seed": seed, "weights_hash": encoder.weights_hash}
    with Registry(out_root).track("shape-bias", run_dir, config, parent=parent, name=name) as run:
        if data == "shapetex":
            metrics, decisions = evaluate_shapetex(head, encoder, meta, dev, num_images, batch_size, seed)
        else:
            metrics, decisions = evaluate_cue_conflict(head, encoder, meta, dev, root, batch_size, seed)
        run.metrics.update(metrics)
        write_json_atomic(run_dir / DECISIONS, decisions)
        write_json_atomic(run_dir / "results.json", {"run_id": run.id, "config": config, "metrics": metrics,
                                                     "decisions": DECISIONS})
    if verbose:
        print(format_shape_bias(data, metrics))
        print(f"run: {run_dir} (registry id {run.id})")
    return ShapeBiasOutcome(run.id, run_dir, metrics)


def read_decisions(run_dir: str | Path) -> dict[str, Any]:
    """A shape-bias run's decisions.json: "data" (shapetex or cue-conflict) and "cue_conflict" with lists
    "decisions", "shape", "texture" (one int per image; cue-conflict also "index", the image's position
    among the conflicting stimuli, and top-level "categories"); shapetex also "shape_only" ("decisions",
    "labels") and "texture_only" ("decisions", "texture"). `report.stats.cue_outcomes` codes the
    cue-conflict decisions for a paired bootstrap. One-line BlockMAEError when it is missing (a run from
    before per-image outputs), unreadable or inconsistent."""
    data = read_run_output(run_dir, DECISIONS, "shape-bias run")
    wanted = {"cue_conflict": ("decisions", "shape", "texture")}
    if data.get("data") == "shapetex":
        wanted.update(shape_only=("decisions", "labels"), texture_only=("decisions", "texture"))
    for split, keys in wanted.items():
        part = data.get(split)
        lists = [part.get(k) for k in keys] if isinstance(part, dict) else [None]
        if not all(isinstance(v, list) for v in lists) or len({len(v) for v in lists}) != 1:
            raise BlockMAEError(f"{run_dir}: decisions.json needs lists {', '.join(keys)} of one length under "
                                f"'{split}'; rerun the shape-bias run")
    return data


def format_shape_bias(data: str, m: dict[str, Any]) -> str:
    lines = [f"shape bias: {m['shape_bias']:.3f}  95% CI [{m['shape_bias_low']:.3f}, {m['shape_bias_high']:.3f}]  "
             f"on {m['n_images']} {data} images"]
    lines.append(f"decisions: shape {m['frac_shape']:.3f}  texture {m['frac_texture']:.3f}  "
                 f"neither {m['frac_neither']:.3f}")
    if data == "shapetex":
        lines.append(f"shape_only accuracy: {m['shape_only_acc']:.3f}   "
                     f"texture_only read as its shape class (k<->k): {m['texture_only_as_shape']:.3f}")
    else:
        subset = "" if m["n_images"] == m["full_subset_size"] else \
            f" (the full stimulus set gives {m['full_subset_size']} images; this root has {m['n_images']})"
        lines.append(f"human reference on this subset: {m['human_shape_bias']:.3f}{subset}")
        lines.append(f"categories: {len(m['covered_categories'])} covered, probabilities averaged per category")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--probe", required=True, help="probe head (head.safetensors or the probe's run dir)")
    parser.add_argument("--checkpoint", help="encoder checkpoint (default: the one the probe names); 'random' too")
    parser.add_argument("--data", required=True, choices=("shapetex", "cue-conflict"), help="evaluation images")
    parser.add_argument("--root", help="cue-conflict stimuli folder (or a folder made by `blockmae data prepare`)")
    parser.add_argument("--num-images", type=number(int, ">=1"),
                        help="shapetex: images per split (default: its default)")
    parser.add_argument("--output-root", default="outputs", help="registry and results root (default: outputs)")
    parser.add_argument("--name", help="run name")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    parser.add_argument("--batch-size", type=number(int, ">=1"), default=256)
    parser.add_argument("--seed", type=number(int, ">=0"), default=0, help="bootstrap seed")


def run(args: argparse.Namespace) -> int:
    run_shape_bias(args.probe, args.data, args.checkpoint, args.root, args.output_root, args.name, args.device,
                   args.num_images, args.batch_size, args.seed)
    return 0
