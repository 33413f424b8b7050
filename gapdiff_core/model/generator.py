"""The GAP-Diff perturbation generator (a pix2pix-style U-Net with a ResNet bottleneck) and its discriminator.

Parameter names follow the authors' `models/Generator.py`, so their released state dict loads strictly.
The official forward applies LeakyReLU *in place*, so every skip connection carries LeakyReLU(e_i), not e_i;
this module reproduces that function without in-place ops (which would break autograd).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import native_kernels

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


#: The normalisation an `InferenceGenerator` computes: "image" (the default) normalises every BatchNorm with the
#: image's own statistics, as train-mode BatchNorm at batch 1 (the function the authors ran at inference, dropout off);
#: "running" uses the BatchNorms' running statistics (eval mode), folded into the convolutions.
NORMS = ("image", "running")
_ENC_NORMS = [None, "norm2", "norm4", "norm8", "norm8", "norm8", "norm8", None]
_DEC_NORMS = ["norm8"] * 4 + ["norm4", "norm2", "norm", None]
#: Convolutions whose activations stay in fp32 whatever the precision (conv7, conv8, the bottleneck, dconv1): at
#: 512 px their outputs have 4 x 4 or 2 x 2 pixels, and per-image statistics over so few values amplify the
#: rounding of the activations (measured on untrained generators: means up to 18 standard deviations, so that
#: bf16's 2^-9 of the mean becomes 3.5% of the normalised value). Their weights are rounded to the model's
#: precision, as the others': with the activations in fp32 that rounding only perturbs the function as any other
#: layer's does, and these layers hold 43% of the weights but under 1% of the FLOPs, so reading them is their cost.
FP32_CONVS = range(6, 17)


class InferenceGenerator(nn.Module):
    """The function of a `Generator` for inference, with dropout off and the normalisation chosen by `norm`.

    norm="image": each BatchNorm normalises each image with that image's own mean and (biased) variance over the
    valid region and applies its affine parameters: train-mode BatchNorm at batch size 1, for every image of a
    batch independently; the running statistics are neither used nor updated. norm="running": eval mode, with
    every BatchNorm folded into the convolution before it. With norm="image", `FP32_CONVS` run in fp32 whatever
    `dtype` is, on weights rounded to `dtype`; each convolution takes its input in its own weights' dtype.

    `forward(x, valid=None, record=None)`: x is B x 3 x H x W in [-1, 1]; `valid` = (h, w) restricts the
    statistics to the top-left h x w of the input (the photo, not the padding `Protector` adds; at each level the
    region is rounded up as the convolutions halve it); `record`, a list, receives each normalisation's
    (mean, var) in call order, for inspection.

    `traceable = True` computes the same statistics in one `var_mean` and the affine map in one `addcmul`, a graph
    that `torch.export` can trace with symbolic sizes (the ONNX export); the default runs faster.
    """

    traceable = False

    def __init__(self, g: Generator, norm: str = "image", dtype: torch.dtype = torch.float32):
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, not {norm!r}")
        self.ngf, self.norm = g.ngf, norm
        convs = [(getattr(g, f"conv{i + 1}"), _ENC_NORMS[i]) for i in range(8)]
        for block in g.bottle_neck:
            c = block.conv_block
            convs += [(c[1], c[2]), (c[5], c[6])]
        convs += [(getattr(g, f"dconv{i + 1}"), _DEC_NORMS[i]) for i in range(8)]
        self.weights, self.biases, self.gammas, self.betas = (nn.ParameterList() for _ in range(4))
        self.eps = []
        for conv, bn in convs:
            bn = getattr(g, bn) if isinstance(bn, str) else bn
            out_dim = 1 if isinstance(conv, nn.ConvTranspose2d) else 0
            layer_dtype = torch.float32 if len(self.weights) in FP32_CONVS and norm == "image" else dtype
            w, b = _fold(conv, bn if norm == "running" else None, out_dim, dtype, layer_dtype)
            self.weights.append(w)
            self.biases.append(b)
            if norm == "image" and bn is not None:
                self.gammas.append(nn.Parameter(bn.weight.detach().float().clone()))
                self.betas.append(nn.Parameter(bn.bias.detach().float().clone()))
                self.eps.append(bn.eps)
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor, valid: tuple[int, int] | None = None,
                record: list | None = None) -> torch.Tensor:
        check_input_size(x.shape[-2], x.shape[-1])
        norm = _Normaliser(self, valid, record)
        x = self.conv(0, x, "leaky_relu")
        skips = [x]  # activations are applied in place on fresh tensors: inference only (no autograd)
        for i in range(1, 7):
            x = norm(self.conv(i, x, norm.fused("leaky_relu")), i + 1, "leaky_relu")
            skips.append(x)
        x = self.conv(7, x, "none")
        for k in range(8, 16, 2):
            r = norm(self.res_conv(k, x, norm.fused("relu")), 8, "relu")
            x = norm.residual(self.res_conv(k + 1, r, norm.fused("add"), x), x)
        x = F.selu(x, inplace=True)
        for i in range(7):
            x = norm.decoder_input(self.dconv(16 + i, x), 7 - i, skips[6 - i])
        return self.last(x)

    # The convolutions, with an optional activation fused after them ("none", "relu", "leaky_relu"; "add" adds
    # `other`); `OneDNNGenerator` overrides these with packed oneDNN kernels.
    # Inputs are cast to the layer's dtype (the bias's: packed weights have none of their own).
    def conv(self, k: int, x: torch.Tensor, act: str) -> torch.Tensor:
        return _act(F.conv2d(x.to(self.biases[k].dtype), self.weights[k], self.biases[k], 2, 1), act)

    def res_conv(self, k: int, x: torch.Tensor, act: str, other: torch.Tensor | None = None) -> torch.Tensor:
        y = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), self.weights[k], self.biases[k])
        return y.add_(other) if act == "add" else _act(y, act)

    def dconv(self, k: int, x: torch.Tensor) -> torch.Tensor:
        return F.conv_transpose2d(x.to(self.biases[k].dtype), self.weights[k], self.biases[k], 2, 1)

    def last(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh_(F.conv_transpose2d(x, self.weights[23], self.biases[23], 2, 1))


class _Normaliser:
    """Per-image normalisation of one forward pass: the BatchNorms in call order, with statistics computed over
    the valid region of each level, applied to the whole map, followed by the layer's activation. On the CPU
    both run on the compiled kernels where they are available (`native_kernels`: one pass each, in place),
    otherwise on PyTorch ops (`_statistics`, `_normalise`)."""

    def __init__(self, model: InferenceGenerator, valid, record):
        self.model, self.valid, self.record = model, valid, record
        self.active = model.norm == "image"
        self.lib = None if model.traceable else native_kernels.kernels()
        self.index = 0

    def fused(self, act: str) -> str:
        """The activation to fuse into the convolution before a BatchNorm: none where the normalisation runs."""
        return "none" if self.active else act

    def __call__(self, y: torch.Tensor, level: int, act: str, out: torch.Tensor | None = None) -> torch.Tensor:
        """act(normalised y). With the kernels, in place or into `out` (a map of y's shape and dtype, e.g. a channel
        slice of a wider one; the kernels only); else a new map."""
        if not self.active:
            return y
        i, self.index = self.index, self.index + 1
        h, w = y.shape[2:] if self.valid is None else (-(-self.valid[0] >> level), -(-self.valid[1] >> level))
        gamma, beta, eps = self.model.gammas[i], self.model.betas[i], self.model.eps[i]
        if self.lib is not None and native_kernels.supports(y):
            out = y if out is None else out
            self._record(*native_kernels.normalise(self.lib, y, (h, w), gamma, beta, eps, act, out))
            return out
        region = y[..., :h, :w]
        if self.model.traceable:
            var, mean = torch.var_mean(region.float(), dim=(2, 3), keepdim=True, correction=0)
            scale = gamma.view(1, -1, 1, 1) * torch.rsqrt(var + eps)
            normalised = torch.addcmul(beta.view(1, -1, 1, 1) - mean * scale, y, scale).to(y.dtype)
        else:
            mean, var = _statistics(region)
            normalised = _normalise(y, mean, var, gamma, beta, eps)
        self._record(mean, var)
        return _act(normalised, act)

    def residual(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The second convolution of a residual block, normalised and added to the block's input (folded: the
        convolution added it already)."""
        return self(y, 8, "none").add_(x) if self.active else y

    def decoder_input(self, up: torch.Tensor, level: int, skip: torch.Tensor) -> torch.Tensor:
        """selu(cat((normalised up, skip), 1)); with the kernels, each half is written into place in one pass."""
        if self.lib is None or up.dtype != skip.dtype or not native_kernels.supports(up, skip):
            return F.selu(torch.cat((self(up, level, "none"), skip), 1), inplace=True)
        both = torch.empty(up.shape[0], up.shape[1] + skip.shape[1], *up.shape[2:], dtype=up.dtype,
                           memory_format=torch.channels_last)
        native_kernels.activate(self.lib, skip, "selu", both[:, up.shape[1]:])
        if self.active:
            self(up, level, "selu", out=both[:, :up.shape[1]])
        else:
            native_kernels.activate(self.lib, up, "selu", both[:, :up.shape[1]])
        return both

    def _record(self, mean: torch.Tensor, var: torch.Tensor) -> None:
        if self.record is not None:
            self.record.append((mean, var))


