"""JPEG Compress and Preprocess: the real 8-bit transforms a photo meets after protection (evaluation side)."""
from __future__ import annotations

from ..gapdiff_core.preprocess import real
from . import host

CATEGORY = "GAP-Diff"
PREPROCESS = ("gaussian_blur", "gaussian_noise", "quantize", "resize")


class JPEGCompress:
    DESCRIPTION = "Real JPEG compression (libjpeg through Pillow, 4:2:0) at a quality, decoded back to an IMAGE."
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    FUNCTION = "compress"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "image": ("IMAGE", {}),
            "quality": ("INT", {"default": 70, "min": 1, "max": 100, "step": 1,
                                "tooltip": "JPEG quality (social platforms use about 70-85)."}),
        }}

    def compress(self, image, quality):
        progress = host.Progress(1)
        out = real.jpeg(host.image_to_core(image), quality=int(quality))
        progress.step()
        return (host.core_to_image(out),)


class Preprocess:
    DESCRIPTION = ("One real 8-bit transform as in the evaluation protocol: Gaussian blur (OpenCV-exact), "
                   "Gaussian noise, quantization to fewer levels, or bilinear resize. Only the settings of the "
                   "chosen transform are used.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
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
        x = host.image_to_core(image)
        progress = host.Progress(1)
        if transform == "gaussian_blur":
            if blur_kernel % 2 == 0:
                raise ValueError(f"blur_kernel must be odd, got {blur_kernel}")
            out = real.gaussian_blur(x, (blur_kernel, blur_kernel), sigma_x=blur_sigma_x, sigma_y=blur_sigma_y)
        elif transform == "gaussian_noise":
            out = real.gaussian_noise(x, std=noise_std, seed=seed)
        elif transform == "quantize":
            out = real.quantize(x, levels=quantize_levels)
        elif transform == "resize":
            out = real.resize(x, int(resize_short_side), method=resize_method)
        else:
            raise ValueError(f"unknown transform {transform!r}; choose one of {', '.join(PREPROCESS)}")
        progress.step()
        return (host.core_to_image(out),)
