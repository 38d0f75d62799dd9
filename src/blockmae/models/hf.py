"""Hugging Face glue in one place: transformers as an optional peer (`require_transformers`,
`quiet_transformers`), ViTMAE <-> blockmae/timm names, a ViTMAE with a blockmae model's architecture, HF ViT /
ViTMAE directories as encoders (`load_hf`, for models.factory), HF image classifiers (`load_hf_image_classifier`,
for model-vs-human) and the input size and normalisation an image processor records (`hf_preprocessing`)."""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from blockmae.errors import BlockMAEError
from blockmae.models.external import ForeignViT, read_weights, timm_vit
from blockmae.models.io import load_compatible_state
from blockmae.normalisation import IMAGENET_MEAN, IMAGENET_STD


def require_transformers() -> Any:
    """The transformers module, when it is installed and can use this torch; else a one-line BlockMAEError.

    transformers is optional (HF export and the equivalence checks); recent releases switch their PyTorch
    support off below their own torch floor (5.20: torch 2.6) while blockmae runs on torch 2.4."""
    try:
        import transformers  # optional: HF export and the equivalence checks
    except ImportError:
        raise BlockMAEError("this needs Hugging Face transformers: `pip install transformers`") from None
    if not transformers.is_torch_available():
        raise BlockMAEError(f"transformers {transformers.__version__} cannot use torch {torch.__version__} (it "
                            "needs a newer one); upgrade torch, or on torch 2.4 install 'transformers<5.14'")
    return transformers


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers' warnings, load reports and progress bars off for the block (errors still raise)."""
    from transformers.utils import logging as hf_logging  # optional: only where transformers runs

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def hf_to_timm_names(hf_state: Mapping[str, Tensor], vit_model: bool) -> dict[str, Tensor]:
    """HF ViT / ViTMAE names -> timm ViT names, through the ViTMAE mapping above (ViTModel keys lack the
    ``vit.`` prefix ViTMAE has, so it is added first)."""
    state = {(f"vit.{k}" if vit_model else k): v for k, v in hf_state.items()}
    return from_hf_vitmae_state_dict(state)


# (pattern, replacement) on HF key names; both transformers >= 5 names (q_proj, o_proj, mlp.fc1) and
# the older ones used by the checkpoints on the Hub (attention.attention.query, intermediate.dense).
_HF_RENAMES: list[tuple[str, str]] = [
    (r"^vit\.embeddings\.cls_token$", "cls_token"),
    (r"^vit\.embeddings\.position_embeddings$", "pos_embed"),
    (r"^vit\.embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^vit\.(?:layers|encoder\.layer)\.(\d+)\.", r"blocks.\1."),
    (r"^decoder\.decoder_layers\.(\d+)\.", r"decoder_blocks.\1."),
    (r"^vit\.layernorm\.", "norm."),
    (r"^decoder\.", ""),
    (r"\.layernorm_before\.", ".norm1."),
    (r"\.layernorm_after\.", ".norm2."),
    (r"\.attention\.(?:q_proj|attention\.query)\.", ".attn.q."),
    (r"\.attention\.(?:k_proj|attention\.key)\.", ".attn.k."),
    (r"\.attention\.(?:v_proj|attention\.value)\.", ".attn.v."),
    (r"\.attention\.(?:o_proj|output\.dense)\.", ".attn.proj."),
    (r"\.intermediate\.dense\.", ".mlp.fc1."),
    (r"\.output\.dense\.", ".mlp.fc2."),
]


