"""Fast CPU inference for the generator: oneDNN weights packed once, activations fused into convolutions.

`F.conv2d` / `F.conv_transpose2d` reorder every weight into oneDNN's blocked layout on *every* call; with 73 M
parameters, most of them in layers with tiny feature maps, that reorder was about a third of a 512x512 forward.
`OneDNNGenerator` packs the weights once, with the same private oneDNN ops PyTorch's own compiler uses when it
freezes a model, and fuses LeakyReLU, ReLU, the residual add and tanh into the convolutions. The last transposed
convolution (to 3 channels) runs as a 3x3 convolution to 12 channels plus pixel shuffle: the same function, and
faster at that width. In a bf16 model with the compiled kernels (`native_kernels`), the layers on the smallest maps,
whose activations stay in fp32, run as fp32 matrix products with bf16 weights (`BF16_WEIGHT_PRODUCTS`).
"""
from __future__ import annotations

import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import native_kernels
from .generator import InferenceGenerator

_MK = torch.ops.mkldnn
_TWO, _ONE, _ZERO = [2, 2], [1, 1], [0, 0]
_ACT_ARGS = {"none": [], "relu": [], "leaky_relu": [0.2], "tanh": []}

# Transposed conv (kernel 4, stride 2, padding 1) as a 3x3 conv + pixel shuffle: output phase `a` at input offset
# `d` (3x3 tap d + 1) takes transposed-kernel tap a + 1 - 2d. Keys: (phase, 3x3 tap) -> transposed-kernel tap.
_PHASE_TAPS = {(0, 0): 3, (0, 1): 1, (1, 1): 2, (1, 2): 0}


def pack_for_cpu(model: InferenceGenerator) -> nn.Module:
    """`model` with its weights packed for oneDNN (fp32 / bf16 on a CPU), or `model` itself where oneDNN or
    its packing ops are unavailable or turned off (`torch.backends.mkldnn.flags(enabled=False)`), or for fp16.

    The packed model runs one 512 x 512 pass at once: if its ops fail then (an op this CPU or torch build lacks),
    `model` is returned, with one warning (slower, same function). So the caller can drop `model`, and its
    weights are freed before any photo is protected."""
    dtype = model.weights[0].dtype
    if model.weights[0].device.type != "cpu" or dtype not in (torch.float32, torch.bfloat16) \
            or not (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled):
        return model
    try:
        packed = OneDNNGenerator(model)
    except (RuntimeError, AttributeError, NotImplementedError):
        return model
    try:
        with torch.inference_mode():
            packed(torch.zeros(1, 3, 512, 512, dtype=dtype).contiguous(memory_format=torch.channels_last))
    except (RuntimeError, NotImplementedError) as exc:
        warnings.warn(f"gapdiff: the packed oneDNN generator failed on its first pass ({type(exc).__name__}: "
                      f"{exc}); using the plain CPU path (slower, same function)", RuntimeWarning, stacklevel=2)
        return model
    return packed


