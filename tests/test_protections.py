"""Competing protections: each runs end to end on the tiny surrogate within the budget; sets are protected jointly
(a photo's result depends on its set-mates, ASPL's surrogate trains on the clean set_A) in the harness, the CLI and
the protocol runner; the departures from the released code that were fixed stay fixed."""
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gapdiff_core.diffusion import Surrogate
from gapdiff_core.losses import denoising_error
from gapdiff_core.protections import (CLOSED, METHODS, PROTECTIONS, ProtectionCancelled, canonical_name,
                                      get_protection, published_budget)
from gapdiff_core.protections import base as base_module

RES = 64  # working resolution of the tests (the tiny model's VAE downsamples by 8)


@pytest.fixture(scope="module")
def surrogate():
    torch.set_num_threads(1)  # the shared 2-core machine: oversubscription makes small ops 10x slower
    return Surrogate.tiny(0)


@pytest.fixture(scope="module")
def photo():
    g = torch.Generator().manual_seed(3)
    return torch.rand(1, 3, 72, 88, generator=g)  # not square, not the working size: resize path is used


@pytest.fixture(scope="module")
def class_images():
    g = torch.Generator().manual_seed(4)
    return torch.rand(2, 3, RES, RES, generator=g)


def _photos(n, seed, size=RES):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 0.6 + 0.2


def _method(name, surrogate, class_images, **kw):
    if "num_class_images" in METHODS[name].defaults:
        kw.setdefault("class_images", class_images)
    return get_protection(name, surrogate, schedule="tiny", resolution=RES, **kw)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_runs_and_respects_the_budget(surrogate, photo, class_images, name):
    ticks = []
    method = _method(name, surrogate, class_images, progress=lambda done, total, loss: ticks.append((done, total)))
    out = method.protect(photo)
    assert out.shape == photo.shape
    diff = (out * 255 - torch.round(photo * 255)).abs()
    assert torch.allclose(out * 255, torch.round(out * 255), atol=1e-3)  # 8-bit values
    assert diff.max() <= int(method.budget) + 1e-4
    assert diff.max() >= 1  # something was changed
    # the benchmark's extrapolation (schedule_units) and the progress total count the work the loop did
    assert {kind: units for kind, (units, _) in method.stats.items()} == method.schedule_units(photo.shape[0])
    total = method.total_steps(photo.shape[0])
    assert len(ticks) == total and ticks[-1] == (total, total)


def test_budget_override_in_grey_levels(surrogate, photo):
    """budget=2 is what the method spends: the change reaches 2 grey levels (PGD saturates the ball; 17 % of the
    pixels here), never more, and differs from the default budget's (7.65: changes up to 7)."""
    clean = torch.round(photo * 255)
    outs = {budget: get_protection("photoguard", surrogate, schedule="tiny", resolution=RES,
                                   **({"budget": budget} if budget else {})).protect(photo) for budget in (2, None)}
    two, default = ((outs[b] * 255 - clean).abs() for b in (2, None))
    assert two.max() == 2 and (two == 2).float().mean() > 0.1
    assert default.max() == 7 and default.mean() > 1.5 * two.mean()
    assert not torch.equal(outs[2], outs[None])


@pytest.mark.parametrize("name", sorted(METHODS) + ["gap-diff"])
def test_every_method_follows_the_one_budget_rule(surrogate, name):
    """The rule of common/budget.py for every method: 1-255 grey levels; 0.5 (which an 8-bit photo cannot show), 0,
    256 and NaN are refused with check_budget's message, naming the method where it is an iterative one."""
    from gapdiff_core.common.budget import BUDGET_RULE, BudgetError
    from gapdiff_core.model.generator import Generator

    make = (lambda budget: get_protection(name, generator=Generator(8), budget=budget, device="cpu")) \
        if name == "gap-diff" else (lambda budget: get_protection(name, surrogate, budget=budget))
    prefix = "" if name == "gap-diff" else f"{name}: "
    for bad in (0.5, 0, 256, float("nan")):
        with pytest.raises(BudgetError) as err:
            make(bad)
        assert str(err.value) == f"{prefix}budget must be {BUDGET_RULE}, not {bad!r}"
    for good in (1, 255):
        assert make(good).budget == good


