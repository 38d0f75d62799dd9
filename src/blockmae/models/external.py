"""Foreign ViTs behind the interface the evaluations use (``forward_features(imgs, pool, layer)``,
``attention_maps``, ``arch``), so a probe, shape bias or diagnostic runs on them as on a blockmae run.

Checkpoint specs (``models.factory.load_encoder`` dispatches here when ``factory.is_foreign`` says so):

* ``timm:<model_name>:<weights file>``: a timm model (``.safetensors``, or ``.pth``/``.bin`` loaded with
  ``weights_only=True``); patch and image size are read from the weights when they differ from the name's;
* ``mae:<file.pth>`` or any ``.pth``/``.pt`` file: an official facebookresearch/mae checkpoint (``model`` key);
  pretrained or fine-tuned (``fc_norm`` + ``head``, global pooling) ones alike;
* ``hf:<dir>`` or any directory with a transformers ``config.json``: a ``ViTMAE*`` or ``ViT*`` model
  (read by models/hf.py, the one home of Hugging Face glue, onto :func:`timm_vit`);
* a timm export directory (``config.json`` with ``architecture``, from ``blockmae export --format timm``).

Every one becomes a timm model: the MAE and HF names are mapped onto timm's ViT names (for HF by the one
mapping of models/hf.py). The wrapper re-normalises the evaluation pipeline's ImageNet-normalised input to
the model's own mean/std and reports the model's own input size, so images are resized to it.
"""

from __future__ import annotations

import json
import math
from functools import partial
from pathlib import Path
from typing import Any, Mapping

import timm
import torch
from safetensors.torch import load_file
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from blockmae.errors import BlockMAEError
from blockmae.models.io import load_compatible_state
from blockmae.models.mae import attention_capture, check_layer, check_pool, pool_tokens
from blockmae.normalisation import IMAGENET_MEAN, IMAGENET_STD

MAE_WIDTH_HEADS = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}  # official MAE/DeiT sizes; else 64-wide heads


class ForeignViT(nn.Module):
    """A timm ViT-like model (anything with ``forward_intermediates`` and ``num_prefix_tokens``) with the
    features, attention and metadata API of :class:`blockmae.models.MaskedAutoencoderViT`."""

    def __init__(self, vit: nn.Module, mean: tuple[float, ...], std: tuple[float, ...], source: str, kind: str) -> None:
        super().__init__()
        self.vit = vit
        size = tuple(vit.patch_embed.img_size)
        patch = tuple(vit.patch_embed.patch_size)
        self.img_size, self.patch_size = size[0], patch[0]
        self.grid_size = tuple(vit.patch_embed.grid_size)
        self.num_prefix_tokens = int(vit.num_prefix_tokens)
        self.arch: dict[str, Any] = {
            "img_size": size[0], "patch_size": patch[0], "embed_dim": int(vit.embed_dim), "depth": len(vit.blocks),
            "num_heads": int(vit.blocks[0].attn.num_heads), "source": kind, "model": source,
            "mean": list(mean), "std": list(std), "num_prefix_tokens": self.num_prefix_tokens,
        }
        # x_model = (x_imagenet * std_in + mean_in - mean) / std: identity when the model is ImageNet-normalised
        scale = torch.tensor(IMAGENET_STD) / torch.tensor(std)
        shift = (torch.tensor(IMAGENET_MEAN) - torch.tensor(mean)) / torch.tensor(std)
        # Persistent, so that the weights hash (the feature caches' key) tells the normalisations apart.
        self.register_buffer("input_scale", scale.view(1, 3, 1, 1))
        self.register_buffer("input_shift", shift.view(1, 3, 1, 1))
        self._identity_norm = bool(torch.all(scale == 1) and torch.all(shift == 0))

    def _input(self, imgs: Tensor) -> Tensor:
        if imgs.dim() != 4 or tuple(imgs.shape[2:]) != (self.img_size, self.img_size):
            raise BlockMAEError(f"images have shape {tuple(imgs.shape)}; {self.arch['model']} expects "
                                f"{self.img_size}x{self.img_size} inputs")
        return imgs if self._identity_norm else imgs * self.input_scale.to(imgs.dtype) + self.input_shift.to(imgs.dtype)

    def tokens(self, imgs: Tensor, layer: int | None = None) -> Tensor:
        """(B, prefix + N, D): the final normed tokens, or those after block ``layer`` with the final norm."""
        x = self._input(imgs)
        if layer is None:
            return self.vit.forward_features(x)
        depth = len(self.vit.blocks)
        check_layer(layer, depth)
        (spatial, prefix), = self.vit.forward_intermediates(
            x, indices=[layer % depth], return_prefix_tokens=True, norm=True, stop_early=True, output_fmt="NLC",
            intermediates_only=True)
        return torch.cat([prefix, spatial], dim=1)

    def forward_features(self, imgs: Tensor, pool: str = "cls", layer: int | None = None) -> Tensor:
        """``cls``: the first prefix token; ``avg``: the mean of the patch tokens; ``both``: concatenated."""
        check_pool(pool)
        if pool != "avg" and self.num_prefix_tokens == 0:
            raise BlockMAEError(f"{self.arch['model']} has no cls token; use encoder.pool=avg")
        return pool_tokens(self.tokens(imgs, layer), pool, self.num_prefix_tokens)

    def forward(self, imgs: Tensor) -> Tensor:
        return self.forward_features(imgs)

    def capturing_attention(self) -> Any:
        """As :meth:`MaskedAutoencoderViT.capturing_attention`: the attention of calls made inside the block."""
        return attention_capture(self.vit.blocks)

    def attention_maps(self, imgs: Tensor) -> list[Tensor]:
        x = self._input(imgs)
        with self.capturing_attention() as maps:
            self.vit.forward_features(x)
        return maps


