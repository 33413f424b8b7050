"""The transform registry: spec parsing and errors, codecs against Pillow, filters against their libraries, geometry,
platform presets, chains, determinism, and the purifications (DiffPure, GrIDPure, IMPRESS, noisy upscaling)."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, features

from gapdiff_core.preprocess import TransformSpecError, apply, available, help_text, parse, real
from gapdiff_core.preprocess import purification as pur
from gapdiff_core.preprocess.transforms import REGISTRY

SAMPLES = Path(__file__).resolve().parent.parent / "gapdiff_core" / "samples"


def photo(h=48, w=64, top=80, left=110) -> torch.Tensor:
    a = np.asarray(Image.open(SAMPLES / "obama.jpg").convert("RGB"))[top:top + h, left:left + w]
    return torch.from_numpy(a.copy()).permute(2, 0, 1)[None].float() / 255.0


def as_uint8(x: torch.Tensor) -> np.ndarray:
    return (x[0].permute(1, 2, 0) * 255).round().byte().numpy()


def pillow_round_trip(a: np.ndarray, fmt: str, **options) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format=fmt, **options)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


@pytest.fixture(scope="module")
def tiny():
    from gapdiff_core.diffusion import Surrogate

    return Surrogate.tiny()


# ---------------------------------------------------------------- specs
def test_specs_normalise_and_keep_the_former_ones():
    assert parse("JPEG:70").spec == "jpeg:70"
    assert parse("jpeg:quality=75,subsampling=4:4:4").spec == "jpeg:75,subsampling=444"
    assert parse(" resize:1080 , side=LONG | jpeg:75 ").spec == "resize:1080,side=long|jpeg:75"
    assert parse("platform:Twitter").spec == "platform:x"
    assert parse("noise:0.1").spec == "noise:0.1" and parse("none").name == "none"
    x = photo()
    for spec in ["none", "jpeg:70", "blur", "noise:0.05", "quantize:64", "resize:32"]:  # the former specs
        assert torch.equal(parse(spec)(x), real.parse_transform(spec)(x))
    assert parse("resize:32")(x).shape[-2:] == (32, 43)  # still the short side, as before


@pytest.mark.parametrize("spec, problem", [
    ("jpg:70", "unknown transform 'jpg'"), ("jpeg:abc", "quality must be an integer"),
    ("jpeg:0", r"quality must be in \[1, 100\], got 0"), ("jpeg:101", "got 101"), ("blur:3", "takes no argument"),
    ("jpeg:70,subsampling=411", "subsampling must be one of 444, 422, 420"), ("jpeg:70,speed=3", "no parameter 'speed'"),
    ("jpeg:quality=70,80", "positional value cannot follow"), ("jpeg:70,quality=80", "quality given twice"),
    ("quantize:1", "levels must be in"), ("noise:-1", "std must be in"), ("noise:nan", "finite"), ("median:4", "odd"),
    ("resize:1080|", "empty step"), ("", "empty spec"), ("platform", "platform needs name"),
    ("platform:myspace", "name must be one of instagram"), ("gridpure:0.1,crop=64,stride=128", "leave gaps"),
    ("noisy-upscale:0.05", "needs upscaler=FOLDER"), ("resize:64,enlarge=maybe", "enlarge must be yes or no"),
    ("diffpure:1.5", r"t must be in \[0.0, 1.0\]"),
])
def test_bad_specs_name_the_spec_and_the_problem(spec, problem):
    with pytest.raises(TransformSpecError, match=problem) as err:
        parse(spec)
    assert str(err.value).startswith(f"image transform {spec!r}")


def test_bad_images_and_missing_surrogate_are_refused():
    with pytest.raises(ValueError, match=r"expected float images B×3×H×W.*\(3, 8, 8\)"):
        parse("jpeg:70")(torch.rand(3, 8, 8))
    with pytest.raises(ValueError, match="needs the surrogate diffusion model"):
        parse("resize:16|diffpure:0.1")(photo())


def test_every_transform_is_listed_with_help_and_a_source():
    infos = available()
    assert [i.name for i in infos] == list(REGISTRY)
    for i in infos:
        assert i.help and i.usage.startswith(i.name) and i.source.startswith("Source:"), i.name
        assert i.usage in help_text()
    assert {"jpeg", "webp", "avif", "resize", "crop", "rescale", "platform", "gauss", "median", "bilateral", "tv",
            "nlmeans", "diffpure", "gridpure", "impress", "noisy-upscale"} <= set(REGISTRY)
    assert [i.name for i in infos if i.needs_surrogate] == ["diffpure", "gridpure", "impress"]


# ---------------------------------------------------------------- codecs, filters, geometry
@pytest.mark.parametrize("spec, fmt, options", [
    ("jpeg:70", "JPEG", {"quality": 70, "subsampling": 2}), ("jpeg:90,subsampling=444", "JPEG", {"quality": 90, "subsampling": 0}),
    ("jpeg:50,subsampling=422", "JPEG", {"quality": 50, "subsampling": 1}), ("webp:60", "WEBP", {"quality": 60}),
    ("avif:40", "AVIF", {"quality": 40}),
])
def test_codecs_equal_a_pillow_round_trip(spec, fmt, options):
    if fmt != "JPEG" and not features.check(fmt.lower()):
        pytest.skip(f"this Pillow has no {fmt}")  # Pillow 12 here has both: this test runs
    x = photo()
    out = parse(spec)(x)
    assert np.array_equal(as_uint8(out), pillow_round_trip(as_uint8(x), fmt, **options))
    assert not torch.equal(out, parse("none")(x))


def test_chroma_subsampling_changes_the_result_and_4_2_0_is_the_former_jpeg():
    x = photo()
    assert torch.equal(parse("jpeg:75")(x), real.jpeg(x, 75))
    assert not torch.equal(parse("jpeg:75,subsampling=444")(x), parse("jpeg:75")(x))


def test_filters_equal_their_libraries():
    cv2 = pytest.importorskip("cv2")
    from skimage.restoration import denoise_tv_chambolle

    x = photo()
    a = as_uint8(x)
    assert np.array_equal(as_uint8(parse("gauss:1.5")(x)), cv2.GaussianBlur(a, (0, 0), 1.5))
    assert np.array_equal(as_uint8(parse("median:5")(x)), cv2.medianBlur(a, 5))
    assert np.array_equal(as_uint8(parse("bilateral:5,sigma_color=30")(x)), cv2.bilateralFilter(a, 5, 30.0, 75.0))
    nl = cv2.fastNlMeansDenoisingColored(np.ascontiguousarray(a[..., ::-1]), None, 12.0, 12.0, 7, 21)[..., ::-1]
    assert np.array_equal(as_uint8(parse("nlmeans:12")(x)), nl)
    tv = np.round(denoise_tv_chambolle(a / 255.0, weight=0.2, channel_axis=-1) * 255)
    assert np.abs(as_uint8(parse("tv:0.2")(x)).astype(int) - tv).max() <= 1  # float32 vs float64 input


def test_geometry_sizes_positions_and_filters():
    x = photo(48, 64)
    assert parse("resize:32,side=long")(x).shape[-2:] == (24, 32)
    assert parse("resize:128,side=long,enlarge=no")(x).shape[-2:] == (48, 64)
    assert not torch.equal(parse("resize:32,filter=lanczos")(x), parse("resize:32")(x))
    c = parse("crop:0.5,position=bottom-right")(x)
    assert torch.equal(c, x[..., 24:, 32:])
    assert torch.equal(parse("crop:0.5")(x), x[..., 12:36, 16:48])
    r = parse("rescale:0.25")(x)
    assert r.shape == x.shape and 0 < (r - x).abs().mean() < 0.2


def test_platform_presets_cap_the_long_side_and_re_encode():
    big = torch.nn.functional.interpolate(photo(48, 64), size=(1500, 2000), mode="bilinear")
    caps = {"instagram": 1080, "facebook": 2048, "x": 4096, "whatsapp": 1600}
    for name, cap in caps.items():
        t = parse(f"platform:{name}")
        assert t.name == "platform" and t.spec == f"platform:{name}"
        assert max(t(big).shape[-2:]) == min(cap, 2000), name
    small = photo(48, 64)
    assert torch.equal(parse("platform:instagram")(small), real.jpeg(small, 75))  # not enlarged, JPEG 75


def test_chains_compose_in_order():
    x = photo(48, 64)
    a = parse("resize:32|crop:0.5")(x)
    assert torch.equal(a, parse("crop:0.5")(parse("resize:32")(x)))
    b = parse("crop:0.5|resize:32")(x)
    assert a.shape[-2:] == (16, 22) and b.shape[-2:] == (32, 43)
    j = parse("jpeg:30|noise:0.02")(x, seed=3)
    assert not torch.equal(j, parse("noise:0.02|jpeg:30")(x, seed=3))
    assert parse("platform:instagram|gauss:1").spec == "resize:1080,filter=bicubic,side=long,enlarge=no|jpeg:75|gauss:1.0"


def test_results_are_fixed_by_the_seed():
    x = photo()
    for spec in ["noise:0.05", "crop:0.7,random", "jpeg:60|noise:0.05|crop:0.5,random"]:
        assert torch.equal(apply(spec, x, seed=4), apply(spec, x, seed=4)), spec
        assert not torch.equal(apply(spec, x, seed=4), apply(spec, x, seed=5)), spec
    twice = parse("noise:0.05|noise:0.05")(x, seed=1)  # each step of a chain draws its own noise
    assert not torch.equal(twice, parse("noise:0.05")(parse("noise:0.05")(x, seed=1), seed=1))


# ---------------------------------------------------------------- DiffPure on a model whose answer is known
class GaussianPriorSurrogate:
    """An exact denoiser for data x0 ~ N(mu, s²) per pixel, with an identity autoencoder (latents = 2x - 1): the
    DiffPure posterior is then known in closed form."""

    latent_scale = 1

    def __init__(self, prediction_type="epsilon", mu=0.2, s=0.5):
        from diffusers import DDPMScheduler

        self.scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
        self.prediction_type, self.mu, self.s = prediction_type, mu, s
        self.calls = 0

    def encode_images(self, x, sample=False):
        return x * 2 - 1

    def decode_latents(self, z):
        return (z + 1) / 2

    def encode_prompt(self, prompts):
        return torch.zeros(len(prompts), 1, 1)

    def posterior_mean(self, z, a):
        return self.mu + a.sqrt() * self.s ** 2 / (a * self.s ** 2 + 1 - a) * (z - a.sqrt() * self.mu)

    def predict(self, z, t, embeds):
        self.calls += 1
        a = self.scheduler.alphas_cumprod[int(t[0])]
        x0 = self.posterior_mean(z, a)
        eps = (z - a.sqrt() * x0) / (1 - a).sqrt()
        return eps if self.prediction_type == "epsilon" else a.sqrt() * eps - (1 - a).sqrt() * x0


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_diffpure_ddim_follows_the_probability_flow_of_a_gaussian_prior(prediction_type):
    m = GaussianPriorSurrogate(prediction_type)
    x = torch.rand(1, 3, 4, 5)
    out = pur.diffpure(x, t=0.2, sampler="ddim", seed=7, surrogate=m)
    a = m.scheduler.alphas_cumprod[199]
    eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(7))
    zt = a.sqrt() * (2 * x - 1) + (1 - a).sqrt() * eps
    a0 = m.scheduler.alphas_cumprod[0]  # the ODE keeps the standardised value down to step 0, then the last step
    z0 = a0.sqrt() * m.mu + (a0 * m.s ** 2 + 1 - a0).sqrt() * (zt - a.sqrt() * m.mu) / (a * m.s ** 2 + 1 - a).sqrt()
    expect = (m.posterior_mean(z0, a0) + 1) / 2  # jumps to the denoised estimate, as DDIM's final step does
    assert m.calls == 200
    assert (out - expect).abs().max() < 3e-3  # first-order steps: measured 1.5e-3; DDPM instead lands 0.56 away


def test_diffpure_keeps_the_input_at_small_t_and_loses_it_at_large_t():
    m = GaussianPriorSurrogate()
    dark, light = torch.full((1, 3, 4, 4), 0.2), torch.full((1, 3, 4, 4), 0.8)

    def kept(t, sampler):  # how much of the input difference survives (same seed: same noise for both)
        a, b = (pur.diffpure(v, t=t, sampler=sampler, seed=1, surrogate=m) for v in (dark, light))
        return float((b - a).mean() / 0.6)

    for sampler in ("ddpm", "ddim"):
        assert kept(0.01, sampler) > 0.9
        assert abs(kept(1.0, sampler)) < 0.1
    assert torch.equal(pur.diffpure(dark, t=0.0, surrogate=m), dark)


def test_diffpure_on_the_tiny_surrogate_identity_at_t0_seeded_and_sized(tiny):
    x = photo(20, 28)
    assert torch.equal(parse("diffpure:0")(x, surrogate=tiny), x)
    a = apply("diffpure:0.02,sampler=ddim,steps=3", x, seed=1, surrogate=tiny)
    assert a.shape == x.shape and not torch.equal(a, x)
    assert torch.equal(a, apply("diffpure:0.02,sampler=ddim,steps=3", x, seed=1, surrogate=tiny))
    assert not torch.equal(apply("diffpure:0.02,steps=3", x, seed=1, surrogate=tiny),
                           apply("diffpure:0.02,steps=3", x, seed=2, surrogate=tiny))
    assert pur.denoising_timesteps(100, 0) == list(range(99, -1, -1))
    assert pur.denoising_timesteps(100, 4) == [99, 66, 33, 0]


# ---------------------------------------------------------------- GrIDPure
@pytest.mark.parametrize("h, w, crop, stride", [(512, 512, 256, 128), (300, 520, 256, 128), (40, 100, 64, 16),
                                                (33, 47, 16, 16), (17, 9, 8, 3)])
def test_gridpure_grid_covers_every_pixel(h, w, crop, stride):
    seen = torch.zeros(h, w)
    for top, left, ch, cw in pur.grid_boxes(h, w, crop, stride):
        assert 0 <= top and top + ch <= h and 0 <= left and left + cw <= w
        seen[top:top + ch, left:left + cw] += 1
    assert seen.min() >= 1
    x = torch.rand(2, 3, h, w)
    one = pur.grid_purify(x, torch.ones_like, crop, stride, iterations=1, gamma=0.25)
    assert torch.equal(one, ((0.75 + 0.25 * x) * 255).round() / 255)  # every pixel averaged with weight 1
    same = pur.grid_purify(parse("none")(x), lambda t: t, crop, stride, iterations=2, gamma=0.1)
    assert (same - parse("none")(x)).abs().max() < 1e-6  # tiles put back where they came from


def test_gridpure_iterates_on_the_tiny_surrogate(tiny):
    x = photo(24, 32)
    spec = "gridpure:0.005,iterations=2,crop=16,stride=8"
    a = apply(spec, x, seed=0, surrogate=tiny)
    assert a.shape == x.shape and torch.equal(a, apply(spec, x, seed=0, surrogate=tiny))
    assert not torch.equal(a, apply("gridpure:0.005,iterations=1,crop=16,stride=8", x, seed=0, surrogate=tiny))


# ---------------------------------------------------------------- IMPRESS
def test_impress_lowers_its_consistency_loss(tiny):
    x = photo(32, 32)
    out = parse("impress:8,noise=0")(x, surrogate=tiny)
    before = pur.consistency_loss(tiny.vae, x * 2 - 1)
    after = pur.consistency_loss(tiny.vae, out * 2 - 1)
    assert after < 0.95 * before
    assert (out - x).abs().mean() < 0.1  # and stays near the photo
    assert torch.equal(out, parse("impress:8,noise=0")(x, surrogate=tiny))
    noisy = parse("impress:1,lr=0.000001,noise=0.2")(x, seed=3, surrogate=tiny)
    assert 0.05 < float((noisy - x).std()) < 0.15  # starts from the photo plus noise, as the reference


# ---------------------------------------------------------------- noisy upscaling
def test_noisy_upscale_returns_the_requested_size():
    x = photo(16, 24)
    spec = "noisy-upscale:0.05,upscaler=tiny,steps=2"
    out = parse(spec)(x, seed=1)
    assert out.shape == x.shape and torch.equal(out, parse(spec)(x, seed=1))
    assert parse(spec + ",output=x4")(x, seed=1).shape[-2:] == (64, 96)
    assert not parse(spec).needs_surrogate
    with pytest.raises(FileNotFoundError, match="not a diffusers upscaler folder"):
        parse("noisy-upscale:0.05,upscaler=/nonexistent/x4")(x)

