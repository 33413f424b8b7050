"""Transform (robustness), JPEG Compress and Preprocess: what happens to a photo between protection and the attacker,
all through the one transform registry (``gapdiff_core.preprocess``: spec strings such as ``jpeg:75``,
``platform:instagram``, ``resize:1080,side=long|jpeg:75``, ``diffpure:0.1``)."""
from __future__ import annotations

import torch

from ..gapdiff_core.common.seeds import derive_seed
from ..gapdiff_core.evaluation.robustness_matrix import PHOTO_STREAM
from ..gapdiff_core.preprocess import TransformSpecError, help_text, parse
from . import host
from .surrogate import SURROGATE

CATEGORY = "GAP-Diff"
PREPROCESS = ("gaussian_blur", "gaussian_noise", "quantize", "resize")


def _transformed(image, spec: str, seed: int) -> torch.Tensor:
    """The whole IMAGE batch through ``spec`` with one seed (random steps draw the batch's noise at once)."""
    progress = host.Progress(1)
    out = parse(spec)(host.image_to_core(image), seed=int(seed))
    progress.step()
    return host.core_to_image(out)


class _ImageNode:
    """What the three nodes share: one IMAGE in the GAP-Diff category out."""
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)


class Transform(_ImageNode):
    DESCRIPTION = ("Applies a transform from gapdiff's registry, written as a spec: what a platform or an attacker "
                   "does to a photo before fine-tuning on it. Codecs (jpeg:75, webp:80, avif:60), geometry "
                   "(resize:1080,side=long, crop:0.9, rescale:0.5), platform presets (platform:instagram, facebook, "
                   "x, whatsapp: approximations), filters (blur, gauss:1, median:3, bilateral, tv, nlmeans) and "
                   "purifications through a diffusion model (diffpure:0.1, gridpure, impress, noisy-upscale: these "
                   "need the surrogate input). Chain steps with '|'. Photo by photo; photo i of the batch uses the "
                   "seed the robustness matrix gives photo i, so results are reproducible.")
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "image": ("IMAGE", {}),
            "spec": ("STRING", {"default": "jpeg:75", "multiline": False,
                                "tooltip": "A transform spec; steps chained with '|'. Known transforms:\n"
                                           + help_text()}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFF, "control_after_generate": True,
                             "tooltip": "Seed of the random steps (noise, random crops, purifications)."}),
        }, "optional": {
            "surrogate": (SURROGATE, {"tooltip": "The diffusion model the purifications (diffpure, gridpure, "
                                                 "impress, noisy-upscale) run through; other transforms ignore it."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, spec=None):
        # ComfyUI leaves out an input fed by a link: that spec is checked when the node runs
        if spec is None:
            return True
        try:
            parse(spec)
        except TransformSpecError as exc:
            return str(exc)
        return True

    def apply(self, image, spec, seed, surrogate=None):
        transform = parse(spec)
        if transform.needs_surrogate and surrogate is None:
            raise ValueError(f"image transform {transform.spec!r} runs through a diffusion model: connect a Load "
                             f"Surrogate node to the surrogate input")
        if surrogate is not None:
            surrogate = surrogate.to(host.device())
        progress = host.Progress(image.shape[0])
        out = []
        with host.training_mode():  # impress optimises the photo: normal tensors with gradients, not inference ones
            x = host.image_to_core(image).clone()
            for i in range(x.shape[0]):
                out.append(transform(x[i:i + 1], seed=derive_seed(PHOTO_STREAM, int(seed), i), surrogate=surrogate))
                progress.step()
        return (host.core_to_image(torch.cat(out)),)  # a batch has one size, and so has its output


class JPEGCompress(_ImageNode):
    DESCRIPTION = "Real JPEG compression (libjpeg through Pillow, 4:2:0) at a quality, decoded back to an IMAGE."
    FUNCTION = "compress"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "image": ("IMAGE", {}),
            "quality": ("INT", {"default": 70, "min": 1, "max": 100, "step": 1,
                                "tooltip": "JPEG quality (social platforms use about 70-85)."}),
        }}

    def compress(self, image, quality):
        return (_transformed(image, f"jpeg:{int(quality)}", 0),)


class Preprocess(_ImageNode):
    DESCRIPTION = ("One real 8-bit transform as in the evaluation protocol: Gaussian blur (OpenCV-exact), "
                   "Gaussian noise, quantization to fewer levels, or bilinear resize. Only the settings of the "
                   "chosen transform are used. The Transform (robustness) node takes any registry spec.")
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "image": ("IMAGE", {}),
            "transform": (list(PREPROCESS), {"default": "gaussian_blur"}),
            "blur_kernel": ("INT", {"default": 3, "min": 1, "max": 31, "step": 2,
                                    "tooltip": "gaussian_blur: odd kernel size (width = height)."}),
            "blur_sigma_x": ("FLOAT", {"default": 0.1, "min": 0.0, "max": 20.0, "step": 0.05}),
            "blur_sigma_y": ("FLOAT", {"default": 2.0, "min": 0.0, "max": 20.0, "step": 0.05}),
            "noise_std": ("FLOAT", {"default": 0.05, "min": 0.0, "max": 1.0, "step": 0.005,
                                    "tooltip": "gaussian_noise: standard deviation on the [0, 1] scale."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFF, "control_after_generate": True,
                             "tooltip": "gaussian_noise: seed of the noise."}),
            "quantize_levels": ("INT", {"default": 64, "min": 2, "max": 256, "step": 1}),
            "resize_short_side": ("INT", {"default": 256, "min": 8, "max": 8192, "step": 8,
                                          "tooltip": "resize: the short side becomes this many pixels."}),
            "resize_method": (["pillow", "opencv"], {"default": "pillow"}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, blur_kernel):
        # naming blur_kernel here turns off ComfyUI's own range check for it, so check the range too
        if not (1 <= blur_kernel <= 31 and blur_kernel % 2 == 1):
            return f"blur_kernel must be an odd number from 1 to 31, got {blur_kernel}"
        return True

    def apply(self, image, transform, blur_kernel, blur_sigma_x, blur_sigma_y, noise_std, seed, quantize_levels,
              resize_short_side, resize_method):
        specs = {
            "gaussian_blur": f"blur:{int(blur_kernel)},sigma_x={float(blur_sigma_x)!r},"
                             f"sigma_y={float(blur_sigma_y)!r}",
            "gaussian_noise": f"noise:{float(noise_std)!r}",
            "quantize": f"quantize:{int(quantize_levels)}",
            "resize": f"resize:{int(resize_short_side)},"
                      f"filter={'bilinear' if resize_method == 'pillow' else resize_method}",
        }
        if transform not in specs:
            raise ValueError(f"unknown transform {transform!r}; choose one of {', '.join(PREPROCESS)}")
        return (_transformed(image, specs[transform], seed),)