class OneDNNGenerator(InferenceGenerator):
    """The function of a CPU `InferenceGenerator`, with packed weights (inference only; inputs in the weights'
    dtype, fastest channels-last, as `Protector` passes them). Build it with `pack_for_cpu`, which checks it."""

    def __init__(self, model: InferenceGenerator):
        nn.Module.__init__(self)
        self.ngf, self.norm, self.eps = model.ngf, model.norm, model.eps
        self.gammas, self.betas, self.biases = model.gammas, model.betas, model.biases
        self.kernels = native_kernels.kernels()
        self.matrices = _small_map_matrices(model) if self.kernels is not None else {}
        # Packing picks the blocked layout for a 512x512 input; other sizes use the same layout.
        size, channels = 512, 3
        self.packed = []
        for k, w in enumerate(model.weights[:23]):
            if k in self.matrices:
                packed = None
            elif k < 8:
                packed = _pack_conv(w, _ONE, _TWO, [1, channels, size, size])
            elif k < 16:
                packed = _pack_conv(w, _ZERO, _ONE, [1, channels, size + 2, size + 2])
            else:
                packed = _MK._reorder_convolution_transpose_weight(w, _ONE, _ZERO, _TWO, _ONE, 1,
                                                                   [1, w.shape[0], size, size])
            self.packed.append(packed)
            if k < 8:
                channels, size = w.shape[0], size // 2
            elif k >= 16:
                size *= 2
        w, b = _transposed_as_subpixel(model.weights[23], model.biases[23])
        self.packed.append(_pack_conv(w, _ONE, _ONE, [1, w.shape[1], size, size]))
        self.last_bias = b

    def conv(self, k: int, x: torch.Tensor, act: str) -> torch.Tensor:
        if k in self.matrices:
            return self._linear(k, x, 4, 2, False, act)
        return _MK._convolution_pointwise(x.to(self.biases[k].dtype), self.packed[k], self.biases[k], _ONE, _TWO,
                                          _ONE, 1, act, _ACT_ARGS[act], "")

    def res_conv(self, k: int, x: torch.Tensor, act: str, other: torch.Tensor | None = None) -> torch.Tensor:
        if k in self.matrices:
            return self._linear(k, x, 3, 1, True, act)
        if act == "add":
            return _MK._convolution_pointwise.binary(_reflect(x), other, self.packed[k], self.biases[k], _ZERO,
                                                     _ONE, _ONE, 1, "add", 1.0, None, [], "")
        return _MK._convolution_pointwise(_reflect(x), self.packed[k], self.biases[k], _ZERO, _ONE, _ONE, 1, act,
                                          _ACT_ARGS[act], "")

    def dconv(self, k: int, x: torch.Tensor) -> torch.Tensor:
        if k in self.matrices:  # each input pixel's contributions (a matrix product), summed where they overlap
            n, _, h, w = x.shape
            pixels = x.float().permute(0, 2, 3, 1).reshape(n * h * w, -1)
            columns = native_kernels.linear_bf16_weights(self.kernels, pixels, self.matrices[k])
            columns = columns.view(n, h * w, -1).transpose(1, 2)
            y = F.fold(columns, (2 * h, 2 * w), 4, padding=1, stride=2)
            return y.add_(self.biases[k].view(1, -1, 1, 1)).contiguous(memory_format=torch.channels_last)
        return _MK._convolution_transpose_pointwise(x.to(self.biases[k].dtype), self.packed[k], self.biases[k], _ONE,
                                                    _ZERO, _TWO, _ONE, 1, "none", [], "")

    def last(self, x: torch.Tensor) -> torch.Tensor:
        y = _MK._convolution_pointwise(x, self.packed[23], self.last_bias, _ONE, _ONE, _ONE, 1, "tanh", [], "")
        return F.pixel_shuffle(y, 2)

    def _linear(self, k: int, x: torch.Tensor, kernel: int, stride: int, reflect: bool, act: str) -> torch.Tensor:
        """Convolution k (padding 1) of a small map as a matrix product of its columns, in fp32, channels-last."""
        assert act == "none", act  # these layers are followed by a per-image normalisation
        n, h, w = x.shape[0], (x.shape[2] + 2 - kernel) // stride + 1, (x.shape[3] + 2 - kernel) // stride + 1
        columns = native_kernels.im2col(self.kernels, x, kernel, stride, reflect)
        y = native_kernels.linear_bf16_weights(self.kernels, columns, self.matrices[k], self.biases[k])
        return y.view(n, h, w, -1).permute(0, 3, 1, 2)


#: The fp32-activation layers (`FP32_CONVS`) a bf16 model computes as matrix products with bf16 weights: conv8, the
#: bottleneck and dconv1, whose maps have 4 pixels an image at 512 px, so that reading the weights is their cost
#: (measured, AMX: 0.12 ms for a bottleneck convolution, oneDNN fp32 0.29, bf16 0.13). conv7 has 16 pixels an
#: image: there oneDNN's fp32 kernel is faster than this one (0.65 vs 0.74 ms).
BF16_WEIGHT_PRODUCTS = range(7, 17)


def _small_map_matrices(model: InferenceGenerator) -> dict[int, torch.Tensor]:
    """The weights of a bf16 model's `BF16_WEIGHT_PRODUCTS` as bf16 matrices for `native_kernels.linear_bf16_weights`
    (out x (tap row, tap column, in); for the transposed convolution, (out, tap row, tap column) x in): the values
    they hold (rounded to bf16 already) in half the bytes."""
    if model.norm != "image" or model.weights[0].dtype != torch.bfloat16:
        return {}
    matrices = {}
    for k in BF16_WEIGHT_PRODUCTS:
        w = model.weights[k]
        matrix = w.permute(1, 2, 3, 0).flatten(0, 2) if k == 16 else w.permute(0, 2, 3, 1).flatten(1)
        if matrix.shape[0] % 4 == 0 and matrix.shape[1] % 16 == 0:
            matrices[k] = matrix.bfloat16().contiguous()
    return matrices


def _pack_conv(w: torch.Tensor, padding, stride, input_size) -> torch.Tensor:
    return torch._C._nn.mkldnn_reorder_conv2d_weight(w.to_mkldnn(), padding, stride, _ONE, 1, input_size)


def _reflect(x: torch.Tensor) -> torch.Tensor:
    return F.pad(x, (1, 1, 1, 1), mode="reflect")


def _transposed_as_subpixel(w: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights of a 3x3 convolution to 4 x C_out channels whose pixel shuffle equals the transposed convolution
    (kernel 4, stride 2, padding 1) with weight `w` (C_in x C_out x 4 x 4) and bias `b`."""
    c_in, c_out = w.shape[:2]
    k = torch.zeros(c_out, 2, 2, c_in, 3, 3)
    for (a, i), ka in _PHASE_TAPS.items():
        for (c, j), kc in _PHASE_TAPS.items():
            k[:, a, c, :, i, j] = w[:, :, ka, kc].float().t()
    return k.reshape(4 * c_out, c_in, 3, 3).to(w.dtype).contiguous(), b.repeat_interleave(4)