def test_a_photos_result_depends_on_its_set_mates(surrogate):
    a, b, c = _photos(3, 11).split(1)
    ref = _photos(2, 12)
    # the main surrogate trains on both perturbed photos (lr raised so the tiny model moves within two steps)
    kw = dict(iterations=2, surrogate_steps=2, pgd_steps=1, step=3.0, lr=1e-3, num_class_images=0)
    with_b = _method("aspl", surrogate, None, **kw).protect(torch.cat([a, b]), reference=ref)
    with_c = _method("aspl", surrogate, None, **kw).protect(torch.cat([a, c]), reference=ref)
    again = _method("aspl", surrogate, None, **kw).protect(torch.cat([a, b]), reference=ref)
    assert torch.equal(with_b, again)  # deterministic: the difference below comes from the set-mate
    assert not torch.equal(with_b[0], with_c[0])  # ASPL fine-tunes on the whole (perturbed) set
    # a method that treats photos one by one (PhotoGuard's encoder attack) gives the same result either way
    pg = [get_protection("photoguard", surrogate, schedule="tiny", resolution=RES).protect(torch.cat([a, m]))
          for m in (b, c)]
    assert torch.equal(pg[0][0], pg[1][0])


def test_aspl_fine_tunes_its_surrogate_on_the_clean_set(surrogate, class_images, monkeypatch):
    seen = []
    real = METHODS["aspl"].finetune

    def spy(self, model, images, *args, **kw):
        seen.append((images.clone(), {id(p) for p in model.text_encoder.parameters() if p.requires_grad}))
        return real(self, model, images, *args, **kw)

    monkeypatch.setattr(METHODS["aspl"], "finetune", spy)
    x, ref = _photos(2, 21), _photos(3, 22, size=80)
    method = _method("aspl", surrogate, class_images, iterations=1, surrogate_steps=1, pgd_steps=1)
    te_before = [p.clone() for p in surrogate.text_encoder.parameters()]
    method.protect(x, reference=ref)
    (first, te_first), (second, _) = seen
    expected = base_module.resize(ref, (RES, RES)).clamp(0, 1)
    assert torch.allclose(first, expected)  # the clone is fine-tuned on set_A, at the working resolution
    assert (second - x).abs().max() <= 6.4 / 255 + 1e-6 and not torch.equal(second, x)  # main: perturbed set
    assert te_first  # the text encoder is trained too, as Anti-DreamBooth does...
    assert all(torch.equal(p, q) for p, q in zip(surrogate.text_encoder.parameters(), te_before))  # ...on a copy
    seen.clear()
    method.protect(x)  # no set_A: the photos themselves are the clean set
    assert torch.equal(seen[0][0], x)


def test_prior_preservation_and_batches_follow_the_released_code(surrogate, class_images, monkeypatch):
    calls = []
    real = base_module.instance_and_prior_loss

    def spy(model, x, emb, cls, cls_emb, prior_weight=1.0, **kw):
        calls.append((x.shape[0], None if cls is None else cls.shape[0], prior_weight))
        return real(model, x, emb, cls, cls_emb, prior_weight=prior_weight, **kw)

    monkeypatch.setattr(base_module, "instance_and_prior_loss", spy)
    x = _photos(3, 31)
    _method("fsmg", surrogate, class_images, finetune_steps=2, pgd_steps=1).protect(x)
    assert calls == [(2, 2, 1.0)] * 2  # batch 2 instance + 2 class images, prior weight 1
    calls.clear()
    _method("aspl", surrogate, class_images, iterations=1, surrogate_steps=1, pgd_steps=1).protect(x)
    assert calls == [(1, 1, 1.0)] * 2
    calls.clear()
    _method("ace", surrogate, class_images, epochs=1, pgd_steps=1, lora_steps=1).protect(x)
    assert calls == [(1, 1, 0.1)]
    with pytest.raises(ValueError, match="no class images"):
        get_protection("caat", surrogate, class_images=class_images)


def test_class_images_are_generated_once_and_cached(surrogate, tmp_path):
    method = get_protection("aspl", surrogate, schedule="tiny", resolution=RES, class_cache_dir=tmp_path,
                            iterations=1, surrogate_steps=1, pgd_steps=1)
    method.protect(_photos(1, 41))
    cached = sorted(tmp_path.rglob("*.png"))
    assert len(cached) == METHODS["aspl"].tiny["num_class_images"]
    assert method.class_images.shape == (len(cached), 3, RES, RES)


