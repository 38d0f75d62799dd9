"""The MAE model (ViT encoder + light decoder with block masking), presets, safetensors I/O, and the one
factory of every encoder blockmae takes (`load_encoder`, models/factory.py)."""

from blockmae.models.factory import Encoder, load_encoder
from blockmae.models.hf import from_hf_vitmae_state_dict
from blockmae.models.io import save_mae
from blockmae.models.mae import MAEOutput, MaskedAutoencoderViT
from blockmae.models.presets import PRESETS, build_mae

__all__ = ["MaskedAutoencoderViT", "MAEOutput", "PRESETS", "build_mae", "save_mae", "Encoder", "load_encoder",
           "from_hf_vitmae_state_dict"]