# ------------------------------------------------------------------------------------------- specs
def hf_config(path: Path) -> dict[str, Any] | None:
    file = path / "config.json"
    if not (path.is_dir() and file.is_file()):
        return None
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise BlockMAEError(f"{file} is not valid JSON ({err})") from None


def parse_timm_spec(spec: str) -> tuple[str, Path | None]:
    """``timm:<model_name>[:<weights file>]`` -> (model name, weights file or None)."""
    name, sep, file = spec[len("timm:"):].partition(":")
    if not name or (sep and not file):
        raise BlockMAEError(f"'{spec}': write timm:<model_name>:<weights file>")
    return name, Path(file) if file else None


def read_weights(file: Path) -> dict[str, Tensor]:
    if not file.is_file():
        raise BlockMAEError(f"weights file {file} does not exist")
    try:
        if file.suffix == ".safetensors":
            return load_file(str(file))
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001  (pickled code, truncated files... all the user's input)
        raise BlockMAEError(f"cannot read {file} as weights ({str(err).splitlines()[0][:200]})") from None
    for key in ("model", "state_dict", "model_ema"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            return state[key]
    if not isinstance(state, dict):
        raise BlockMAEError(f"{file} holds no state dict")
    return state


def weights_geometry(state: Mapping[str, Tensor], num_prefix: int) -> dict[str, int]:
    """Depth, patch and image size from the blocks, the patch projection and the position table (square grids)."""
    out: dict[str, int] = {}
    blocks = [int(k.split(".")[1]) for k in state if k.startswith("blocks.") and k.split(".")[1].isdigit()]
    if blocks:
        out["depth"] = 1 + max(blocks)
    proj = state.get("patch_embed.proj.weight")
    if proj is not None and proj.dim() == 4:
        out["patch_size"] = int(proj.shape[-1])
        pos = state.get("pos_embed")
        if pos is not None and pos.dim() == 3:
            for prefix in (num_prefix, 0):
                grid = math.isqrt(pos.shape[1] - prefix)
                if grid * grid == pos.shape[1] - prefix:
                    out["img_size"] = grid * out["patch_size"]
                    break
    return out


def fit_to_weights(vit: nn.Module, name: str, state: Mapping[str, Tensor], **create_args: Any) -> nn.Module:
    """The timm ViT `vit` (made by ``timm.create_model(name, **create_args)``), made again with the patch size,
    image size and depth of `state` where they differ from the name's (a ViT trained at another size)."""
    geometry = weights_geometry(state, getattr(vit, "num_prefix_tokens", 1))
    current = {"patch_size": vit.patch_embed.patch_size[0], "img_size": vit.patch_embed.img_size[0],
               "depth": len(vit.blocks)}
    changed = {k: v for k, v in geometry.items() if current.get(k) != v}
    return timm.create_model(name, pretrained=False, **create_args, **changed) if changed else vit


def load_timm(name: str, file: Path) -> ForeignViT:
    recorded = hf_config(file.parent) if file.is_file() else None
    if recorded and recorded.get("architecture") == name and file.name == "model.safetensors":
        return load_timm_dir(file.parent, recorded)  # a timm export: its config.json records the sizes
    state = read_weights(file)
    try:
        probe = timm.create_model(name, pretrained=False, num_classes=0)
    except RuntimeError as err:  # timm: "Unknown model (...)"
        raise BlockMAEError(f"timm:{name}: {err}") from None
    if not (hasattr(probe, "patch_embed") and hasattr(probe, "blocks")):
        raise BlockMAEError(f"timm:{name} is not a Vision Transformer (no patch embedding and blocks); only "
                            f"ViT-family timm models can be probed")
    model = fit_to_weights(probe, name, state, num_classes=0)
    load_compatible_state(model, state, str(file), ignore=("head.",))
    cfg = model.pretrained_cfg
    return ForeignViT(model, tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD)),
                      f"timm:{name}:{file}", "timm")


