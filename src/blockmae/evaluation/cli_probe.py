"""`blockmae probe --config configs/linear_probe.yaml [checkpoint=PATH|random] [key=value ...]`.

Linear and/or k-NN probe of a frozen encoder; writes `head.safetensors`, `predictions.json` (the top-1
class of every eval image, for paired comparisons of encoders on the same images) and, last,
`results.json` to the run directory, and records the run (parent = the checkpoint) in the registry of
`output_root`.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from blockmae.config import add_config_arguments, load_config, to_dict, to_yaml
from blockmae.data import load_dataset, subset
from blockmae.data.roots import resolve_root
from blockmae.data.tiny_imagenet import LAYOUT, find_data_dir, read_wnids
from blockmae.lock import RunLock
from blockmae.errors import BlockMAEError
from blockmae.evaluation.config import ProbeConfig
from blockmae.evaluation.features import encoder_features, resolve_device
from blockmae.evaluation.knn import knn_classify
from blockmae.evaluation.linear import load_head, save_head, train_linear_probe, train_linear_probe_forward
from blockmae.evaluation.metrics import NO_DECISION, read_run_output
from blockmae.fileio import claim_output_dir, write_json_atomic
from blockmae.models.factory import Encoder, canonical_spec, checkpoint_stem, load_encoder
from blockmae.registry import Registry, flatten

PREDICTIONS = "predictions.json"  # per-image top-1 classes of a probe run, written just before results.json


@dataclass
class ProbeOutcome:
    run_id: str
    run_dir: Path
    metrics: dict[str, Any]
    head_path: Path | None


def class_ids(cfg: ProbeConfig, dataset: Any) -> list[str]:
    """Stable class identifiers for the head's metadata (Tiny-ImageNet: the wnids, in class order)."""
    if cfg.data.dataset == "tiny-imagenet":
        data_dir, _ = resolve_root("tiny-imagenet", cfg.data.root, find_data_dir, LAYOUT, None)
        return read_wnids(data_dir)
    return list(dataset.class_names)


def default_name(cfg: ProbeConfig) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{cfg.kind}-{checkpoint_stem(cfg.checkpoint)}-{cfg.data.dataset}")


def load_split(cfg: ProbeConfig, split: str, image_size: int) -> Any:
    """Split `split`; `data.num_images` images of it (ShapeTex generates them; a real dataset gives a
    class-balanced subset drawn with `data.seed`)."""
    options: dict[str, Any] = dict(cfg.data.options)
    shapetex, wanted = cfg.data.dataset == "shapetex", cfg.data.num_images
    if shapetex and wanted is not None:
        options["num_images"] = wanted
    dataset = load_dataset(cfg.data.dataset, split, root=cfg.data.root, image_size=image_size, **options)
    if shapetex or wanted is None or wanted >= len(dataset):
        return dataset
    print(f"{cfg.data.dataset} {split}: a class-balanced subset of {wanted} of {len(dataset)} images "
          f"(data.num_images; data.seed={cfg.data.seed}; null for all)", file=sys.stderr, flush=True)
    return subset(dataset, wanted, cfg.data.seed)


# Settings that do not make a different probe: a rerun that changes only these may replace the results.
PROBE_KINDS = ("probe", "knn")
_RERUN_KEYS_FREE = ("name", "run_dir", "output_root", "device")


def check_run_dir(run_dir: Path, config: dict[str, Any]) -> None:
    """Refuse a run dir that already holds another probe's head or results (a rerun of the same probe,
    e.g. a sweep retrying a failed one, may replace its own)."""
    results, head = run_dir / "results.json", run_dir / "head.safetensors"
    if results.is_file():
        try:
            saved = json.loads(results.read_text()).get("config", {})
        except (ValueError, AttributeError):
            saved = None
        if not isinstance(saved, dict):
            raise BlockMAEError(f"run_dir {run_dir} holds an unreadable results.json; use another run_dir or delete it")
        old, new = ({k: v for k, v in flatten(c).items() if k not in _RERUN_KEYS_FREE} for c in (saved, config))
        changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
        if changed:
            listed = ", ".join(f"{k} {old.get(k)} -> {new.get(k)}" for k in changed[:4])
            more = f" and {len(changed) - 4} more" if len(changed) > 4 else ""
            raise BlockMAEError(f"run_dir {run_dir} already holds another probe's results ({listed}{more}); "
                                "use another run_dir (or none: a new folder is made) or delete it")
    elif head.is_file():
        _, meta = load_head(head)
        if meta.get("weights_hash") != config["weights_hash"] or meta.get("dataset") != config["data"]["dataset"]:
            raise BlockMAEError(f"run_dir {run_dir} already holds another probe's head (head.safetensors); "
                                "use another run_dir (or none: a new folder is made) or delete it")


