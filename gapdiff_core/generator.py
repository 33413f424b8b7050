"""The GAP-Diff perturbation generator (a pix2pix-style U-Net with a ResNet bottleneck) and its discriminator.

Parameter names follow the authors' `models/Generator.py`, so their released state dict loads strictly.
The official forward applies LeakyReLU *in place*, so every skip connection carries LeakyReLU(e_i), not e_i;
this module reproduces that function without in-place ops (which would break autograd).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

#: The generator downsamples 8 times to a 2x2 bottleneck that is reflect-padded: sides must be multiples of 256, >= 512.
SIZE_MULTIPLE = 256
MIN_SIZE = 512


class ResnetBlock(nn.Module):
    """CycleGAN residual block: reflect-pad, 3x3 conv, BN, ReLU, reflect-pad, 3x3 conv, BN, plus identity."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=False), nn.BatchNorm2d(dim), nn.ReLU(),
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=False), nn.BatchNorm2d(dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class Generator(nn.Module):
    """GAP-Diff U-Net. `forward(x)`: B x 3 x H x W in [-1, 1] -> raw tanh perturbation in [-1, 1].

    `ngf` is the width (64 in the paper); the norm modules are shared between stages exactly as in the
    official code (`norm8` serves e4..e7 and d1..d4), so their running statistics are shared too.
    """

    def __init__(self, ngf: int = 64):
        super().__init__()
        self.ngf = ngf
        enc = [3, ngf, ngf * 2, ngf * 4, ngf * 8, ngf * 8, ngf * 8, ngf * 8, ngf * 8]
        for i in range(8):
            setattr(self, f"conv{i + 1}", nn.Conv2d(enc[i], enc[i + 1], 4, 2, 1))
        dec_in = [ngf * 8, ngf * 16, ngf * 16, ngf * 16, ngf * 16, ngf * 8, ngf * 4, ngf * 2]
        dec_out = [ngf * 8, ngf * 8, ngf * 8, ngf * 8, ngf * 4, ngf * 2, ngf, 3]
        for i in range(8):
            setattr(self, f"dconv{i + 1}", nn.ConvTranspose2d(dec_in[i], dec_out[i], 4, 2, 1))
        self.bottle_neck = nn.Sequential(*[ResnetBlock(ngf * 8) for _ in range(4)])
        self.norm = nn.BatchNorm2d(ngf)
        self.norm2 = nn.BatchNorm2d(ngf * 2)
        self.norm4 = nn.BatchNorm2d(ngf * 4)
        self.norm8 = nn.BatchNorm2d(ngf * 8)
        self.dropout = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_size(x.shape[-2], x.shape[-1])
        lrelu = lambda t: F.leaky_relu(t, 0.2)  # noqa: E731
        e1 = lrelu(self.conv1(x))
        e2 = lrelu(self.norm2(self.conv2(e1)))
        e3 = lrelu(self.norm4(self.conv3(e2)))
        e4 = lrelu(self.norm8(self.conv4(e3)))
        e5 = lrelu(self.norm8(self.conv5(e4)))
        e6 = lrelu(self.norm8(self.conv6(e5)))
        e7 = lrelu(self.norm8(self.conv7(e6)))
        d = self.bottle_neck(self.conv8(e7))
        d = torch.cat((self.dropout(self.norm8(self.dconv1(F.selu(d)))), e7), 1)
        d = torch.cat((self.dropout(self.norm8(self.dconv2(F.selu(d)))), e6), 1)
        d = torch.cat((self.dropout(self.norm8(self.dconv3(F.selu(d)))), e5), 1)
        d = torch.cat((self.norm8(self.dconv4(F.selu(d))), e4), 1)
        d = torch.cat((self.norm4(self.dconv5(F.selu(d))), e3), 1)
        d = torch.cat((self.norm2(self.dconv6(F.selu(d))), e2), 1)
        d = torch.cat((self.norm(self.dconv7(F.selu(d))), e1), 1)
        return torch.tanh(self.dconv8(F.selu(d)))


class FoldedGenerator(nn.Module):
    """A `Generator` in eval mode with every BatchNorm folded into the convolution before it.

    The same function with one pass less over every activation; used for inference (`Protector`). On a CPU its
    weights are then packed for oneDNN (`onednn_generator.pack_for_cpu`).
    """

    def __init__(self, g: Generator, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.ngf = g.ngf
        enc_norms = [None, "norm2", "norm4", "norm8", "norm8", "norm8", "norm8", None]
        dec_norms = ["norm8"] * 4 + ["norm4", "norm2", "norm", None]
        self.enc = nn.ParameterList()
        for i, norm in enumerate(enc_norms):
            self.enc.extend(_fold(getattr(g, f"conv{i + 1}"), getattr(g, norm) if norm else None, 0, dtype))
        self.res = nn.ParameterList()
        for block in g.bottle_neck:
            c = block.conv_block
            self.res.extend(_fold(c[1], c[2], 0, dtype) + _fold(c[5], c[6], 0, dtype))
        self.dec = nn.ParameterList()
        for i, norm in enumerate(dec_norms):
            self.dec.extend(_fold(getattr(g, f"dconv{i + 1}"), getattr(g, norm) if norm else None, 1, dtype))
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_size(x.shape[-2], x.shape[-1])
        skips = []  # activations are applied in place on fresh tensors: inference only (no autograd)
        for i in range(7):
            x = F.leaky_relu_(F.conv2d(x, self.enc[2 * i], self.enc[2 * i + 1], 2, 1), 0.2)
            skips.append(x)
        x = F.conv2d(x, self.enc[14], self.enc[15], 2, 1)
        for j in range(0, len(self.res), 4):
            r = F.relu_(F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), self.res[j], self.res[j + 1]))
            x = x + F.conv2d(F.pad(r, (1, 1, 1, 1), mode="reflect"), self.res[j + 2], self.res[j + 3])
        x = F.selu(x, inplace=True)
        for i in range(7):
            x = torch.cat((F.conv_transpose2d(x, self.dec[2 * i], self.dec[2 * i + 1], 2, 1), skips[6 - i]), 1)
            x = F.selu(x, inplace=True)
        return torch.tanh_(F.conv_transpose2d(x, self.dec[14], self.dec[15], 2, 1))


