"""The per-image normalisation of #21, on PyTorch ops (sums in a fixed order, the variance over cache-sized blocks,
the affine map on the batch-norm kernel) and on the compiled kernels (native_kernels), computes what the
statistics computed before it: an fp32 copy of each map and var_mean."""
from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F

from gapdiff_core import Protector
from gapdiff_core.model import native_kernels
from gapdiff_core.model.generator import InferenceGenerator, _normalise, _statistics


def reference_forward(model, x: torch.Tensor, valid: tuple[int, int] | None = None) -> torch.Tensor:
    """The per-image function as computed before #21 (an fp32 copy of each activation, `var_mean` over the valid
    region, `addcmul`), around the same convolutions as `model`: the reference the new kernels must equal."""
    index = 0

    def norm(y, level, act="none"):
        nonlocal index
        region = y if valid is None else y[..., :-(-valid[0] >> level), :-(-valid[1] >> level)]
        var, mean = torch.var_mean(region.float(), dim=(2, 3), keepdim=True, correction=0)
        scale = model.gammas[index].view(1, -1, 1, 1) * torch.rsqrt(var + model.eps[index])
        shift = model.betas[index].view(1, -1, 1, 1) - mean * scale
        index += 1
        y = torch.addcmul(shift, y, scale, out=y)
        return F.leaky_relu_(y, 0.2) if act == "leaky_relu" else F.relu_(y) if act == "relu" else y

    x = model.conv(0, x, "leaky_relu")
    skips = [x]
    for i in range(1, 7):
        x = norm(model.conv(i, x, "none"), i + 1, "leaky_relu")
        skips.append(x)
    x = model.conv(7, x, "none")
    for k in range(8, 16, 2):
        r = norm(model.res_conv(k, x, "none"), 8, "relu")
        x = norm(model.res_conv(k + 1, r, "none"), 8).add_(x)
    x = F.selu(x, inplace=True)
    for i in range(7):
        up = norm(model.dconv(16 + i, x), 7 - i)
        x = F.selu(torch.cat((up, skips[6 - i]), 1), inplace=True)
    return model.last(x)