def run_probe(cfg: ProbeConfig, encoder: Encoder | None = None, verbose: bool = True) -> ProbeOutcome:
    """Run the probe(s) of `cfg` and record them; `encoder` skips loading when the caller has it."""
    cfg.validate()  # also when built in Python rather than by load_config
    device = resolve_device(cfg.device)
    if encoder is None:
        e = cfg.encoder
        encoder = load_encoder(cfg.checkpoint, device, preset=e.preset, img_size=e.img_size, patch_size=e.patch_size,
                               seed=e.seed, arch_from=e.arch_from)
    encoder.model.to(device)
    name = cfg.name or default_name(cfg)
    root = Path(cfg.output_root)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = Path(cfg.run_dir) if cfg.run_dir else root / "probes" / f"{name}-{stamp}"
    if not cfg.run_dir:  # two probes started in the same second get their own folders
        run_dir = next(d for i in range(1, 10_000) if not (d := run_dir.with_name(
            run_dir.name + (f"-{i}" if i > 1 else ""))).exists())
    config = to_dict(cfg)
    config["weights_hash"] = encoder.weights_hash
    kind = "knn" if cfg.kind == "knn" else "probe"
    claim_output_dir(run_dir, kind, option="run_dir", accept=PROBE_KINDS)
    lock = RunLock(run_dir).acquire()  # one probe at a time per folder: two would mix their files
    try:
        check_run_dir(run_dir, config)
    except BaseException:
        lock.release()
        raise
    registry = Registry(root)
    head_path = None
    with lock, registry.track(kind, run_dir, config, parent=canonical_spec(cfg.checkpoint), name=name) as run:
        train_ds = load_split(cfg, cfg.data.train_split, encoder.image_size)
        eval_ds = load_split(cfg, cfg.data.eval_split, encoder.image_size)
        cache = root / "feature_cache" if cfg.data.cache_features else None
        pool, layer = cfg.encoder.pool, cfg.encoder.layer

        def feats(ds: Any) -> torch.Tensor:
            return encoder_features(encoder, ds, pool, layer, cfg.data.batch_size, device, cfg.autocast, cache)

        eval_x = feats(eval_ds)
        train_x = feats(train_ds) if (cfg.kind != "linear" or not cfg.linear.augment) else None
        metrics: dict[str, Any] = {"num_train": len(train_ds), "num_eval": len(eval_ds), "num_classes": train_ds.num_classes}
        history: list[dict[str, float]] = []
        predicted: dict[str, list[int]] = {}
        if cfg.kind in ("linear", "both"):
            if cfg.linear.augment:
                result = train_linear_probe_forward(encoder.model, train_ds, eval_x, eval_ds.labels, cfg.linear, pool,
                                                    layer, device, cfg.autocast)
            else:
                assert train_x is not None
                result = train_linear_probe(train_x, train_ds.labels, eval_x, eval_ds.labels, train_ds.num_classes,
                                            cfg.linear, device)
            metrics.update(result.metrics())
            predicted["linear"] = result.predictions(eval_x).tolist()
            history = result.history
            head_meta = {
                "pool": pool, "layer": layer, "class_names": list(train_ds.class_names),
                "class_ids": class_ids(cfg, train_ds), "dataset": cfg.data.dataset, "checkpoint": canonical_spec(cfg.checkpoint),
                "weights_hash": encoder.weights_hash, "encoder": to_dict(cfg.encoder), "arch": encoder.arch,
                "image_size": encoder.image_size,
            }
            head_path = save_head(result.head, run_dir / "head.safetensors", head_meta)
        if cfg.kind in ("knn", "both"):
            assert train_x is not None
            knn, knn_predicted = knn_classify(train_x, train_ds.labels, eval_x, eval_ds.labels, train_ds.num_classes,
                                              cfg.knn.k, cfg.knn.temperature)
            predicted["knn"] = knn_predicted.tolist()
            metrics.update({"knn_top1": knn["top1"], "knn_top5": knn["top5"]})
        run.metrics.update(metrics)
        write_json_atomic(run_dir / PREDICTIONS, predictions_record(cfg, eval_ds, predicted), default=str)
        write_json_atomic(run_dir / "results.json", {"run_id": run.id, "config": config, "metrics": metrics,
                                                     "history": history, "predictions": PREDICTIONS}, default=str)
    if verbose:
        print(format_metrics(name, cfg, metrics))
        print(f"run: {run_dir} (registry id {run.id})")
    return ProbeOutcome(run.id, run_dir, metrics, head_path)


