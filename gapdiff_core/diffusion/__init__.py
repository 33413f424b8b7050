"""Surrogate diffusion models: the tiny built-in SD-architecture model, diffusers folders, single-file SD 1.x/2.x."""
from .convert import detect_sd_version, looks_v_prediction
from .loading import BUNDLED_CONFIGS, CheckpointError, bundled_config, load_surrogate, read_state_dict
from .surrogate import Surrogate
from .tokenizer import clip_tokenizer

__all__ = ["Surrogate", "load_surrogate", "read_state_dict", "bundled_config", "BUNDLED_CONFIGS", "CheckpointError",
           "detect_sd_version", "looks_v_prediction", "clip_tokenizer"]
