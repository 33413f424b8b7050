"""Protection computes the function the authors ran at inference (per-image statistics, dropout off) and respects
the budget after 8-bit rounding, in every mode, for any size."""
import copy
import math

import numpy as np
import pytest
import torch

from gapdiff_core import Generator, Protector
from gapdiff_core.io import to_uint8
from gapdiff_core.model.checkpoint import GeneratorInfo, save_generator
from gapdiff_core.model.generator import InferenceGenerator
from gapdiff_core.metrics.fidelity import change_stats
from gapdiff_core.model.protector import apply_budget, default_precision, padded_size
from gapdiff_core.common.sizes import short_side_size


@pytest.fixture(scope="module")
def generator():
    """A narrow generator with weights scaled so its tanh output saturates: the budget clip is exercised."""
    torch.manual_seed(0)
    g = Generator(ngf=8)
    with torch.no_grad():
        g.dconv8.weight.mul_(40)
    return g.eval()


@pytest.fixture(scope="module")
def trained_stats_generator():
    """Running statistics as training leaves them (a blend of the layers that share each BatchNorm), from several
    training-mode passes, not the defaults."""
    torch.manual_seed(1)
    g = Generator(ngf=16)
    g.train()
    with torch.no_grad():
        for _ in range(4):
            g(torch.rand(2, 3, 512, 512) * 2 - 1)
    return g.eval()


def official_batch1(g, x01):
    """The authors' module at batch 1 in train mode with dropout off: the function training optimises."""
    m = copy.deepcopy(g).train()
    m.dropout.p = 0.0
    with torch.no_grad():
        return torch.cat([m(x01[i:i + 1] * 2 - 1) for i in range(len(x01))])


def photo(h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (1, 3, h, w), generator=g).float() / 255


def grey_change(a, b):
    return ((a - b) * 255).round().abs()


@pytest.mark.parametrize("mode", ["working", "native"])
@pytest.mark.parametrize("size", [(512, 512), (300, 700), (1100, 900), (256, 1400)])
@pytest.mark.parametrize("budget", [8, 4, 7.5])
def test_budget_holds_on_every_pixel_after_rounding(generator, mode, size, budget):
    p = Protector(generator, budget=budget, mode=mode, precision="fp32", tile_size=512, tile_overlap=128)
    x = photo(*size)
    y = p(x)
    assert y.shape == x.shape
    assert torch.equal(y, torch.round(y * 255) / 255)  # exactly 8-bit values
    change = grey_change(y, x)
    assert change.max() <= int(budget)
    assert change.mean() > 0.5  # a real perturbation, not a no-op


def test_saturated_generator_reaches_the_budget(generator):
    y = Protector(generator, budget=8, precision="fp32")(photo(512, 512))
    assert grey_change(y, photo(512, 512)).max() == 8


@pytest.mark.parametrize("options", [dict(mode="working", precision="fp32"), dict(mode="native", precision="fp32"),
                                     dict(mode="working", precision="bf16", budget=5.5),
                                     dict(mode="working", precision="fp32", official_mode=True, seed=2)])
def test_protect_uint8_equals_the_float_path_bit_for_bit(generator, options):
    p = Protector(generator, tile_size=512, tile_overlap=128, batch_size=2, **options)
    x = photo(600, 900, seed=3)
    x[..., :40, :] = 0  # black and white areas: the clamp at 0 and 255 is exercised
    x[..., -40:, :] = 1
    x = torch.cat([x, photo(600, 900, seed=4), photo(600, 900, seed=5)])
    rgb = np.stack([to_uint8(im) for im in x])
    out = p.protect_uint8(rgb)
    assert out.dtype == np.uint8 and out.shape == rgb.shape
    for i in range(len(x)):
        np.testing.assert_array_equal(out[i], to_uint8(p(x[i:i + 1])[0]))
    np.testing.assert_array_equal(p.protect_uint8(rgb[1]), out[1])  # one H x W x 3 photo
    assert np.abs(out.astype(int) - rgb).max() == math.floor(options.get("budget", 8))
    with pytest.raises(ValueError, match="uint8"):
        p.protect_uint8(rgb.astype(np.float32))


def test_apply_budget_rounds_instead_of_truncating():
    x = torch.full((1, 1, 1, 1), 100 / 255)
    assert apply_budget(x, torch.full_like(x, 2.6 / 255), 8).mul(255).round().item() == 103
    assert apply_budget(x, torch.full_like(x, 20 / 255), 8).mul(255).round().item() == 108
    assert apply_budget(torch.ones_like(x), torch.full_like(x, 0.5), 8).max().item() == 1.0


