"""DreamBooth / LoRA test attack and generation on the tiny model (32 px images, a few steps)."""
from __future__ import annotations

import argparse
import copy
import threading

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("peft")

from gapdiff_core.io.atomic import _HOST, TEMP_PREFIX  # noqa: E402
from gapdiff_core.attack import (PAPER_PROMPTS, DreamBoothAttack, GenerationConfig, generate, instance_loss,  # noqa: E402
                                 load_kohya_lora, preset)
from gapdiff_core.diffusion import Surrogate  # noqa: E402

RES = 32
STEPS = 4


def _photos() -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    base = torch.rand(1, 3, 6, 6, generator=g)
    big = torch.nn.functional.interpolate(base, size=(48, 40), mode="bilinear", align_corners=False)
    return (big + 0.05 * torch.rand(2, 3, 48, 40, generator=g)).clamp(0, 1)


def _config(mode: str, **kw):
    base = dict(resolution=RES, max_train_steps=STEPS, checkpointing_steps=2, num_class_images=2, class_steps=2,
                class_batch_size=2)
    if mode == "lora":
        base["learning_rate"] = 2e-2
    else:
        base["learning_rate"] = 1e-3
    return preset(f"tiny-{mode}", **{**base, **kw})


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: one thread avoids oversubscription on the shared 2-core machine (over 10x faster here)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def base():
    return Surrogate.tiny(0)


@pytest.fixture(scope="module")
def base_loss(base):
    return instance_loss(base, _photos(), resolution=RES)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("class-cache")


@pytest.fixture(scope="module")
def lora_run(base, cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora")
    steps = []
    result = DreamBoothAttack(base, _config("lora"), cache_dir=cache).run(
        _photos(), out, progress=lambda s, n, loss: steps.append((s, n, loss)))
    return result, steps


@pytest.fixture(scope="module")
def full_run(base, cache, lora_run, tmp_path_factory):  # after lora_run: the class images are cached by then
    folder = next((cache / "class-images").iterdir())
    mtimes = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.png")}
    out = tmp_path_factory.mktemp("full")
    result = DreamBoothAttack(base, _config("full"), cache_dir=cache).run(_photos(), out)
    return result, mtimes, folder


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_lora_changes_only_attention_projections_and_lowers_loss(base, base_loss, lora_run):
    result, steps = lora_run
    assert result.completed and result.steps_done == STEPS
    assert [s for s, _, _ in steps] == list(range(1, STEPS + 1)) and all(n == STEPS for _, n, _ in steps)
    fresh = Surrogate.tiny(0)
    for a, b in zip(base.unet.state_dict().values(), fresh.unet.state_dict().values()):
        assert torch.equal(a, b), "the base model must not be modified"
    changed = [k for k, v in result.surrogate.unet.state_dict().items()
               if not torch.equal(v, fresh.unet.state_dict()[k])]
    assert changed and all(k.rsplit(".", 2)[-2] in ("to_q", "to_k", "to_v") or ".to_out.0." in k for k in changed)
    assert all(torch.equal(v, fresh.text_encoder.state_dict()[k])
               for k, v in result.surrogate.text_encoder.state_dict().items())
    from safetensors.torch import load_file

    trainable = load_file(str(result.out_dir / "checkpoint" / "trainable.safetensors"))
    assert trainable and all(".lora_A." in k or ".lora_B." in k for k in trainable)
    after = instance_loss(result.surrogate, _photos(), resolution=RES)
    assert after < base_loss - 1e-3, (base_loss, after)
    assert (result.model_dir / "unet").is_dir() and (result.model_dir / "model_index.json").is_file()


def test_full_changes_unet_and_lowers_loss(base_loss, full_run):
    result = full_run[0]
    fresh = Surrogate.tiny(0)
    unet = result.surrogate.unet.state_dict()
    n_changed = sum(not torch.equal(v, fresh.unet.state_dict()[k]) for k, v in unet.items())
    assert n_changed > len(unet) // 2
    assert all(torch.equal(v, fresh.text_encoder.state_dict()[k])
               for k, v in result.surrogate.text_encoder.state_dict().items())
    assert result.lora_path is None
    assert instance_loss(result.surrogate, _photos(), resolution=RES) < base_loss - 1e-3


def test_class_images_are_cached_and_reused(lora_run, full_run):
    assert lora_run[0].class_images_generated == 2
    result, mtimes, folder = full_run
    assert result.class_images_generated == 0
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("*.png")} == mtimes and len(mtimes) == 2


