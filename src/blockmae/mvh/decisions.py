"""Decision makers: images in, 16-class decisions (and the category probabilities behind them) out.

One interface, :class:`DecisionMaker`, for two kinds of models:

* :class:`ImageNetClassifier`: any ImageNet-1k classifier with its own 1000-way head (a timm model,
  ``timm:NAME[:FILE]``, or a Hugging Face image classifier directory), at its own input size and
  normalisation (timm's data config; the HF image processor's config). model-vs-human's rule: softmax
  over the 1000 classes, the mean probability over each category's ImageNet classes
  (`blockmae.mvh.categories.IMAGENET_INDICES`), decision = the argmax over the 16. Stimuli are fed
  whole at the input size (model-vs-human's 224-px images go in uncropped; no crop_pct).
* :class:`ProbeDecisionMaker`: any encoder blockmae takes, through its linear probe: softmax over the
  probe's classes, mean over each category's classes (for a Tiny-ImageNet probe the shipped mapping
  ``tiny-imagenet-to-16-categories.tsv``: 11 covered categories), argmax over the covered categories.

`decide(images)` takes uint8 (B, 3, H, W) or float images in [0, 1] and resizes them to the model's
input size (antialiased bilinear, the evaluation path's resize) when they differ.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import timm
import torch
from torch import Tensor, nn

from blockmae.data.cue_conflict import CATEGORIES, load_category_mapping
from blockmae.data.augment import normalize_unit, unit_float
from blockmae.errors import BlockMAEError
from blockmae.evaluation.features import encode_batch
from blockmae.evaluation.shape_bias import category_probabilities
from blockmae.models.external import fit_to_weights, hf_config, parse_timm_spec, read_weights
from blockmae.models.factory import Encoder, weights_hash
from blockmae.models.hf import hf_preprocessing, load_hf_image_classifier
from blockmae.models.io import load_compatible_state
from blockmae.mvh.categories import IMAGENET_INDICES

IMAGENET_CLASSES = 1000


@dataclass
class Decisions:
    """A batch's decisions: `probabilities` (B, C) over `categories`, the decision = the argmax."""

    categories: tuple[str, ...]
    probabilities: Tensor  # float32 on the CPU

    @property
    def decisions(self) -> list[str]:
        return [self.categories[i] for i in self.probabilities.argmax(dim=1).tolist()]


class DecisionMaker:
    """Images -> 16-class decisions. `categories`: those it can answer (16, or a probe's covered ones)."""

    name: str  # the trial files' `subj`
    image_size: int
    categories: tuple[str, ...]

    def category_probabilities(self, images: Tensor) -> Tensor:
        """(B, len(categories)) of float images in [0, 1] at `image_size` on the model's device."""
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        raise NotImplementedError

    @torch.no_grad()
    def decide(self, images: Tensor) -> Decisions:
        x = images.to(self.device)
        x = unit_float(x, self.image_size)
        return Decisions(self.categories, self.category_probabilities(x).float().cpu())


def mean_category_probabilities(probs: Tensor) -> Tensor:
    """model-vs-human's aggregation: (B, 1000) ImageNet probabilities -> (B, 16) means over each category."""
    index = {c: torch.tensor(IMAGENET_INDICES[c], device=probs.device) for c in CATEGORIES}
    return torch.stack([probs.index_select(1, index[c]).mean(dim=1) for c in CATEGORIES], dim=1)


class ImageNetClassifier(DecisionMaker):
    """A 1000-way ImageNet classifier (`model(x)` -> logits) with its input size and normalisation."""

    def __init__(self, model: nn.Module, image_size: int, mean: Sequence[float], std: Sequence[float], name: str,
                 source: str) -> None:
        self.model = model.eval()
        self.image_size = int(image_size)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.name, self.source = name, source
        self.categories = tuple(CATEGORIES)
        self.autocast = False  # bf16 on request (the diagnostics' --autocast)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: torch.device) -> "ImageNetClassifier":
        self.model.to(device)
        return self

    def logits(self, images: Tensor) -> Tensor:
        mean = torch.tensor(self.mean, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=images.device).view(1, 3, 1, 1)
        out = self.model((images - mean) / std)
        return getattr(out, "logits", out)  # transformers' output object, or a plain tensor

    def category_probabilities(self, images: Tensor) -> Tensor:
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            logits = self.logits(images).float()
        if logits.shape[-1] != IMAGENET_CLASSES:
            raise BlockMAEError(f"{self.source} gives {logits.shape[-1]} classes, not ImageNet-1k's 1000")
        return mean_category_probabilities(logits.softmax(dim=1))

    def as_encoder(self) -> Encoder:
        """The classifier as an `Encoder` record (identity for the registry and results.json)."""
        arch = {"img_size": self.image_size, "source": self.source.split(":")[0], "model": self.source,
                "mean": list(self.mean), "std": list(self.std), "num_classes": IMAGENET_CLASSES}
        return Encoder(self.model, self.source, weights_hash(self.model), arch, {"decision_maker": "imagenet-1k"})


