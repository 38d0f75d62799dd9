"""`blockmae weights list [--root DIR]`: the reference encoders in a table. It reads manifests only (the
store), so it loads neither the engine, the models nor an application."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from blockmae.masking import mask_label
from blockmae.references.store import REFERENCES_DIR, ROOT_ENV, Reference, list_references, references_root
from blockmae.text import table


def add_root(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", metavar="DIR", default=None,
                        help=f"folder of reference folders (default: ${ROOT_ENV} when set, else the package's, "
                             f"{REFERENCES_DIR})")


def linear_top1(evaluation: dict[str, Any] | None) -> float | None:
    """The linear probe's top-1 accuracy in a manifest's evaluation: `linear_top1`, `linear.top1` or `top1`."""
    if not isinstance(evaluation, dict):
        return None
    linear = evaluation.get("linear")
    for value in (evaluation.get("linear_top1"), linear.get("top1") if isinstance(linear, dict) else None,
                  evaluation.get("top1")):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


def _row(ref: Reference) -> list[str]:
    mask = ref.manifest.get("mask", {})
    try:
        mask_text = mask_label(mask["family"], int(mask["block"]), float(mask["ratio"]), mask.get("align"))
    except (KeyError, TypeError, ValueError):
        mask_text = ref.label
    top1 = linear_top1(ref.manifest.get("evaluation"))
    return [ref.id, mask_text, str(ref.seed),
            f"{ref.images_seen:,}" if ref.images_seen is not None else "-",
            f"{ref.final_loss:.4f}" if ref.final_loss is not None else "-",
            f"{100 * top1:.1f}%" if top1 is not None else "-",
            str(ref.manifest.get("trained_on") or "-"), ref.manifest["weights"]["sha256"][:12]]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_root(parser)


def run(args: argparse.Namespace) -> int:
    args.root = args.root or str(references_root())
    refs = list_references(Path(args.root))
    if refs:
        header = ["id", "mask", "seed", "images seen", "final loss", "linear top-1", "trained on", "sha256"]
        print(table(header, [_row(ref) for ref in refs]))
        print(f"{len(refs)} reference encoder(s) in {args.root}; in Python, "
              f"blockmae.references.find_reference(block, seed).weights_path is a checkpoint for load_encoder")
    else:
        print(f"no reference encoders in {args.root}")
    return 0