def test_simac_deletes_the_reference_window_and_starts_aspl_from_clean(surrogate, class_images, monkeypatch):
    method = _method("simac", surrogate, class_images, select_rounds=1, probes=3, keep=100)
    probes = []
    real = method.denoising_grad

    def grad_growing_with_t(model, x, t=None, transform=None, embeds=None):
        grad, loss = real(model, x, t, transform, embeds)
        if t is not None and len(probes) < 3:
            probes.append(int(t))
            return torch.ones_like(grad) * (int(t) + 1), loss  # the smallest probed t is the weakest
        return grad, loss

    monkeypatch.setattr(method, "denoising_grad", grad_growing_with_t)
    x0 = _photos(1, 51)
    torch.manual_seed(0)
    (kept,) = method.select_timesteps(x0)
    del_t = min(max(min(probes), 20), 980)
    assert set(range(1000)) - set(kept.tolist()) == set(range(del_t - 20, del_t + 20))
    starts = []
    real_attack = METHODS["simac"].attack
    monkeypatch.setattr(METHODS["simac"], "attack",
                        lambda self, model, x_adv, x0_: starts.append(x_adv.clone()) or real_attack(self, model, x_adv,
                                                                                                   x0_))
    method.perturb(x0)
    assert torch.equal(starts[0], x0)  # the selection's perturbation is discarded


def test_caat_flips_once_at_load(surrogate, monkeypatch):
    from gapdiff_core.protections import caat

    inputs = []
    real = caat.denoising_error
    monkeypatch.setattr(caat, "denoising_error", lambda model, x, emb: inputs.append(x.detach().clone()) or
                        real(model, x, emb))
    g = torch.Generator().manual_seed(61)
    x0 = torch.rand(4, 3, RES, RES, generator=g)  # random pixels: a flipped photo is far from the photo
    torch.manual_seed(0)
    get_protection("caat", surrogate, resolution=RES, steps=6).perturb(x0)
    eps = 6.4 / 255 + 1e-6
    for x in inputs:  # every step sees the same orientation of each photo as the first
        assert (x - inputs[0]).abs().amax() <= 2 * eps


def test_metacloak_blur_sigma_is_torchvision_default_range(monkeypatch):
    from gapdiff_core.protections import metacloak

    sigmas = []
    monkeypatch.setattr(metacloak, "gaussian_blur", lambda x, sigma, kernel_size: sigmas.append((sigma, kernel_size))
                        or x)
    torch.manual_seed(0)
    for _ in range(300):
        metacloak.random_blur_flip(torch.zeros(1, 3, 8, 8))
    values = [s for s, _ in sigmas]
    assert {k for _, k in sigmas} == {7} and 0.1 <= min(values) < 0.3 and 1.8 < max(values) <= 2.0


def test_mist_textural_weight_in_mean_units(surrogate):
    mist = get_protection("mist", surrogate)
    assert mist.semantic_weight(torch.zeros(1, 4, 64, 64)) == pytest.approx(1e4 / 16384)  # ~0.61 at 512 px
    assert mist.semantic_weight(torch.zeros(2, 4, 8, 8)) == pytest.approx(1e4 / 256)  # per photo, any resolution


def test_photoguard_pulls_the_latent_towards_zero(surrogate):
    x = _photos(2, 71)
    y = get_protection("photoguard", surrogate, resolution=RES, iterations=8).protect(x)
    with torch.no_grad():
        norm = [surrogate.encode_images(v, sample=False).flatten(1).norm(dim=1) for v in (x, y)]
    assert (norm[1] < norm[0]).all()


def _loss(surrogate, x, seed=7):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        torch.manual_seed(seed)
        xs = x.repeat(16, 1, 1, 1)
        t = torch.randint(0, 1000, (xs.shape[0],), generator=g)
        return denoising_error(surrogate, xs, surrogate.encode_prompt("a photo of sks person"), timesteps=t).mean()