def test_deterministic_by_default_and_official_mode_is_seeded(generator):
    x = photo(512, 512)
    p = Protector(generator, precision="fp32")
    assert torch.equal(p(x), p(x))
    off = Protector(generator, precision="fp32", official_mode=True, seed=3)
    a, b = off(x), off(x)
    assert torch.equal(a, b)
    assert not torch.equal(a, p(x))  # batch statistics + dropout give another function
    assert not torch.equal(a, Protector(generator, precision="fp32", official_mode=True, seed=4)(x))
    assert not generator.training  # the caller's module is left in eval mode


@pytest.mark.parametrize("options", [{"precision": "bf16"}, {"precision": "fp16"}, {"official_mode": True}])
def test_the_callers_generator_is_left_as_it_was(generator, options):
    before = {k: v.clone() for k, v in generator.state_dict().items()}
    Protector(generator, **options)(photo(512, 512))
    after = generator.state_dict()
    assert all(after[k].dtype == v.dtype and torch.equal(after[k], v) for k, v in before.items())


def test_batches_and_lists_of_sizes(generator):
    p = Protector(generator, precision="fp32", batch_size=2)
    batch = torch.cat([photo(512, 512, s) for s in range(3)])
    out = p(batch)
    single = torch.cat([p(batch[i:i + 1]) for i in range(3)])
    assert torch.allclose(out, single, atol=1 / 255)
    outs = p([photo(300, 400)[0], photo(600, 520)])
    assert [tuple(o.shape) for o in outs] == [(1, 3, 300, 400), (1, 3, 600, 520)]


def test_working_mode_geometry():
    assert short_side_size(3024, 4032, 512) == (512, 683)
    assert short_side_size(300, 700, 512) == (512, 1195)
    assert short_side_size(700, 300, 512) == (1195, 512)
    assert padded_size(683) == 768 and padded_size(300) == 512 and padded_size(512) == 512


def test_native_tiles_blend_to_each_tile_where_it_is_alone(generator):
    x = photo(768, 768)
    p = Protector(generator, mode="native", precision="fp32", tile_size=512, tile_overlap=256)
    tiled = p.perturbation(x)
    with torch.inference_mode():
        first = p._run(x[..., :512, :512]).float()
        last = p._run(x[..., 256:, 256:]).float()
    assert torch.allclose(tiled[..., :256, :256], first[..., :256, :256], atol=1e-5)
    assert torch.allclose(tiled[..., 512:, 512:], last[..., 256:, 256:], atol=1e-5)
    with torch.inference_mode():  # the centre is covered by all four tiles: a blend lies between them
        centres = torch.stack([p._run(x[..., y:y + 512, z:z + 512]).float()[..., 256 - y:512 - y, 256 - z:512 - z]
                               for y in (0, 256) for z in (0, 256)])
    middle = tiled[..., 256:512, 256:512]
    lo, hi = centres.min(0).values - 1e-5, centres.max(0).values + 1e-5
    assert ((middle >= lo) & (middle <= hi)).all()


def test_auto_precision_stays_within_one_grey_level_of_fp32():
    """`auto` keeps a reduced precision only where it is close to fp32 for this generator: eval mode's folded
    function is (bf16 within 0.1 grey levels), an untrained generator's per-image statistics are not."""
    torch.manual_seed(0)
    g = Generator(ngf=64).eval()
    x = photo(512, 512)
    for norm in ("image", "running"):
        ref = Protector(g, precision="fp32", norm=norm)(x)
        auto = Protector(g, norm=norm)
        assert grey_change(auto(x), ref).max() <= 1
        assert auto.precision_note.startswith("auto")
        if default_precision(torch.device("cpu")) == "bf16" and norm == "running":
            assert auto.precision == "bf16"  # the fast path is kept where it is faithful


def test_stats_are_exact_on_a_12_megapixel_photo():
    torch.manual_seed(4)
    x = torch.rand(1, 3, 3024, 4032)
    step = torch.randint(-8, 9, x.shape).float()
    step[0, 1, 5, 7] = -11
    y = ((x * 255).round() + step).clamp(0, 255) / 255
    diff = (y * 255).round().double() - (x * 255).round().double()
    s = change_stats(to_uint8(x[0]), to_uint8(y[0]))
    assert s.max_change == 11
    assert s.psnr == pytest.approx(10 * math.log10(255 ** 2 / diff.pow(2).mean().item()), abs=1e-4)


