"""Preprocessing: differentiable simulators (training) and real transforms (evaluation).

Simulators take B×3×H×W in [0, 1]; `jpeg_mask` alone works in the generator domain [-1, 1]
(`jpeg_mask01` is its [0, 1] wrapper). `real` holds the 8-bit evaluation transforms.
"""
from . import real
from .dct import block_dct, block_idct, dct_matrix
from .differentiable_jpeg import DiffJPEG, diff_jpeg, quantization_tables
from .jpeg_masking import JpegMask, jpeg_mask, jpeg_mask01
from .real import REAL_TRANSFORMS, parse_transform
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

real_jpeg = real.jpeg

__all__ = [
    "real", "real_jpeg", "REAL_TRANSFORMS", "parse_transform",
    "jpeg_mask", "jpeg_mask01", "JpegMask", "block_dct", "block_idct", "dct_matrix",
    "diff_jpeg", "DiffJPEG", "quantization_tables",
    "gaussian_blur", "gaussian_noise", "quantize", "resize_bilinear", "resize_down_up", "bicubic_upscale_unsharp",
    "GaussianBlur", "GaussianNoise", "Quantize", "ResizeDownUp", "BicubicUpscaleUnsharp",
    "PreprocessSampler", "official_prelayer", "official_prelayer_config", "DEFAULT_CONFIG", "SIMULATOR_NAMES",
]
