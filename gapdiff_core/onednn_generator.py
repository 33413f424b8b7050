"""Fast CPU inference for the folded generator: oneDNN weights packed once, activations fused into convolutions.

`F.conv2d` / `F.conv_transpose2d` reorder every weight into oneDNN's blocked layout on *every* call; with 73 M
parameters, most of them in layers with tiny feature maps, that reorder was about a third of a 512x512 forward.
`OneDNNGenerator` packs the weights once, with the same private oneDNN ops PyTorch's own compiler uses when it
freezes a model, and fuses LeakyReLU, ReLU, the residual add and tanh into the convolutions. The last transposed
convolution (to 3 channels) runs as a 3x3 convolution to 12 channels plus pixel shuffle: the same function, and
faster at that width.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .generator import FoldedGenerator, check_input_size

_MK = torch.ops.mkldnn
_TWO, _ONE, _ZERO = [2, 2], [1, 1], [0, 0]

# Transposed conv (kernel 4, stride 2, padding 1) as a 3x3 conv + pixel shuffle: output phase `a` at input offset
# `d` (3x3 tap d + 1) takes transposed-kernel tap a + 1 - 2d. Keys: (phase, 3x3 tap) -> transposed-kernel tap.
_PHASE_TAPS = {(0, 0): 3, (0, 1): 1, (1, 1): 2, (1, 2): 0}


def pack_for_cpu(model: FoldedGenerator) -> nn.Module:
    """`model` with its weights packed for oneDNN (fp32 / bf16 on a CPU), or `model` itself where oneDNN or
    its packing ops are unavailable or turned off (`torch.backends.mkldnn.flags(enabled=False)`), or for fp16."""
    dtype = model.enc[0].dtype
    if model.enc[0].device.type != "cpu" or dtype not in (torch.float32, torch.bfloat16) \
            or not (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled):
        return model
    try:
        return OneDNNGenerator(model)
    except (RuntimeError, AttributeError, NotImplementedError):
        return model


class OneDNNGenerator(nn.Module):
    """The function of a CPU `FoldedGenerator`, with packed weights (inference only; inputs in the weights' dtype,
    fastest channels-last, as `Protector` passes them)."""

    def __init__(self, model: FoldedGenerator):
        super().__init__()
        self.ngf = model.ngf
        # Packing picks the blocked layout for a 512x512 input; other sizes use the same layout.
        size, channels = 512, 3
        self.enc = []
        for i in range(8):
            w = model.enc[2 * i]
            self.enc.append((_pack_conv(w, _ONE, _TWO, [1, channels, size, size]), model.enc[2 * i + 1]))
            channels, size = w.shape[0], size // 2
        self.res = [(_pack_conv(model.res[j], _ZERO, _ONE, [1, channels, size + 2, size + 2]), model.res[j + 1])
                    for j in range(0, len(model.res), 2)]
        self.dec = []
        for i in range(7):
            w = model.dec[2 * i]
            packed = _MK._reorder_convolution_transpose_weight(w, _ONE, _ZERO, _TWO, _ONE, 1,
                                                               [1, w.shape[0], size, size])
            self.dec.append((packed, model.dec[2 * i + 1]))
            size *= 2
        w, b = _transposed_as_subpixel(model.dec[14], model.dec[15])
        self.last = (_pack_conv(w, _ONE, _ONE, [1, w.shape[1], size, size]), b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_size(x.shape[-2], x.shape[-1])
        skips = []
        for w, b in self.enc[:7]:
            x = _MK._convolution_pointwise(x, w, b, _ONE, _TWO, _ONE, 1, "leaky_relu", [0.2], "")
            skips.append(x)
        w, b = self.enc[7]
        x = _MK._convolution_pointwise(x, w, b, _ONE, _TWO, _ONE, 1, "none", [], "")
        for (w1, b1), (w2, b2) in zip(self.res[::2], self.res[1::2]):
            r = _MK._convolution_pointwise(_reflect(x), w1, b1, _ZERO, _ONE, _ONE, 1, "relu", [], "")
            x = _MK._convolution_pointwise.binary(_reflect(r), x, w2, b2, _ZERO, _ONE, _ONE, 1,
                                                  "add", 1.0, None, [], "")
        x = F.selu(x, inplace=True)
        for (w, b), skip in zip(self.dec, reversed(skips)):
            up = _MK._convolution_transpose_pointwise(x, w, b, _ONE, _ZERO, _TWO, _ONE, 1, "none", [], "")
            x = F.selu(torch.cat((up, skip), 1), inplace=True)
        w, b = self.last
        return F.pixel_shuffle(_MK._convolution_pointwise(x, w, b, _ONE, _ONE, _ONE, 1, "tanh", [], ""), 2)


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
