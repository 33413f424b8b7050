"""Load Surrogate: a Stable Diffusion model the user already has, for the DreamBooth test attack."""
from __future__ import annotations

from ..gapdiff_core.diffusion import load_surrogate
from . import host

CATEGORY = "GAP-Diff"
SURROGATE = "GAPDIFF_SURROGATE"


class LoadSurrogate:
    DESCRIPTION = ("Loads a Stable Diffusion 1.x/2.x model for the test attack: a single-file checkpoint from "
                   "models/checkpoints or a diffusers folder from models/diffusers. Weights stay in gapdiff's "
                   "own (diffusers) form; this does not replace ComfyUI's Load Checkpoint.")
    CATEGORY = CATEGORY
    RETURN_TYPES = (SURROGATE, "STRING")
    RETURN_NAMES = ("surrogate", "info")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model_name": (host.surrogate_names(), {
            "tooltip": "An SD 1.x/2.x .safetensors/.ckpt in models/checkpoints, or a diffusers folder "
                       "(shown as '[diffusers] name') in models/diffusers."})}}

    def load(self, model_name):
        progress = host.Progress(1)
        with host.training_mode():  # normal (not inference) tensors: the test attack fine-tunes a copy
            surrogate = load_surrogate(host.surrogate_path(model_name), device=host.device())
        progress.step()
        info = repr(surrogate)
        if surrogate.is_demo:
            info = "DEMO surrogate (tiny random model: results mean nothing for real photos). " + info
        return (surrogate, info)