def _fold(conv: nn.Module, bn: nn.BatchNorm2d | None, out_dim: int, dtype: torch.dtype) -> list[nn.Parameter]:
    """Weight and bias of `bn(conv(x))` as one convolution (out_dim: 0 for Conv2d, 1 for ConvTranspose2d),
    folded in fp32 and stored in `dtype` (layer by layer, so memory never holds two fp32 copies)."""
    w = conv.weight.detach().float()
    b = conv.bias.detach().float() if conv.bias is not None else torch.zeros(w.shape[out_dim])
    if bn is not None:
        scale = bn.weight.detach().float() / torch.sqrt(bn.running_var.float() + bn.eps)
        shape = [1] * w.dim()
        shape[out_dim] = -1
        w = w * scale.view(shape)
        b = (b - bn.running_mean.float()) * scale + bn.bias.detach().float()
    return [nn.Parameter(w.to(dtype).contiguous()), nn.Parameter(b.to(dtype))]


class Discriminator(nn.Module):
    """The official small CNN critic: one conv, then the *same* conv/BN repeated, pooled to one logit."""

    def __init__(self, ngf: int = 64, blocks: int = 4):
        super().__init__()
        self.blocks = blocks
        self.conv_init = nn.Conv2d(3, ngf, 3, 1, 1)
        self.conv = nn.Conv2d(ngf, ngf, 3, 1, 1)
        self.bn = nn.BatchNorm2d(ngf)
        self.linear = nn.Linear(ngf, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.conv_init(x)))
        for _ in range(self.blocks - 1):
            x = F.relu(self.bn(self.conv(x)))
        return self.linear(x.mean(dim=(2, 3)))


def check_input_size(h: int, w: int) -> None:
    """Raise a clear error for a size the U-Net cannot process (Protector pads images to valid sizes)."""
    if h % SIZE_MULTIPLE or w % SIZE_MULTIPLE or min(h, w) < MIN_SIZE:
        raise ValueError(
            f"generator input is {h}x{w}; sides must be multiples of {SIZE_MULTIPLE} and at least {MIN_SIZE} "
            "(use gapdiff_core.Protector, which resizes and pads photos of any size)"
        )


def generator_flops(h: int, w: int, ngf: int = 64) -> float:
    """Multiply-adds x 2 of one forward pass at h x w (convolutions only), for throughput reports."""
    total = 0.0
    enc = [3, ngf, ngf * 2, ngf * 4, ngf * 8, ngf * 8, ngf * 8, ngf * 8, ngf * 8]
    for i in range(8):
        total += 2 * enc[i] * enc[i + 1] * 16 * (h >> (i + 1)) * (w >> (i + 1))
    total += 8 * 2 * (ngf * 8) ** 2 * 9 * (h >> 8) * (w >> 8)
    dec_in = [ngf * 8, ngf * 16, ngf * 16, ngf * 16, ngf * 16, ngf * 8, ngf * 4, ngf * 2]
    dec_out = [ngf * 8, ngf * 8, ngf * 8, ngf * 8, ngf * 4, ngf * 2, ngf, 3]
    for i in range(8):
        total += 2 * dec_in[i] * dec_out[i] * 16 * (h >> (8 - i)) * (w >> (8 - i))
    return total