def test_aspl_increases_the_denoising_loss(surrogate):
    g = torch.Generator().manual_seed(5)
    x = torch.rand(2, 3, RES, RES, generator=g) * 0.6 + 0.2
    method = get_protection("aspl", surrogate, resolution=RES, iterations=1, surrogate_steps=1, pgd_steps=6,
                            budget=8, step=1.5, num_class_images=0)  # no prior: its draws would add noise
    y = method.protect(x)
    signs = torch.randint(0, 2, x.shape, generator=g) * 2 - 1
    noisy = (torch.round(x * 255) + 8 * signs).clamp(0, 255) / 255  # a random perturbation of the same size
    clean = _loss(surrogate, x).item()
    adversarial, random = _loss(surrogate, y).item() - clean, _loss(surrogate, noisy).item() - clean
    # the random tiny model barely looks at its input: the effect is small, but far above a random perturbation's
    assert adversarial > 0 and adversarial > 5 * abs(random), (clean, adversarial, random)


def test_progress_and_cancellation(surrogate, photo):
    seen = []
    stop = threading.Event()

    def progress(step, total, loss):
        seen.append((step, total))
        if step == 2:
            stop.set()

    method = get_protection("caat", surrogate, schedule="tiny", resolution=RES, progress=progress, should_stop=stop)
    with pytest.raises(ProtectionCancelled):
        method.protect(photo)
    assert seen[:2] == [(1, 3), (2, 3)]


def test_registry_errors_aliases_and_closed_methods(surrogate):
    with pytest.raises(ValueError, match="closed source"):
        get_protection("glaze")
    with pytest.raises(ValueError, match="unknown protection"):
        get_protection("nope")
    with pytest.raises(ValueError, match="gapdiff evaluate"):
        get_protection("none")  # the protocol's baseline is no protection of photos
    assert "glaze" in CLOSED
    with pytest.raises(ValueError, match="unknown setting"):
        METHODS["aspl"](None, not_a_setting=1)
    assert isinstance(get_protection("Mist-v2", surrogate, schedule="tiny"), METHODS["ace"])
    assert isinstance(get_protection("anti-dreambooth", surrogate), METHODS["aspl"])
    assert [canonical_name(n) for n in ("generator", "GapDiff", "gap-diff")] == ["gap-diff"] * 3
    assert set(METHODS) | {"none", "random-noise", "gap-diff"} == set(PROTECTIONS)  # one registry, one entry each


def test_a_method_spends_its_published_budget_unless_overridden(surrogate, photo):
    """Without a budget a method protects within its authors' budget and uses all of it (PhotoGuard: 7.65 grey
    levels, 7 after 8-bit rounding); its other settings keep their published values under an override."""
    method = get_protection("photoguard", surrogate, schedule="tiny", resolution=RES)
    diff = (method.protect(photo) * 255 - torch.round(photo * 255)).abs()
    assert diff.max() == pytest.approx(7, abs=1e-3)
    tighter = get_protection("photoguard", surrogate, schedule="tiny", resolution=RES, budget=3)
    assert tighter.settings == {**method.settings, "budget": 3}


def test_published_budgets_are_the_authors_and_unknown_where_none_is():
    published = {name: published_budget(name)[0] for name in PROTECTIONS}
    assert published == {"none": None, "random-noise": None, "gap-diff": 8.0, "aspl": 6.4, "fsmg": 6.4,
                         "simac": 8.0, "metacloak": 11.0, "mist": 16.0, "ace": 4.0, "caat": 6.4, "photoguard": 7.65}
    assert published_budget("metacloak")[1].startswith("MetaCloak script/methods_config.sh")
    assert published_budget("none") == (None, "unknown") and published_budget("mist-v2")[0] == 4.0


def test_random_noise_control_moves_every_pixel_by_the_whole_budget_at_random():
    from types import SimpleNamespace

    photos = [_photos(1, 61, size=48), _photos(1, 62, size=40)]  # values in [0.2, 0.8]: no clipping at 0 or 255
    protect = PROTECTIONS["random-noise"].factory(None, 6.4, SimpleNamespace(seed=3), None, None)
    out = protect(photos, [])
    steps = [(y * 255 - torch.round(x * 255)).round() for x, y in zip(photos, out)]
    assert all(set(s.unique().tolist()) == {-6.0, 6.0} for s in steps)  # ±floor(budget) on every pixel
    assert 0.4 < float((steps[0] > 0).float().mean()) < 0.6 and not torch.equal(steps[0][..., :40, :40], steps[1])
    assert all(torch.equal(a, b) for a, b in zip(out, protect(photos, [])))  # seeded
    with pytest.raises(ValueError, match="no argument"):
        PROTECTIONS["random-noise"].factory("x", 8, SimpleNamespace(seed=0), None, None)


