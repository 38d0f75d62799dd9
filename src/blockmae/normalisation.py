"""ImageNet's channel statistics: the normalisation every encoder here expects (data pipelines, exported
models, foreign encoders). Below both data and models, so neither imports the other for them."""

from __future__ import annotations

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
