"""Load GAP-Diff Generator and Protect Image."""
from __future__ import annotations

import torch

from ..gapdiff_core import load_generator
from ..gapdiff_core.common.budget import BUDGET_MAX, BUDGET_MIN, DEFAULT_BUDGET, check_budget
from ..gapdiff_core.common.visualize import amplified_perturbation
from ..gapdiff_core.model.protector import MODES, NORM_DESCRIPTIONS, NORMS, PRECISION_CHOICES, Protector
from . import host

CATEGORY = "GAP-Diff"
GENERATOR = "GAPDIFF_GENERATOR"


class LoadGenerator:
    DESCRIPTION = ("Loads a trained GAP-Diff generator from models/gapdiff (the authors' official .pth or a "
                   "gapdiff .safetensors). The info output says what it is; demo generators protect nothing real.")
    CATEGORY = CATEGORY
    RETURN_TYPES = (GENERATOR, "STRING")
    RETURN_NAMES = ("generator", "info")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"generator_name": (host.generator_names(), {
            "tooltip": "A file in models/gapdiff (.safetensors or the official G_per16_pretrain.pth)."})}}

    def load(self, generator_name):
        generator = load_generator(host.generator_path(generator_name), device="cpu")
        info = f"{generator.info.describe()}\nprotection computes: {NORM_DESCRIPTIONS['image']}"
        host.log.info("GAP-Diff: loaded %s: %s", generator_name, info)
        return (generator, info)


class ProtectImage:
    DESCRIPTION = ("Adds GAP-Diff's protective perturbation to a batch of photos in one forward pass of the "
                   "generator. No pixel moves by more than `budget` grey levels (0-255 scale). Also outputs the "
                   "perturbation amplified to the full range (grey = no change) so it can be inspected.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE", "IMAGE")
    RETURN_NAMES = ("protected", "perturbation")
    FUNCTION = "protect"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "image": ("IMAGE", {"tooltip": "The photos to protect."}),
            "generator": (GENERATOR, {}),
            "budget": ("INT", {"default": int(DEFAULT_BUDGET), "min": int(BUDGET_MIN), "max": int(BUDGET_MAX),
                               "step": 1,
                               "tooltip": "Largest change of any pixel, in grey levels on the 0-255 scale "
                                          "(8 = the paper's noise_budget 16 on [-1, 1])."}),
            "mode": (list(MODES), {"default": MODES[0],
                                   "tooltip": "working: computed at the resolution a fine-tuner trains at (512 "
                                              "short side) and resized to the photo; native: full resolution, "
                                              "tiled."}),
            "precision": (list(PRECISION_CHOICES), {"default": "auto",
                                                  "tooltip": "Generator precision; auto picks per device."}),
        }, "optional": {
            "norm": (list(NORMS), {"default": "image",
                                   "tooltip": "image: each BatchNorm uses the photo's own statistics, the function "
                                              "the authors ran at inference (batch 1, train-mode BatchNorm), dropout "
                                              "off; running: eval-mode running statistics (not what they ran)."}),
        }}

    def protect(self, image, generator, budget, mode, precision, norm="image"):
        budget = check_budget(budget)
        x = host.image_to_core(image)
        if getattr(generator.info, "demo", False):
            host.log.warning("GAP-Diff: %s is a DEMO generator; its output protects nothing real",
                             getattr(generator.info, "source", "this generator"))
        # the Protector works on its own copy: the loader's cached module is untouched
        protector = Protector(generator, budget=budget, mode=mode, device=str(host.device()), precision=precision,
                              norm=norm)
        progress = host.Progress(x.shape[0])
        protected = []
        for i in range(x.shape[0]):
            host.check_interrupted()
            protected.append(protector(x[i:i + 1]))
            progress.step()
        out = host.core_to_image(torch.cat(protected))
        # both are whole grey levels: compare them as such, free of float noise
        amplified, _ = amplified_perturbation(host.core_to_image(torch.round(x * 255)).numpy(),
                                              (out * 255).round().numpy(), budget)
        return (out, torch.from_numpy(amplified).float() / 255)