def load_timm_dir(path: Path, config: dict[str, Any]) -> ForeignViT:
    """A timm export (``save_for_hf`` layout, e.g. from ``blockmae export --format timm``)."""
    file = path / "model.safetensors"
    model_args = {**config.get("model_args", {}), "num_classes": 0}
    model = timm.create_model(config["architecture"], pretrained=False, **model_args)
    load_compatible_state(model, read_weights(file), str(file), ignore=("head.",))
    cfg = config.get("pretrained_cfg", {})
    return ForeignViT(model, tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD)),
                      str(path), "timm")


def timm_vit(embed_dim: int, depth: int, num_heads: int, patch_size: int, img_size: int, mlp_ratio: float,
             eps: float, global_pool: str = "token") -> nn.Module:
    """timm's VisionTransformer in the shape of an MAE / HF ViT (qkv biases, LayerNorm with `eps`, no head)."""
    return VisionTransformer(img_size=img_size, patch_size=patch_size, embed_dim=embed_dim, depth=depth,
                             num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=True, num_classes=0,
                             global_pool=global_pool, fc_norm=global_pool == "avg",
                             norm_layer=partial(nn.LayerNorm, eps=eps))


def load_official_mae(file: Path) -> ForeignViT:
    """facebookresearch/mae ``.pth``: timm ViT names already (+ decoder / mask token, or fc_norm + head)."""
    state = read_weights(file)
    if "cls_token" not in state or "blocks.0.attn.qkv.weight" not in state:
        raise BlockMAEError(f"{file} is not an MAE ViT checkpoint (no cls_token / blocks.0.attn.qkv in its 'model')")
    embed_dim = int(state["cls_token"].shape[-1])
    mlp_ratio = state["blocks.0.mlp.fc1.weight"].shape[0] / embed_dim
    geometry = weights_geometry(state, 1)
    depth = geometry["depth"]
    pooled = "fc_norm.weight" in state and "norm.weight" not in state  # fine-tuned with global pooling
    vit = timm_vit(embed_dim, depth, MAE_WIDTH_HEADS.get(embed_dim, max(1, embed_dim // 64)), geometry["patch_size"],
                   geometry["img_size"], mlp_ratio, 1e-6, "avg" if pooled else "token")
    load_compatible_state(vit, state, str(file), ignore=("decoder", "mask_token", "head."))
    return ForeignViT(vit, IMAGENET_MEAN, IMAGENET_STD, f"mae:{file}", "mae")