def test_lora_export_is_kohya_and_round_trips(base, lora_run):
    result = lora_run[0]
    state, meta = load_kohya_lora(result.lora_path)
    key = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"
    assert {f"{key}.lora_down.weight", f"{key}.lora_up.weight", f"{key}.alpha"} <= set(state)
    assert all(k.startswith("lora_unet_") for k in state)
    assert meta["ss_network_dim"] == "4" and meta["ss_network_module"] == "networks.lora"
    # an independent reader of the kohya format (diffusers' converter) reproduces the attacked model
    from diffusers.loaders import StableDiffusionLoraLoaderMixin

    unet = copy.deepcopy(base.unet)
    converted, alphas = StableDiffusionLoraLoaderMixin.lora_state_dict(dict(state))[:2]
    unet.load_lora_adapter(converted, prefix="unet", network_alphas=alphas)
    x = torch.randn(2, 4, RES // 8, RES // 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([100, 700])
    emb = base.encode_prompt(["a photo of sks person"] * 2)
    with torch.no_grad():
        expected = result.surrogate.unet(x, t, encoder_hidden_states=emb).sample
        loaded = unet(x, t, encoder_hidden_states=emb).sample
        plain = base.unet(x, t, encoder_hidden_states=emb).sample
    assert (expected - plain).abs().max() > 1e-3
    torch.testing.assert_close(loaded, expected, atol=1e-5, rtol=1e-4)


def test_text_encoder_lora_keys_and_merge(base, cache, tmp_path):
    result = DreamBoothAttack(base, _config("lora", max_train_steps=1, train_text_encoder=True),
                              cache_dir=cache).run(_photos(), tmp_path)
    state, _ = load_kohya_lora(result.lora_path)
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight" in state
    assert "lora_te_text_model_encoder_layers_1_self_attn_out_proj.alpha" in state
    # the merged text encoder = base + B·A of the trained peft layers (read from the resumable checkpoint)
    from safetensors.torch import load_file

    peft = load_file(str(tmp_path / "checkpoint" / "trainable.safetensors"))
    merged, plain = result.surrogate.text_encoder.state_dict(), base.text_encoder.state_dict()
    layers = [k[len("text_encoder."):-len(".lora_A.default.weight")] for k in peft
              if k.startswith("text_encoder.") and k.endswith(".lora_A.default.weight")]
    assert len(layers) == 8  # 2 layers x q, k, v, out
    for name in layers:
        a, b = peft[f"text_encoder.{name}.lora_A.default.weight"], peft[f"text_encoder.{name}.lora_B.default.weight"]
        torch.testing.assert_close(merged[f"{name}.weight"] - plain[f"{name}.weight"], b @ a, atol=1e-6, rtol=1e-4)
        assert (b @ a).abs().max() > 0


def test_cancel_then_resume_reaches_the_same_weights(base, cache, lora_run, tmp_path, dead_pid):
    stop = threading.Event()

    def progress(step, total, loss):
        if step == 2:
            stop.set()

    interrupted = DreamBoothAttack(base, _config("lora"), cache_dir=cache).run(
        _photos(), tmp_path, progress=progress, should_stop=stop)
    assert not interrupted.completed and interrupted.steps_done == 2
    assert interrupted.model_dir is None and interrupted.lora_path is None and (tmp_path / "checkpoint" / "state.json").is_file()
    # as a kill between the two renames of a checkpoint write leaves it: the complete one as checkpoint.old
    (tmp_path / "checkpoint").rename(tmp_path / "checkpoint.old")
    killed = tmp_path / f"{TEMP_PREFIX}{_HOST}-{dead_pid}-killed.tmp"  # and the killed process's half-written
    killed.mkdir()  # temporary
    (killed / "trainable.safetensors").write_bytes(b"half")
    steps = []
    resumed = DreamBoothAttack(base, _config("lora"), cache_dir=cache).run(
        _photos(), tmp_path, progress=lambda step, total, loss: steps.append(step))
    assert steps[0] == 3  # resumed after step 2, not started again
    assert not killed.exists() and not (tmp_path / "checkpoint.old").exists()
    assert resumed.completed and resumed.steps_done == STEPS
    assert resumed.losses == lora_run[0].losses
    a, _ = load_kohya_lora(resumed.lora_path)
    b, _ = load_kohya_lora(lora_run[0].lora_path)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="different attack"):
        DreamBoothAttack(base, _config("lora", learning_rate=1e-3), cache_dir=cache).run(_photos(), tmp_path)