class ProbeDecisionMaker(DecisionMaker):
    """An encoder and its linear probe; categories = those the probe's classes cover."""

    def __init__(self, encoder: Encoder, head: nn.Module, meta: dict[str, Any], name: str,
                 autocast: bool = False) -> None:
        self.encoder, self.head, self.meta, self.name, self.autocast = encoder, head, meta, name, autocast
        self.image_size = encoder.image_size
        self.class_ids = list(meta.get("class_ids") or [])
        self.mapping = load_category_mapping()
        if not any(w in self.class_ids for wnids in self.mapping.values() for w in wnids):
            raise BlockMAEError(f"the probe's classes ({meta.get('dataset')}) belong to none of the 16 categories: "
                                f"model-vs-human needs an ImageNet classifier or a probe trained on Tiny-ImageNet")
        probe = torch.full((1, len(self.class_ids)), 1.0 / len(self.class_ids))
        self.categories = tuple(category_probabilities(probe, self.class_ids, self.mapping)[1])

    @property
    def device(self) -> torch.device:
        return next(self.head.parameters()).device

    def category_probabilities(self, images: Tensor) -> Tensor:
        feats = encode_batch(self.encoder.model, normalize_unit(images), self.meta.get("pool", "cls"),
                             self.meta.get("layer"), self.autocast)
        probs = self.head(feats).float().softmax(dim=1)
        return category_probabilities(probs, self.class_ids, self.mapping)[0]


# -- loading ImageNet classifiers --------------------------------------------------------------------


def _hf_classifier_config(path: Path) -> dict[str, Any] | None:
    config = hf_config(path)
    if config is None or not any(str(a).endswith("ForImageClassification") for a in config.get("architectures", [])):
        return None
    return config


def is_imagenet_classifier(spec: str) -> bool:
    """Whether `spec` names a model with its own 1000-way ImageNet head (else: an encoder for a probe).

    ``timm:NAME`` (pretrained weights) always; ``timm:NAME:FILE`` when FILE holds a 1000-row ``head``;
    a Hugging Face ``*ForImageClassification`` directory with 1000 labels."""
    if spec.startswith("timm:"):
        name, file = parse_timm_spec(spec)
        if file is None:
            return True
        state = read_weights(file)
        head = state.get("head.weight", state.get("head.fc.weight"))
        return head is not None and head.shape[0] == IMAGENET_CLASSES
    config = _hf_classifier_config(Path(spec[3:] if spec.startswith("hf:") else spec))
    return config is not None and len(config.get("id2label", {})) == IMAGENET_CLASSES


def load_classifier(spec: str, name: str | None = None) -> ImageNetClassifier:
    """The ImageNet classifier `spec` names (``timm:NAME[:FILE]``, ``hf:DIR`` or a HF directory), on the CPU."""
    if spec.startswith("timm:"):
        return load_timm_classifier(spec, name)
    return load_hf_classifier(Path(spec[3:] if spec.startswith("hf:") else spec), spec, name)


def load_timm_classifier(spec: str, name: str | None = None) -> ImageNetClassifier:
    model_name, file = parse_timm_spec(spec)
    try:
        if file is None:  # the hub's weights (or timm's local cache of them)
            model = timm.create_model(model_name, pretrained=True)
        else:
            state = read_weights(file)
            model = timm.create_model(model_name, pretrained=False)
            if hasattr(model, "patch_embed"):  # a ViT trained at another size or patch: rebuild to fit
                model = fit_to_weights(model, model_name, state)
            load_compatible_state(model, state, str(file))
    except BlockMAEError:
        raise
    except Exception as err:  # noqa: BLE001  (unknown names, offline hub, ...: the user's spec)
        hint = "" if file else f"; without a network pass the weights as timm:{model_name}:FILE"
        raise BlockMAEError(f"cannot load {spec}: {str(err).splitlines()[0][:200]}{hint}") from None
    if getattr(model, "num_classes", IMAGENET_CLASSES) != IMAGENET_CLASSES:
        raise BlockMAEError(f"{spec} has {model.num_classes} classes, not ImageNet-1k's 1000")
    config = timm.data.resolve_model_data_config(model)
    size = config["input_size"][-1]
    if hasattr(model, "patch_embed"):
        size = model.patch_embed.img_size[0]
    return ImageNetClassifier(model, size, config["mean"], config["std"], name or model_name, spec)


def load_hf_classifier(path: Path, spec: str, name: str | None = None) -> ImageNetClassifier:
    config = _hf_classifier_config(path)
    if config is None:
        raise BlockMAEError(f"{path} is not a Hugging Face image classifier (config.json with a "
                            f"*ForImageClassification architecture)")
    if len(config.get("id2label", {})) != IMAGENET_CLASSES:
        raise BlockMAEError(f"{path} has {len(config.get('id2label', {}))} labels, not ImageNet-1k's 1000")
    model = load_hf_image_classifier(path)
    size, mean, std = hf_preprocessing(path)
    return ImageNetClassifier(model, size or int(config.get("image_size", 224)), mean, std, name or path.name,
                              f"hf:{path}")
