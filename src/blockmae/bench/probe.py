"""`blockmae bench probe`: the cached-feature linear probe against MAE's per-epoch forward probe.

Both train the same head (BatchNorm without affine + Linear, LARS, same schedule) for the same number of
epochs on the same ShapeTex split with the same frozen encoder, in this process. Each path is charged
with everything it needs: the cached path extracts train and eval features once, then trains the head;
the forward path extracts the eval features once, then runs the encoder on augmented train images
every epoch. The last line is `speedup_vs_forward_probe: <ratio>`.
"""

from __future__ import annotations

import argparse
import time

from blockmae.data import load_dataset
from blockmae.config import number
from blockmae.errors import BlockMAEError
from blockmae.evaluation.config import LinearConfig
from blockmae.evaluation.features import extract_features, resolve_device
from blockmae.models.factory import load_encoder
from blockmae.evaluation.linear import train_linear_probe, train_linear_probe_forward


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", type=number(int, ">=1"), default=1000, help="ShapeTex train images (default 1000)")
    parser.add_argument("--eval-images", type=number(int, ">=1"), default=250, help="ShapeTex val images (default 250)")
    parser.add_argument("--epochs", type=number(int, ">=1"),
                        default=20, help="probe epochs for both paths (default 20)")
    parser.add_argument("--preset", default="vit_nano", help="encoder preset (random init; default vit_nano)")
    parser.add_argument("--image-size", type=number(int, ">=1"), default=32)
    parser.add_argument("--patch-size", type=number(int, ">=1"), default=4)
    parser.add_argument("--batch-size", type=number(int, ">=1"), default=256)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quick", action="store_true", help="500 images, 100 eval images, 20 epochs")


def run(args: argparse.Namespace) -> int:
    if args.quick:
        args.images, args.eval_images, args.epochs = 500, 100, 20
    if args.epochs < 1 or args.images < 2:
        raise BlockMAEError("--epochs must be >= 1 and --images >= 2")
    device = resolve_device(args.device)
    encoder = load_encoder("random", device, preset=args.preset, img_size=args.image_size, patch_size=args.patch_size)
    train = load_dataset("shapetex", "train", image_size=args.image_size, num_images=args.images)
    val = load_dataset("shapetex", "val", image_size=args.image_size, num_images=args.eval_images)
    cfg = LinearConfig(epochs=args.epochs, batch_size=args.batch_size, warmup_epochs=min(2, args.epochs))
    print(f"task: ShapeTex {len(train)} train / {len(val)} val images at {args.image_size} px, "
          f"{train.num_classes} classes; encoder {args.preset} (random init) on {device}; {args.epochs} epochs")

    def features(ds):  # noqa: ANN001, ANN202
        return extract_features(encoder.model, ds, "cls", batch_size=args.batch_size, device=device)

    # Warm-up (allocator, kernels) so that neither path pays the first-call cost.
    features(val)

    start = time.perf_counter()
    cached = train_linear_probe(features(train), train.labels, features(val), val.labels, train.num_classes, cfg,
                                device)
    cached_s = time.perf_counter() - start

    start = time.perf_counter()
    forward = train_linear_probe_forward(encoder.model, train, features(val), val.labels, cfg, "cls", None, device)
    forward_s = time.perf_counter() - start

    seen = args.epochs * len(train)
    print(f"cached-feature probe: {cached_s:.2f} s ({seen / cached_s:,.0f} train img/s), "
          f"top1 {cached.final['top1']:.3f}")
    print(f"forward probe (augmented, per-epoch encoder pass): {forward_s:.2f} s ({seen / forward_s:,.0f} train img/s), "
          f"top1 {forward.final['top1']:.3f}")
    print(f"speedup_vs_forward_probe: {forward_s / cached_s:.2f}")
    return 0