def test_generation_is_deterministic_and_counts_per_prompt(lora_run):
    model = lora_run[0].surrogate
    cfg = GenerationConfig(images_per_prompt=2, steps=2, resolution=RES, batch_size=3)
    done = []
    first = generate(model, cfg, progress=lambda d, n, _: done.append((d, n)))
    assert first.images.shape == (8, 3, RES, RES) and first.completed
    assert first.prompts == [p for p in PAPER_PROMPTS for _ in range(2)] and first.seeds == [0, 1] * 4
    assert done[-1] == (8, 8) and 0 <= float(first.images.min()) and float(first.images.max()) <= 1
    again = generate(model, GenerationConfig(images_per_prompt=2, steps=2, resolution=RES, batch_size=8))
    torch.testing.assert_close(again.images, first.images, atol=1e-5, rtol=0)
    other = generate(model, GenerationConfig(prompts=("a photo of sks person",), images_per_prompt=1, steps=2,
                                             resolution=RES, seed=5))
    assert other.images.shape[0] == 1 and not torch.allclose(other.images[0], first.images[0])
    batches = []
    stopped = generate(model, cfg, progress=lambda *a: batches.append(a), should_stop=lambda: len(batches) >= 1)
    assert not stopped.completed and stopped.images.shape[0] == 3


def test_cli_attack_writes_model_lora_and_samples(tmp_path):
    from gapdiff_core.commands import attack
    from gapdiff_core.io import save_image, to_uint8

    for i, img in enumerate(_photos()):
        save_image(tmp_path / f"p{i}.png", to_uint8(img))
    parser = argparse.ArgumentParser()
    attack.add_arguments(parser)
    out = tmp_path / "out"
    args = parser.parse_args([str(tmp_path / "p0.png"), str(tmp_path / "p1.png"), "--model", "tiny", "--out", str(out),
                              "--steps", "1", "--resolution", str(RES), "--no-prior", "--generate", "1", "--prompt", "a photo of sks person",
                              "--sample-steps", "1", "--device", "cpu"])
    assert attack.run(args) == 0
    assert (out / "lora.safetensors").is_file() and (out / "model" / "unet").is_dir()
    assert len(list((out / "samples" / "a_photo_of_sks_person").glob("*.png"))) == 1


def test_bf16_on_a_cpu_without_avx512_is_a_clear_error(base, cache, tmp_path, monkeypatch):
    """torch's bf16 attention on a CPU needs AVX-512 ('pack_vnni2 is only supported when avx512 is supported')."""
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    with pytest.raises(ValueError, match="needs AVX-512; use mixed_precision='no'"):
        DreamBoothAttack(base, _config("lora", max_train_steps=1, mixed_precision="bf16"),
                         cache_dir=cache).run(_photos(), tmp_path)


