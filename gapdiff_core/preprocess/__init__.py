"""Preprocessing: differentiable simulators (training) and the one transform registry (evaluation, robustness).

Simulators take B×3×H×W in [0, 1]; `jpeg_mask` alone works in the generator domain [-1, 1] (`jpeg_mask01` is its
[0, 1] wrapper). `transforms` is the registry of spec strings (`jpeg:75`, `resize:1080,side=long|jpeg:75`,
`platform:instagram`, `diffpure:0.1`): `parse`, `apply`, `available`, `help_text`. Its transforms live in `filters`,
`codecs`, `geometry`, `platforms`, `purification` and `upscaling`; `real` keeps their former names.
"""
from . import real, transforms
from .dct import block_dct, block_idct, dct_matrix
from .differentiable_jpeg import DiffJPEG, diff_jpeg, quantization_tables
from .jpeg_masking import JpegMask, jpeg_mask, jpeg_mask01
from .real import parse_transform
from .sampler import DEFAULT_CONFIG, SIMULATOR_NAMES, PreprocessSampler, official_prelayer, official_prelayer_config
from .simulators import (
    BicubicUpscaleUnsharp,
    GaussianBlur,
    GaussianNoise,
    Quantize,
    ResizeDownUp,
    bicubic_upscale_unsharp,
    gaussian_blur,
    gaussian_noise,
    quantize,
    resize_bilinear,
    resize_down_up,
)
from .specs import TransformSpecError
from .transforms import Transform, TransformInfo, apply, available, help_text, parse

real_jpeg = real.jpeg

__all__ = [
    "transforms", "parse", "apply", "available", "help_text", "Transform", "TransformInfo", "TransformSpecError",
    "real", "real_jpeg", "parse_transform",
    "jpeg_mask", "jpeg_mask01", "JpegMask", "block_dct", "block_idct", "dct_matrix",
    "diff_jpeg", "DiffJPEG", "quantization_tables",
    "gaussian_blur", "gaussian_noise", "quantize", "resize_bilinear", "resize_down_up", "bicubic_upscale_unsharp",
    "GaussianBlur", "GaussianNoise", "Quantize", "ResizeDownUp", "BicubicUpscaleUnsharp",
    "PreprocessSampler", "official_prelayer", "official_prelayer_config", "DEFAULT_CONFIG", "SIMULATOR_NAMES",
]
