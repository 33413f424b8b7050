"""Iterative Protection: the competing per-photo methods (Anti-DreamBooth ASPL, Mist, MetaCloak, ...) on a surrogate,
for side-by-side comparisons with GAP-Diff in the same graph."""
from __future__ import annotations

import torch

from ..gapdiff_core.protections import CLOSED, METHODS, get_protection
from . import host
from .attack import _progress_callback, _stop_on_cancel
from .surrogate import SURROGATE

CATEGORY = "GAP-Diff"


class IterativeProtect:
    DESCRIPTION = ("Protects photos with one of the iterative methods GAP-Diff is compared with, optimised against "
                   "the given surrogate (minutes per photo on a GPU with the default schedule; 'tiny' is a few "
                   "steps for trying the graph). Budget in grey levels (0-255 scale); 0 uses the method's own "
                   "published default. " + " ".join(CLOSED.values()))
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE", "STRING")
    RETURN_NAMES = ("protected", "info")
    FUNCTION = "protect"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "image": ("IMAGE", {"tooltip": "The photos to protect (optimised together, as the methods do)."}),
            "surrogate": (SURROGATE, {}),
            "method": (sorted(METHODS), {"default": "aspl"}),
            "schedule": (["default", "tiny"], {"default": "default",
                                                "tooltip": "default: the authors' schedule; tiny: a few steps."}),
            "budget": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 32.0, "step": 0.5,
                                 "tooltip": "Largest change of any pixel in grey levels; 0 = the method's default."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 2 ** 31 - 1}),
            "resolution": ("INT", {"default": 0, "min": 0, "max": 2048, "step": 64,
                                   "tooltip": "Working resolution of the optimisation; 0 = the surrogate's (512)."}),
        }}

    def protect(self, image, surrogate, method, schedule, budget, seed, resolution):
        overrides = {"seed": int(seed)}
        if resolution > 0:
            overrides["resolution"] = int(resolution)
        if budget > 0:
            overrides["budget"] = float(budget)
        progress = host.Progress(1)
        with host.training_mode():
            x = host.image_to_core(image).clone()  # a normal tensor, not an inference-mode one
            m = get_protection(method, surrogate.to(host.device()), schedule=schedule,
                               progress=_progress_callback(progress), should_stop=_stop_on_cancel, **overrides)
            protected = m.protect(x)
        info = f"{method} ({schedule} schedule), budget {m.settings['budget']:g} grey levels"
        if getattr(surrogate, "is_demo", False):
            info += " against the tiny DEMO surrogate: protects nothing real"
        return (host.core_to_image(torch.as_tensor(protected)), info)