def predictions_record(cfg: ProbeConfig, eval_ds: Any, predicted: dict[str, list[int]]) -> dict[str, Any]:
    """predictions.json: the eval images' labels and each probe's top-1 class, in eval-dataset order, with
    what identifies those images (two runs with equal `dataset`, `split`, `num_images`, `subset_seed` and
    `options` saw the same images in the same order)."""
    subset_seed = None if cfg.data.dataset == "shapetex" or cfg.data.num_images is None else cfg.data.seed
    return {"dataset": cfg.data.dataset, "split": cfg.data.eval_split, "num_images": len(eval_ds),
            "subset_seed": subset_seed, "options": dict(cfg.data.options), "no_decision": NO_DECISION,
            "labels": eval_ds.labels.tolist(), **predicted}


def read_predictions(run_dir: str | Path) -> dict[str, Any]:
    """A probe run's predictions.json (see :func:`predictions_record`): "labels" and "linear" and/or "knn",
    lists of one int per eval image (NO_DECISION, -1, where k-NN had no vote). One-line BlockMAEError when
    it is missing (a probe from before per-image outputs), unreadable or inconsistent."""
    data = read_run_output(run_dir, PREDICTIONS, "probe")
    labels = data.get("labels")
    probes = [p for p in ("linear", "knn") if p in data]
    if not isinstance(labels, list) or not probes or any(
            not isinstance(data[p], list) or len(data[p]) != len(labels) for p in probes):
        raise BlockMAEError(f"{run_dir}: predictions.json needs lists 'labels' and 'linear' and/or 'knn' of one "
                            "length; rerun the probe")
    return data


def format_metrics(name: str, cfg: ProbeConfig, m: dict[str, Any]) -> str:
    lines = [f"{name}: {cfg.data.dataset} {cfg.data.eval_split} ({m['num_eval']} images, {m['num_classes']} classes), "
             f"pool={cfg.encoder.pool}"]
    if "top1" in m:
        lines.append(f"linear  top1 {m['top1']:.4f}  top5 {m['top5']:.4f}  (final epoch {cfg.linear.epochs}; "
                     f"best epoch {m['best_epoch']}: top1 {m['best_top1']:.4f})")
    if "knn_top1" in m:
        lines.append(f"k-NN    top1 {m['knn_top1']:.4f}  top5 {m['knn_top5']:.4f}  (k={cfg.knn.k}, T={cfg.knn.temperature})")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, "probe YAML: a file or a shipped name (e.g. linear_probe); defaults otherwise",
                         "dotted overrides, e.g. checkpoint=outputs/run/checkpoints/last kind=both linear.epochs=50")


def run(args: argparse.Namespace) -> int:
    cfg = load_config(ProbeConfig, args.config, args.overrides)
    if args.print_config:
        print(to_yaml(cfg), end="")
        return 0
    run_probe(cfg)
    return 0