def test_released_numerics_fine_tune_pure_bf16_weights_without_a_clip(surrogate, class_images, monkeypatch):
    """ASPL's released code: bf16 weights (Adam steps at lr 5e-7 round away) and a clip given an exhausted
    iterator (no clip); corrected: fp32 weights that move, clipped every step."""
    clips = []
    real_clip = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda params, *a, **k: clips.append(1) or real_clip(
        params, *a, **k))
    moved = {}
    for numerics in ("corrected", "released"):
        method = _method("aspl", surrogate, class_images, reference_numerics=numerics)
        model = method.clone()
        params = base_module.trainable_parameters(model)
        assert {p.dtype for p in params} == {torch.bfloat16 if numerics == "released" else torch.float32}
        before = [p.detach().clone() for p in params]
        clips.clear()
        method.finetune(model, _photos(2, 51), 3, 5e-7)
        moved[numerics] = sum(int((p != b).sum()) for p, b in zip(params, before)) / sum(b.numel() for b in before)
        assert len(clips) == (3 if numerics == "corrected" else 0)
    assert moved["corrected"] > 0.2 and moved["released"] < 0.05 * moved["corrected"], moved  # measured 0.39, 0.003
    assert {n for n, c in METHODS.items() if c.released_numerics} == {"aspl", "simac", "metacloak"}
    with pytest.raises(ValueError, match="reference_numerics"):
        _method("aspl", surrogate, class_images, reference_numerics="bf16")
    with pytest.raises(ValueError, match="unknown setting"):
        _method("caat", surrogate, class_images, reference_numerics="released")
    # Without AVX-512 torch's fused bf16 attention fails: the bf16 copies switch to the unfused attention and train
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    method = _method("simac", surrogate, class_images, reference_numerics="released")
    model = method.clone()
    assert {type(p).__name__ for p in model.unet.attn_processors.values()} == {"AttnProcessor"}
    method.finetune(model, _photos(2, 52), 1, 5e-7)
    assert {type(p).__name__ for p in surrogate.unet.attn_processors.values()} != {"AttnProcessor"}  # shared model


def test_class_images_from_a_folder_are_its_first_images_by_name(surrogate, tmp_path):
    for i in range(3):
        _save(tmp_path / "cls" / f"{i:02d}.png", 70 + i, size=(RES, RES))
    method = get_protection("aspl", surrogate, schedule="tiny", resolution=RES, class_images=str(tmp_path / "cls"))
    got = method.prior_images()
    assert got.shape == (2, 3, RES, RES)  # the tiny schedule's 2 class images: 00.png and 01.png
    first = torch.from_numpy(np.array(Image.open(tmp_path / "cls" / "00.png"))).permute(2, 0, 1) / 255
    assert torch.allclose(got[0], first.float(), atol=1e-6)
    short = get_protection("aspl", surrogate, resolution=RES, class_images=str(tmp_path / "cls"))
    with pytest.raises(ValueError, match="holds 3 image"):
        short.prior_images()  # the default schedule wants 200


# ---------------------------------------------------------------- the entry points protect sets
def _save(path, seed, size=(48, 40)):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)