def from_hf_vitmae_state_dict(hf_state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a ``ViTMAEForPreTraining`` state dict onto :class:`MaskedAutoencoderViT` names (sincos model).

    Separate query/key/value projections are concatenated into timm's fused ``qkv``.
    """
    renamed: dict[str, torch.Tensor] = {}
    for key, tensor in hf_state.items():
        for pattern, replacement in _HF_RENAMES:
            key = re.sub(pattern, replacement, key)
        renamed[key] = tensor
    fused: dict[str, torch.Tensor] = {}
    for key, tensor in renamed.items():
        match = re.fullmatch(r"(.*\.attn)\.([qkv])\.(weight|bias)", key)
        if match is None:
            fused[key] = tensor
        elif match.group(2) == "q":
            prefix, kind = match.group(1), match.group(3)
            parts = [renamed[f"{prefix}.{part}.{kind}"] for part in "qkv"]
            fused[f"{prefix}.qkv.{kind}"] = torch.cat(parts, dim=0)
    return fused


def build_hf_vitmae(arch: Mapping[str, Any]) -> torch.nn.Module:
    """transformers' ``ViTMAEForPreTraining`` with the same architecture as ``arch`` (an ``model.arch``).

    Used by the equivalence test and the benchmark; transformers is an optional dependency.
    """
    require_transformers()
    from transformers import ViTMAEConfig, ViTMAEForPreTraining  # optional: HF export and checks only
    if arch["pos_embed"] != "sincos":
        raise BlockMAEError(f"ViTMAE only has sin-cos positions; cannot mirror pos_embed={arch['pos_embed']!r}")
    config = ViTMAEConfig(
        image_size=arch["img_size"], patch_size=arch["patch_size"], num_channels=arch["in_chans"],
        hidden_size=arch["embed_dim"], num_hidden_layers=arch["depth"], num_attention_heads=arch["num_heads"],
        intermediate_size=int(arch["embed_dim"] * arch["mlp_ratio"]),
        decoder_hidden_size=arch["decoder_embed_dim"], decoder_num_hidden_layers=arch["decoder_depth"],
        decoder_num_attention_heads=arch["decoder_num_heads"],
        decoder_intermediate_size=int(arch["decoder_embed_dim"] * arch["mlp_ratio"]),
        mask_ratio=arch["mask_ratio"], norm_pix_loss=arch["norm_pix_loss"],
        layer_norm_eps=1e-6,  # MAE's value; ViTMAEConfig defaults to 1e-12
        qkv_bias=True, hidden_act="gelu",
    )
    return ViTMAEForPreTraining(config)


def load_hf(path: Path, config: dict[str, Any]) -> ForeignViT:
    """A transformers ViT / ViTMAE directory (``config``: its config.json) as timm's ViT, without transformers."""
    model_type = config.get("model_type")
    if model_type not in ("vit", "vit_mae"):
        raise BlockMAEError(f"{path}: model_type {model_type!r} is not a ViT or ViTMAE (transformers) model")

    files = sorted(path.glob("*.safetensors"))
    if files:
        hf_state: dict[str, Tensor] = {}
        for file in files:
            hf_state.update(load_file(str(file)))
    else:
        hf_state = read_weights(path / "pytorch_model.bin")
    # ViTForImageClassification / ViTMAEForPreTraining keep the encoder under vit.; ViTModel / ViTMAEModel do not
    prefixed = any(k.startswith("vit.") for k in hf_state)
    state = hf_to_timm_names({k: v for k, v in hf_state.items() if not k.startswith(("pooler.", "classifier."))},
                             vit_model=not prefixed)
    patch, size = int(config.get("patch_size", 16)), int(config.get("image_size", 224))
    vit = timm_vit(int(config["hidden_size"]), int(config["num_hidden_layers"]), int(config["num_attention_heads"]),
                   patch, size, config.get("intermediate_size", 4 * config["hidden_size"]) / config["hidden_size"],
                   float(config.get("layer_norm_eps", 1e-12)))
    if config.get("hidden_act", "gelu") != "gelu" or not config.get("qkv_bias", True):
        raise BlockMAEError(f"{path}: only gelu ViTs with qkv biases map onto timm's ViT")
    load_compatible_state(vit, state, str(path), ignore=("decoder", "mask_token", "vit.pooler."))
    _, mean, std = hf_preprocessing(path)
    return ForeignViT(vit, mean, std, f"hf:{path}", "hf")


def hf_preprocessing(path: Path) -> tuple[int | None, tuple[float, ...], tuple[float, ...]]:
    """(input size, image_mean, image_std) of a directory's preprocessor_config.json. The size is the side the
    image processor feeds the model (crop_size, else size: height / shortest_edge / int; None when absent);
    without the file or its statistics, ImageNet's (MAE's and the Hub ViTMAE's)."""
    file = path / "preprocessor_config.json"
    pre = json.loads(file.read_text()) if file.is_file() else {}
    size = None
    for key in ("crop_size", "size"):
        value = pre.get(key)
        if isinstance(value, dict):
            value = next((value[f] for f in ("height", "shortest_edge") if isinstance(value.get(f), int)), None)
        if isinstance(value, int):
            size = value
            break
    return size, tuple(pre.get("image_mean", IMAGENET_MEAN)), tuple(pre.get("image_std", IMAGENET_STD))


def load_hf_image_classifier(path: Path) -> nn.Module:
    """transformers' ``AutoModelForImageClassification`` from a local directory; one-line errors."""
    transformers = require_transformers()
    try:
        with quiet_transformers():
            return transformers.AutoModelForImageClassification.from_pretrained(str(path), local_files_only=True)
    except Exception as err:  # noqa: BLE001  (a damaged or foreign directory)
        raise BlockMAEError(f"cannot load {path} as an image classifier: {str(err).splitlines()[0][:200]}") from None