def prepared(p: Protector, x01: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """x01 padded to `size` and laid out as `Protector` hands it to the generator."""
    from gapdiff_core.model.protector import pad_to
    return (pad_to(x01, *size) * 2 - 1).to(p.dtype).contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("shape,size", [((2, 512, 512), (512, 512)), ((2, 683, 512), (768, 512)),
                                        ((1, 512, 700), (512, 768)), ((3, 300, 900), (512, 1024))])
def test_fp32_equals_the_previous_statistics_within_a_hundredth_of_a_grey_level(trained_stats_generator, shape,
                                                                               size):
    """Unpadded, padded below (rows) and to the right (columns, the crop is copied), batches of 1 to 3."""
    p = Protector(trained_stats_generator, precision="fp32", batch_size=4)
    x = prepared(p, torch.rand(shape[0], 3, *shape[1:], generator=torch.Generator().manual_seed(5)), size)
    with torch.inference_mode():
        ours = p.model(x, valid=shape[1:])
        ref = reference_forward(p.model, x.clone(), valid=shape[1:])
    assert (ours - ref).abs().max().item() * 8 <= 0.01  # grey levels at budget 8


@pytest.mark.parametrize("shape,size", [((1, 512, 512), (512, 512)), ((2, 512, 700), (512, 768))])
def test_bf16_statistics_are_accumulated_in_fp32(trained_stats_generator, shape, size):
    """bf16 activations normalised with fp32 statistics of the bf16 values, as before: the recorded statistics
    equal fp32 statistics of the same activations, and the output stays next to the previous computation."""
    p = Protector(trained_stats_generator, precision="bf16", batch_size=4)
    x = prepared(p, torch.rand(shape[0], 3, *shape[1:], generator=torch.Generator().manual_seed(6)), size)
    with torch.inference_mode():
        ours = p.model(x, valid=shape[1:])
        ref = reference_forward(p.model, x.clone(), valid=shape[1:])
    # bf16 rounding of intermediate activations differs by an ulp here and there and is amplified through 24
    # layers of an untrained generator (measured: up to 0.56 grey levels); both are equally far from fp32.
    assert (ours.float() - ref.float()).abs().max().item() * 8 < 1.0


def normalised(implementation: str, y: torch.Tensor, valid: tuple[int, int], gamma: torch.Tensor,
               beta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean, variance, normalised map) of y, the statistics over its top-left `valid` pixels, by the PyTorch ops
    or by the compiled kernels (which must build wherever a C++ compiler is)."""
    if implementation == "ops":
        mean, var = _statistics(y[..., :valid[0], :valid[1]])
        return mean, var, _normalise(y, mean, var, gamma, beta, 1e-5)
    if shutil.which("c++") is None:
        pytest.skip("no C++ compiler on this machine")
    out = torch.empty_like(y)
    return (*native_kernels.normalise(native_kernels.kernels(), y, valid, gamma, beta, 1e-5, "none", out), out)


@pytest.mark.parametrize("implementation", ["ops", "kernels"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n,c,hw", [(1, 64, 64), (3, 32, 16), (2, 16, 4), (1, 8, 256)])
def test_normalise_matches_float64_statistics(implementation, dtype, n, c, hw):
    """Activations whose mean is 80 standard deviations from zero, where statistics rounded to bf16, or computed
    in one pass as E[x^2] - E[x]^2 (group_norm's CPU kernel: 4% off), would be far off: fp32-accurate statistics
    (over several blocks at 8 x 256 x 256), and an output within one rounding of the exact map."""
    g = torch.Generator().manual_seed(hw)
    y = (torch.randn(n, c, hw, hw, generator=g) * 0.5 + 40).to(dtype).contiguous(memory_format=torch.channels_last)
    gamma, beta = torch.rand(c, generator=g) + 0.5, torch.randn(c, generator=g)
    mean, var, out = normalised(implementation, y, (hw, hw), gamma, beta)
    var64, mean64 = torch.var_mean(y.double(), dim=(2, 3), keepdim=True, correction=0)
    assert mean.dtype == var.dtype == torch.float32 and out.dtype == dtype and mean.shape == (n, c, 1, 1)
    assert torch.allclose(mean.double(), mean64, rtol=0, atol=1e-4) and torch.allclose(var.double(), var64, rtol=1e-4)
    exact = (y.double() - mean64) * (var64 + 1e-5).rsqrt() * gamma.double().view(1, -1, 1, 1) \
        + beta.double().view(1, -1, 1, 1)
    tolerance = 1e-4 if dtype == torch.float32 else 2 ** -7 * exact.abs().max().item()
    assert (out.double() - exact).abs().max().item() <= tolerance


@pytest.mark.parametrize("implementation", ["ops", "kernels"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_statistics_do_not_depend_on_threads_or_batch(implementation, dtype):
    """Bit for bit the same statistics and output at 1, 2 and 3 threads, and for an image alone or inside a batch
    of 3, over a crop (as padding makes it; the rest of the map is far from it): 4e-6 in one mean became 13 grey
    levels through the generator. The crop's statistics are those of its pixels."""
    g = torch.Generator().manual_seed(0)
    y = (torch.randn(3, 64, 192, 160, generator=g) * 3 + 7).to(dtype).contiguous(memory_format=torch.channels_last)
    y[..., 181:, :] = 1000
    y[..., 150:] = -1000
    gamma, beta = torch.ones(64), torch.zeros(64)
    threads = torch.get_num_threads()
    try:
        runs = []
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            runs.append(normalised(implementation, y, (181, 150), gamma, beta))
    finally:
        torch.set_num_threads(threads)
    for run in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(run, runs[0]))
    alone = normalised(implementation, y[1:2], (181, 150), gamma, beta)
    assert all(torch.equal(a, b[1:2]) for a, b in zip(alone, runs[0]))
    var64, mean64 = torch.var_mean(y[..., :181, :150].double(), dim=(2, 3), keepdim=True, correction=0)
    assert torch.allclose(runs[0][0].double(), mean64, atol=1e-5)
    assert torch.allclose(runs[0][1].double(), var64, rtol=1e-4)


def test_statistics_cover_the_valid_crop_only(trained_stats_generator):
    """A map padded with values far from the photo's: the masked statistics equal those of the photo region."""
    p = Protector(trained_stats_generator, precision="fp32")
    x = prepared(p, torch.rand(1, 3, 512, 700, generator=torch.Generator().manual_seed(7)), (512, 768))
    x[..., 700:] = 1.0  # white padding (reflection is the default; any padding must be excluded)
    record = []
    with torch.inference_mode():
        p.model(x, valid=(512, 700), record=record)
        y = p.model.conv(1, p.model.conv(0, x, "leaky_relu"), "none")  # the first normalised map, level 2
    var64, mean64 = torch.var_mean(y[..., :128, :175].double(), dim=(2, 3), correction=0)
    mean, var = record[0]
    assert torch.allclose(mean.flatten().double(), mean64.flatten(), atol=1e-5)
    assert torch.allclose(var.flatten().double(), var64.flatten(), rtol=1e-3, atol=1e-6)
    whole = y.double().mean(dim=(2, 3)).flatten()
    assert (whole - mean64.flatten()).abs().max() > 100 * (mean.flatten().double() - mean64.flatten()).abs().max()


def test_the_traceable_form_computes_the_same_function(trained_stats_generator):
    """The ONNX export's single var_mean / addcmul form equals the default within 0.01 grey levels at budget 8
    (padded to the right, so the valid region is cropped)."""
    p = Protector(trained_stats_generator, precision="fp32", batch_size=4)
    x = prepared(p, torch.rand(2, 3, 512, 700, generator=torch.Generator().manual_seed(9)), (512, 768))
    traceable = InferenceGenerator(trained_stats_generator)
    traceable.traceable = True
    with torch.inference_mode():
        ours = p.model(x, valid=(512, 700))
        traced = traceable(x, valid=(512, 700))
    assert (ours - traced).abs().max().item() * 8 <= 0.01