def test_stats_and_bad_arguments(generator):
    x = photo(512, 512)
    s = change_stats(to_uint8(x[0]), to_uint8(Protector(generator, precision="fp32")(x)[0]))
    assert 0 < s.max_change <= 8 and 30 < s.psnr < 60
    assert change_stats(to_uint8(x[0]), to_uint8(x[0])).psnr == float("inf")
    with pytest.raises(ValueError, match="uint8"):
        change_stats(x[0].numpy(), x[0].numpy())
    with pytest.raises(ValueError, match="mode"):
        Protector(generator, mode="fast")
    with pytest.raises(ValueError, match="budget"):
        Protector(generator, budget=0)
    with pytest.raises(ValueError, match="below 1 no pixel of an 8-bit photo"):
        Protector(generator, budget=0.5)
    with pytest.raises(ValueError, match="4000x16 photo is 128000x512 at the working resolution"):
        Protector(generator, precision="fp32")(photo(16, 4000))  # refused before it costs memory
    with pytest.raises(ValueError, match="precision"):
        Protector(generator, precision="int8")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        Protector(generator)(x * 255)


def test_default_equals_the_official_module_at_batch_1_without_dropout(trained_stats_generator):
    g = trained_stats_generator
    x = torch.cat([photo(512, 512, seed=s) for s in range(2)])
    ref = official_batch1(g, x)
    p = Protector(g, precision="fp32", budget=8)
    assert (p.perturbation(x) - ref).abs().max() * 8 <= 0.5  # within 0.5 grey levels at budget 8
    expected = apply_budget(x, ref * 8 / 255, 8)
    assert grey_change(p(x), expected).max() <= 1  # 8-bit rounding may flip a level, no more
    running = Protector(g, precision="fp32", norm="running").perturbation(x)
    assert (running - ref).abs().max() * 8 > 2  # eval mode is another function: the test can tell them apart
    assert torch.equal(running, Protector(g, precision="fp32", norm="running").perturbation(x))


def test_running_statistics_are_never_updated(trained_stats_generator):
    g = trained_stats_generator
    before = {k: v.clone() for k, v in g.state_dict().items()}
    for options in ({}, {"official_mode": True}, {"norm": "running"}):
        Protector(g, precision="fp32", **options)(photo(512, 512))
    assert all(torch.equal(g.state_dict()[k], v) for k, v in before.items())


def test_a_photos_result_does_not_depend_on_its_batch(trained_stats_generator):
    p = Protector(trained_stats_generator, precision="fp32", batch_size=3)
    x = torch.cat([photo(512, 683, seed=s) for s in range(3)])
    x[2] = x[2] * 0.3  # a dark photo: batch statistics would pull the others
    together = p.perturbation(x)
    alone = torch.cat([p.perturbation(x[i:i + 1]) for i in range(3)])
    assert (together - alone).abs().max() * 8 < 0.01


def test_statistics_cover_the_photo_not_the_padding(trained_stats_generator):
    m = InferenceGenerator(trained_stats_generator)
    x = photo(512, 512) * 2 - 1
    padded = torch.cat([x, torch.full((1, 3, 512, 256), -1.0)], dim=-1)  # black padding, as far from the photo as
    own, masked, unmasked = [], [], []                                   # any padding could be
    with torch.no_grad():
        m(x, record=own)
        m(padded, valid=(512, 512), record=masked)
        m(padded, record=unmasked)
    # The first normalised layer: masked statistics are the photo's (the conv at the photo's edge sees one padded
    # column, no more); unmasked ones are pulled by the padding.
    mean_o, var_o = own[0]
    assert torch.allclose(masked[0][0], mean_o, atol=0.02 * var_o.sqrt().max())
    assert (unmasked[0][0] - mean_o).abs().max() > 10 * (masked[0][0] - mean_o).abs().max()


def test_tiles_are_normalised_as_photos_and_agree_with_the_untiled_result(trained_stats_generator):
    """A tile sees only part of the photo (the U-Net's receptive field spans it all), so tiled and untiled results
    cannot be equal; each tile normalised with its own statistics, they agree closely and show no seam."""
    g = trained_stats_generator
    x = torch.nn.functional.interpolate(photo(96, 128, seed=7), (768, 1024), mode="bilinear")  # smooth content
    untiled = Protector(g, mode="native", precision="fp32").perturbation(x)
    tiled = Protector(g, mode="native", precision="fp32", tile_size=512, tile_overlap=256).perturbation(x)
    assert torch.corrcoef(torch.stack([tiled.flatten(), untiled.flatten()]))[0, 1] > 0.85
    # no seam: across the tile grid lines the perturbation changes no more than between other neighbours
    step = (tiled[..., :, 1:] - tiled[..., :, :-1]).abs().mean(dim=(0, 1, 2))
    assert step[[255, 511, 767]].max() < 3 * step.median()