def test_cli_protects_a_folder_as_one_set_unless_per_photo(tmp_path, monkeypatch, surrogate, capsys):
    from gapdiff_core import protections
    from gapdiff_core.cli import main

    for i in range(2):
        _save(tmp_path / "in" / "alice" / f"{i}.png", i)
    _save(tmp_path / "in" / "bob" / "0.png", 9)
    for i in range(2):
        _save(tmp_path / "set_a" / f"{i}.png", 20 + i)
    sets = []
    real, tiny = protections.get_protection, surrogate

    def tiny_at_64(name, surrogate=None, **kw):  # the test's tiny model (loaded once) at the tests' resolution
        method = real(name, tiny, resolution=RES, **kw)
        protect = method.protect
        method.protect = lambda photos, reference=None: sets.append((len(photos), None if reference is None else
                                                                     len(reference))) or protect(photos, reference)
        return method

    monkeypatch.setattr(protections, "get_protection", tiny_at_64)
    args = ["protect", str(tmp_path / "in"), "--recursive", "--method", "mist", "--schedule", "tiny"]
    assert main(args + ["-o", str(tmp_path / "sets"), "--clean-set", str(tmp_path / "set_a")]) == 0
    assert sorted(sets) == [(1, 2), (2, 2)]  # alice's two photos together, bob's alone; set_A handed over
    sets.clear()
    assert main(args + ["-o", str(tmp_path / "single"), "--per-photo"]) == 0
    assert sets == [(1, None)] * 3
    for out in ("sets", "single"):
        assert len(list((tmp_path / out).rglob("*_mist-demo-protected.png"))) == 3
    assert main(args + ["-o", str(tmp_path / "x"), "--clean-set", str(tmp_path / "nothing")]) == 2
    # --class-images DIR: the folder's first num_class_images (the tiny schedule's 2), checked before any work
    _save(tmp_path / "cls" / "0.png", 30)
    aspl = ["protect", str(tmp_path / "in" / "bob"), "--method", "aspl", "--schedule", "tiny", "--class-images",
            str(tmp_path / "cls")]
    assert main(aspl + ["-o", str(tmp_path / "c1")]) == 2 and sets == [(1, None)] * 3  # 1 image: refused
    assert "holds 1 image(s); 2 are needed" in capsys.readouterr().err
    _save(tmp_path / "cls" / "1.png", 31)
    assert main(aspl + ["-o", str(tmp_path / "c2")]) == 0 and len(sets) == 4


def test_protocol_runner_protects_each_identity_set_with_its_set_a(tmp_path):
    from gapdiff_core.evaluation import (PROTECTIONS, ProtocolConfig, ProtocolRunner, find_identities,
                                         register_protection, resolve_method)

    root = tmp_path / "data"
    for part, n in (("set_A", 3), ("set_B", 2), ("set_C", 1)):
        for i in range(n):
            _save(root / part / f"{i}.png", hash((part, i)) % 1000)
    calls = []

    def spy(arg, budget, config, model, cache_dir):
        return lambda photos, clean_set: calls.append((len(photos), len(clean_set))) or photos

    register_protection("spy-set", spy)
    try:
        (ident,) = find_identities(root)
        assert len(ident.clean_set) == 3
        runner = ProtocolRunner(root, tmp_path / "out", ProtocolConfig(methods=["spy-set"]), progress=False)
        rec, _ = runner.stage_protect(ident, resolve_method("spy-set", 8.0))
        assert calls == [(2, 3)]  # the whole set_B at once, with its set_A
        assert [Path(p).name for p in rec["clean_set"]] == ["0.png", "1.png", "2.png"]  # recorded
        _save(root / "set_A" / "0.png", 999)  # a changed set_A is a different protection
        (ident,) = find_identities(root)
        assert runner.stage_protect(ident, resolve_method("spy-set", 8.0))[0]["key"] != rec["key"]
    finally:
        PROTECTIONS.pop("spy-set")


def test_ace_lora_adapts_attention_and_the_geglu_input_as_lora_diffusion_does(surrogate, class_images, monkeypatch):
    import copy

    from gapdiff_core.protections import mist as mist_module

    unet = copy.deepcopy(surrogate.unet)
    params = mist_module.add_lora(unet, mist_module.ACE_LORA_TARGETS, 4)
    adapted = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n, _ in unet.named_parameters() if ".lora_A." in n}
    assert adapted == {"to_q", "to_k", "to_v", "0", "proj"} and params  # "0": to_out.0, "proj": ff.net.0.proj
    assert any(".ff.net.0.proj.lora_A." in n for n, _ in unet.named_parameters())
    seen, real = [], mist_module.add_lora
    monkeypatch.setattr(mist_module, "add_lora", lambda m, targets, rank: seen.append(targets) or real(m, targets, rank))
    _method("ace", surrogate, class_images, epochs=1, pgd_steps=1, lora_steps=1).protect(_photos(1, 81))
    assert seen == [mist_module.ACE_LORA_TARGETS]