def test_one_lora_helper_matches_both_injection_paths_it_replaced(base):
    """``add_lora`` (the attack and ACE) gives the same parameter names, count, initial values and outputs for a seed
    as the two paths it replaced: peft's ``inject_adapter_in_model`` (the attack) and diffusers' ``add_adapter``
    (ACE)."""
    from peft import LoraConfig, inject_adapter_in_model

    from gapdiff_core.attack.lora import UNET_LORA_TARGETS, add_lora

    config = LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=list(UNET_LORA_TARGETS))
    paths = {"helper": lambda unet: add_lora(unet, UNET_LORA_TARGETS, 4),
             "inject": lambda unet: inject_adapter_in_model(config, unet, adapter_name="default"),
             "add_adapter": lambda unet: unet.add_adapter(config)}
    unets, trainable = {}, None
    for name, inject in paths.items():
        unet = copy.deepcopy(base.unet)
        torch.manual_seed(0)
        params = inject(unet)
        trainable = params if name == "helper" else trainable
        unets[name] = unet
    lora = [n for n, _ in unets["helper"].named_parameters() if ".lora_A." in n or ".lora_B." in n]
    # A and B of to_q/k/v/out in the 8 attention layers (attn1, attn2 of the 4 transformer blocks)
    assert len(lora) == 2 * 4 * 8 and len(trainable) == len(lora)
    assert [n for n, p in unets["helper"].named_parameters() if p.requires_grad] == lora
    states = {name: unet.state_dict() for name, unet in unets.items()}
    for name in ("inject", "add_adapter"):
        assert list(states[name]) == list(states["helper"])
        assert all(torch.equal(states[name][k], v) for k, v in states["helper"].items()), name
    g = torch.Generator().manual_seed(1)
    b_values = {n: torch.randn(p.shape, generator=g) for n, p in unets["helper"].named_parameters() if ".lora_B." in n}
    x = torch.randn(1, 4, RES // 8, RES // 8, generator=g)
    t, emb = torch.tensor([500]), base.encode_prompt("a photo of sks person")
    outputs = {}
    with torch.no_grad():
        for name, unet in unets.items():
            for n, p in unet.named_parameters():
                if n in b_values:
                    p.copy_(b_values[n])
            outputs[name] = unet(x, t, encoder_hidden_states=emb).sample
        plain = base.unet(x, t, encoder_hidden_states=emb).sample
    assert (outputs["helper"] - plain).abs().max() > 1e-3
    assert torch.equal(outputs["inject"], outputs["helper"]) and torch.equal(outputs["add_adapter"], outputs["helper"])


def _knowing_model(base, photo: torch.Tensor, knows: str):
    """The tiny model with a UNet that predicts the exact noise of ``photo``'s latent under prompt ``knows`` and
    zero under any other: its DreamBooth loss is 0 for that prompt and E[noise²] for the others."""
    from gapdiff_core.attack.data import latent_moments, load_photos

    lat = latent_moments(base, load_photos(photo, RES))[0] * base.vae.config.scaling_factor
    known = base.encode_prompt(knows)[0]
    ab = base.scheduler.alphas_cumprod

    def predict(noisy, t, emb):
        a = ab[t].view(-1, 1, 1, 1)
        noise = (noisy - a.sqrt() * lat) / (1 - a).sqrt()
        return torch.stack([n if torch.equal(e, known) else torch.zeros_like(n) for n, e in zip(noise, emb)])

    model = copy.copy(base)
    model.predict = predict
    return model


def test_identity_gain_formula_on_models_whose_answer_is_known(base):
    from gapdiff_core.attack import CLASS_PROMPT, INSTANCE_PROMPT, identity_gain, relative_gain

    photo = _photos()[:1]
    g = torch.Generator().manual_seed(5)  # the draws identity_gain makes with seed 5: noise first, then timesteps
    expected = float(torch.randn((8, 4, RES // 8, RES // 8), generator=g).pow(2).mean())
    learnt = identity_gain(_knowing_model(base, photo, INSTANCE_PROMPT), photo, resolution=RES, samples=8, seed=5)
    assert learnt["instance_error"] == pytest.approx(0, abs=1e-5) and learnt["class_error"] == pytest.approx(expected)
    assert learnt["gain"] == pytest.approx(expected, rel=1e-5) and learnt["per_photo_gain"] == [learnt["gain"]]
    swapped = identity_gain(_knowing_model(base, photo, CLASS_PROMPT), photo, resolution=RES, samples=8, seed=5)
    assert swapped["gain"] == pytest.approx(-expected, rel=1e-5)
    # a model that ignores the prompt gains exactly 0: both prompts see the same noise and timesteps
    blind = copy.copy(base)
    blind.predict = lambda noisy, t, emb: torch.zeros_like(noisy)
    assert identity_gain(blind, photo, resolution=RES, samples=8, seed=5)["gain"] == 0.0
    assert relative_gain(0.25, 0.5) == 0.5 and relative_gain(0.25, 0.0) is None and relative_gain(0.1, -1) is None


def test_attack_takes_class_images_from_a_folder(base, tmp_path):
    from gapdiff_core.io import save_image, to_uint8

    g = torch.Generator().manual_seed(9)
    (tmp_path / "cls").mkdir()
    for i in range(3):
        save_image(tmp_path / "cls" / f"{i}.png", to_uint8(torch.rand(1, 3, 40, 48, generator=g)))
    cfg = _config("lora", max_train_steps=1, checkpointing_steps=0, class_data_dir=str(tmp_path / "cls"))
    result = DreamBoothAttack(base, cfg, cache_dir=tmp_path / "cache").run(_photos(), tmp_path / "out")
    assert result.completed and result.class_images_generated == 0
    assert not (tmp_path / "cache").exists()  # nothing generated, nothing cached
    with pytest.raises(ValueError, match="holds 3 image"):
        DreamBoothAttack(base, cfg.replace(num_class_images=4), cache_dir=tmp_path / "cache").run(
            _photos(), tmp_path / "out2")
