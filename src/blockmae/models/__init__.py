"""The MAE model: ViT encoder + light decoder with block masking, presets and safetensors I/O."""

from blockmae.models.hf import from_hf_vitmae_state_dict
from blockmae.models.io import load_mae, save_mae
from blockmae.models.mae import MAEOutput, MaskedAutoencoderViT
from blockmae.models.presets import PRESETS, build_mae

__all__ = ["MaskedAutoencoderViT", "MAEOutput", "PRESETS", "build_mae", "save_mae", "load_mae",
           "from_hf_vitmae_state_dict"]