def test_with_options_reuses_the_model_and_equals_a_fresh_protector(generator):
    """Another budget or mode shares the loaded (packed) model, and protects exactly as a Protector built for it."""
    base = Protector(generator, budget=8, device="cpu", precision="fp32")
    x = torch.rand(1, 3, 96, 80, generator=torch.Generator().manual_seed(3))
    for budget, mode in ((4, "working"), (8, "native"), (2.5, "native")):
        other = base.with_options(budget=budget, mode=mode)
        assert other.model is base.model and (other.budget, other.mode) == (budget, mode)
        fresh = Protector(generator, budget=budget, mode=mode, device="cpu", precision="fp32")
        assert torch.equal(other(x), fresh(x))
        assert grey_change(x, other(x)).max() <= budget
    assert (base.budget, base.mode) == (8, "working") and base.with_options() is base
    for bad in (0.5, 256, float("nan"), "eight"):
        with pytest.raises(ValueError, match="budget"):
            base.with_options(budget=bad)
    with pytest.raises(ValueError, match="mode"):
        base.with_options(mode="tiled")


def test_auto_probe_shares_the_generators_weights_and_reports_its_time(generator):
    """`auto`'s fp32 side is an unpacked model on the generator's own weights (no second copy of them), computing
    what the fp32 Protector computes; the probe's time is reported."""
    fp32 = Protector(generator, precision="fp32")
    reference = fp32._fp32_model(generator)
    assert reference.weights[0].data_ptr() == generator.conv1.weight.data_ptr()
    x = photo(512, 512)
    with torch.inference_mode():
        assert (reference(x * 2 - 1) - fp32.perturbation(x)).abs().max() * 8 < 0.01
    auto = Protector(generator)
    assert auto.probe_seconds > 0 and f"(probe {auto.probe_seconds:.2f} s)" in auto.precision_note


def test_native_tiles_go_through_the_generator_in_batches_with_the_same_result(generator):
    x = torch.cat([photo(700, 900, seed=1), photo(700, 900, seed=2)])
    options = dict(mode="native", precision="fp32", tile_size=512, tile_overlap=128)
    one_by_one = Protector(generator, batch_size=1, **options).perturbation(x)
    batched = Protector(generator, batch_size=8, **options).perturbation(x)  # 4 tiles of both photos at once
    assert (batched - one_by_one).abs().max() * 8 < 1e-3


def test_protection_does_not_depend_on_the_thread_count(tmp_path):
    """The per-image statistics are reduced the same way whatever the number of threads: a served photo (another
    process, other threads) equals the CLI's. PyTorch's batch-norm CPU kernel did not (13 grey levels apart in
    native mode between 1 and 2 threads)."""
    torch.manual_seed(0)
    path = tmp_path / "g.safetensors"
    save_generator(Generator(ngf=16).eval(), path, GeneratorInfo(ngf=16, budget=8, demo=True, provenance="test"))
    rgb = np.random.default_rng(2).integers(0, 256, (200, 296, 3), dtype=np.uint8)
    threads = torch.get_num_threads()
    try:
        outs = []
        for n in (1, 2):
            torch.set_num_threads(n)
            outs.append(Protector(str(path), precision="fp32", budget=8, mode="native").protect_uint8(rgb))
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_array_equal(outs[0], outs[1])


def test_auto_keeps_bf16_for_a_well_conditioned_generator():
    """`auto` keeps bf16 where it is within half a grey level of fp32: here a generator with the pix2pix
    initialisation (weights N(0, 0.02), biases 0); PyTorch's default initialisation is ill-conditioned and falls
    back to fp32."""
    from gapdiff_core.model.protector import _probe_photo

    torch.manual_seed(0)
    g = Generator(ngf=16)
    for m in g.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            torch.nn.init.normal_(m.weight, 0, 0.02)
            if m.bias is not None:
                torch.nn.init.zeros_(m.bias)
    g.eval()
    x = _probe_photo()
    deviation = (Protector(g, precision="bf16").perturbation(x)
                 - Protector(g, precision="fp32").perturbation(x)).abs().max().item() * 8
    assert deviation <= 0.5  # measured 0.30
    if default_precision(torch.device("cpu")) == "bf16":
        auto = Protector(g)
        assert auto.precision == "bf16" and "kept" in auto.precision_note