#: Elements per image of one block of the variance pass: its fp32 deviations (1 MB an image) stay in the cache.
_BLOCK = 1 << 18


def _statistics(region: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image, per-channel mean and biased variance of `region` (N x C x h x w, any float dtype), in fp32:
    two passes (the mean, then the squared deviations from it), with no fp32 copy of the whole map.

    Both passes go over the same blocks of rows, each turned into fp32 (values, then deviations) that fit in the
    cache, and add the block sums in order. Each sum runs over a channel in a fixed order whatever the number of
    threads (PyTorch splits such reductions between threads by channel), so the result does not depend on it:
    through the generator's deep, nearly constant levels, a 4e-6 difference in one mean became 13 grey levels
    (a kernel that split each channel's pixels between threads)."""
    c, h, w = region.shape[1:]
    blocks = region.split(max(1, _BLOCK // (c * w)), dim=2)  # the same blocks whatever the batch size
    mean = sum(rows.sum((2, 3), dtype=torch.float32, keepdim=True) for rows in blocks).div_(h * w)
    squares = sum(torch.sub(rows, mean).square_().sum((2, 3), keepdim=True) for rows in blocks)
    return mean, squares.div_(h * w)


def _normalise(y: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor,
               eps: float) -> torch.Tensor:
    """(y - mean) / sqrt(var + eps) * gamma + beta for each image of y with its own statistics (N x C x 1 x 1,
    fp32), in y's dtype: eval-mode batch norm given those statistics, one image at a time (its channels-last
    CPU kernel computes in fp32 from bf16 and writes bf16 in one pass)."""
    out = torch.empty_like(y)
    unused = mean.new_empty(y.shape[1])  # what the kernel would save for training (sized as PyTorch allocates it)
    for k in range(y.shape[0]):
        torch.ops.aten.native_batch_norm.out(y[k:k + 1], gamma, beta, mean[k].view(-1), var[k].view(-1), False, 0.0,
                                             eps, out=out[k:k + 1], save_mean=unused, save_invstd=unused)
    return out


def _act(y: torch.Tensor, act: str) -> torch.Tensor:
    if act == "leaky_relu":
        return F.leaky_relu_(y, 0.2)
    if act == "relu":
        return F.relu_(y)
    return y


def _fold(conv: nn.Module, bn: nn.BatchNorm2d | None, out_dim: int, precision: torch.dtype,
          dtype: torch.dtype) -> list[nn.Parameter]:
    """Weight and bias of `bn(conv(x))` in eval mode as one convolution (out_dim: 0 for Conv2d, 1 for
    ConvTranspose2d; `bn=None`: the convolution alone), computed in fp32, the weight rounded to `precision`, both
    stored in `dtype` (layer by layer, so memory never holds two fp32 copies)."""
    w = conv.weight.detach().float()
    b = conv.bias.detach().float() if conv.bias is not None else torch.zeros(w.shape[out_dim])
    if bn is not None:
        scale = bn.weight.detach().float() / torch.sqrt(bn.running_var.float() + bn.eps)
        shape = [1] * w.dim()
        shape[out_dim] = -1
        w = w * scale.view(shape)
        b = (b - bn.running_mean.float()) * scale + bn.bias.detach().float()
    # The bias is copied (it is small): a tensor read from a .safetensors file keeps the whole file's buffer alive,
    # so a shared bias kept every fp32 weight in memory after packing (`OneDNNGenerator` keeps the biases).
    return [nn.Parameter(w.to(precision).to(dtype).contiguous()), nn.Parameter(b.to(dtype, copy=True))]


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
