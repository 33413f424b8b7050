"""The compiled CPU kernels (gapdiff_core/model/norm_kernels.cpp) compute what the PyTorch ops compute, from one map
to the whole generator, and are built, cached and refused as the module says. Their statistics' accuracy and
independence of the thread count are tested with the PyTorch ops' in test_normalisation.py."""
from __future__ import annotations

import shutil
import warnings

import pytest
import torch
import torch.nn.functional as F

from gapdiff_core import Protector
from gapdiff_core.model import native_kernels
from gapdiff_core.model.generator import InferenceGenerator, _normalise, _statistics
from gapdiff_core.model.packed_cpu import BF16_WEIGHT_PRODUCTS, pack_for_cpu

pytestmark = pytest.mark.skipif(shutil.which("c++") is None, reason="no C++ compiler on this machine")


@pytest.fixture(scope="module")
def lib():
    built = native_kernels.kernels()
    assert built is not None, "a C++ compiler is here, so the kernels must build"
    return built


def channels_last(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t.to(dtype).contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_normalised_maps_equal_the_pytorch_ops_in_place_and_into_a_slice(lib, dtype):
    """In place, or into a channel slice of a wider map, the kernel's leaky-ReLU output equals the PyTorch ops'
    (fp32: within a few ulps; bf16: within one rounding) and leaves the rest of the wide map untouched."""
    g = torch.Generator().manual_seed(3)
    y = channels_last(torch.randn(2, 48, 40, 36, generator=g) * 2 + 1, dtype)
    gamma, beta = torch.rand(48, generator=g) + 0.5, torch.randn(48, generator=g)
    mean, var = _statistics(y[..., :33, :30])
    expected = F.leaky_relu(_normalise(y, mean, var, gamma, beta, 1e-5), 0.2)
    wide = channels_last(torch.full((2, 80, 40, 36), 7.0), dtype)
    native_kernels.normalise(lib, y, (33, 30), gamma, beta, 1e-5, "leaky_relu", wide[:, 16:64])
    in_place = y.clone()
    native_kernels.normalise(lib, in_place, (33, 30), gamma, beta, 1e-5, "leaky_relu", in_place)
    assert torch.equal(wide[:, 16:64], in_place)
    assert (wide[:, :16] == 7).all() and (wide[:, 64:] == 7).all()
    tolerance = 1e-5 if dtype == torch.float32 else 2 ** -7 * expected.float().abs().max().item()
    assert (in_place.float() - expected.float()).abs().max().item() <= tolerance


@pytest.mark.parametrize("act", ["none", "relu", "leaky_relu", "selu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_activations_equal_pytorchs(lib, act, dtype):
    """Over -100..5 (and the region near 0, where exp(x) - 1 cancels): fp32 within 2 ulps of PyTorch's, bf16
    equal but for a rare tie."""
    x = torch.cat([torch.linspace(-100, 5, 40960), torch.linspace(-0.5, 0.5, 20480)]).view(1, 32, -1, 1)
    x = channels_last(x, dtype)
    reference = {"none": lambda t: t, "relu": F.relu, "leaky_relu": lambda t: F.leaky_relu(t, 0.2),
                 "selu": F.selu}[act](x)
    out = native_kernels.activate(lib, x, act, torch.empty_like(x))
    error = (out.double() - reference.double()).abs() / reference.double().abs().clamp_min(1e-30)
    if dtype == torch.float32:
        assert error.max().item() <= 2.5e-7
    else:
        assert (out != reference).float().mean().item() < 1e-3 and error.max().item() <= 2 ** -8


@pytest.mark.parametrize("kernel,stride,reflect", [(4, 2, False), (3, 1, True)])
def test_small_map_convolutions_equal_fp32_convolutions_on_bf16_weights(lib, kernel, stride, reflect):
    """im2col + the bf16-weight matrix product = an fp32 convolution whose weights are rounded to bf16."""
    g = torch.Generator().manual_seed(4)
    x = channels_last(torch.randn(3, 64, 4, 6, generator=g), torch.float32)
    w = (torch.randn(32, 64, kernel, kernel, generator=g) * 0.05).bfloat16()
    bias = torch.randn(32, generator=g)
    matrix = w.permute(0, 2, 3, 1).flatten(1).contiguous()
    y = native_kernels.linear_bf16_weights(lib, native_kernels.im2col(lib, x, kernel, stride, reflect), matrix, bias)
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect" if reflect else "constant")
    expected = F.conv2d(padded, w.float(), bias, stride)
    assert torch.allclose(y.view(3, *expected.shape[2:], 32).permute(0, 3, 1, 2), expected, atol=2e-5)


def test_the_generator_on_kernels_equals_it_on_pytorch_ops(lib, trained_stats_generator, monkeypatch):
    """The whole forward pass (padded to the right, a batch of 2): fp32 within 0.01 grey levels at budget 8 of
    the PyTorch ops; bf16 (whose small-map layers run as bf16-weight matrix products) within one grey level, as
    two bf16 forward passes whose roundings differ (measured: 0.63)."""
    x = torch.rand(2, 3, 512, 768, generator=torch.Generator().manual_seed(8)) * 2 - 1
    outputs = {}
    for dtype in (torch.float32, torch.bfloat16):
        packed = pack_for_cpu(InferenceGenerator(trained_stats_generator, "image", dtype))
        assert sorted(packed.matrices) == (list(BF16_WEIGHT_PRODUCTS) if dtype == torch.bfloat16 else [])
        with torch.inference_mode():
            outputs[dtype] = packed(channels_last(x, dtype), valid=(512, 700)).float()
    monkeypatch.setattr(native_kernels, "kernels", lambda: None)
    for dtype, ours in outputs.items():
        plain = InferenceGenerator(trained_stats_generator, "image", dtype)
        with torch.inference_mode():
            ops = plain(channels_last(x, dtype), valid=(512, 700)).float()
        assert (ours - ops).abs().max().item() * 8 <= (0.01 if dtype == torch.float32 else 1.0)


def test_a_protector_without_a_compiler_says_so_once_and_protects_the_same(toy_generator_file, tmp_path,
                                                                           monkeypatch):
    """A compiler that fails: one warning naming the log, a marker so later processes do not retry, and the same
    perturbation (fp32, within 0.01 grey levels at budget 8) on PyTorch ops."""
    photo = torch.rand(1, 3, 512, 512, generator=torch.Generator().manual_seed(2))
    with_kernels = Protector(str(toy_generator_file), precision="fp32", budget=8).perturbation(photo)
    monkeypatch.setenv("GAPDIFF_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setenv("CXX", "false")  # a compiler that always fails
    native_kernels.kernels.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="could not build or load the normalisation kernels.*messages are in"):
            assert native_kernels.kernels() is None
        assert len(list(tmp_path.glob("*.failed"))) == 1
        native_kernels.kernels.cache_clear()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            without = Protector(str(toy_generator_file), precision="fp32", budget=8).perturbation(photo)
    finally:
        native_kernels.kernels.cache_clear()
    assert (with_kernels - without).abs().max().item() * 8 <= 0.01  # grey levels at budget 8


def test_kernels_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("GAPDIFF_NATIVE_KERNELS", "0")
    native_kernels.kernels.cache_clear()
    try:
        assert native_kernels.kernels() is None
    finally:
        native_kernels.kernels.cache_clear()
