"""Surrogate diffusion models: tiny model, tokenizer, loaders (diffusers folder, single file), converter, safety."""
import errno
import json
import os
import socket
import stat
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from gapdiff_core.diffusion import (  # noqa: E402
    CheckpointError, Surrogate, bundled_config, detect_sd_version, load_surrogate, looks_v_prediction,
    read_state_dict)
from gapdiff_core.diffusion import convert  # noqa: E402
from gapdiff_core.io import atomic  # noqa: E402
from gapdiff_core.diffusion.surrogate import SURROGATE_MARKER, TINY_TEXT_ENCODER, TINY_UNET, TINY_VAE  # noqa: E402
from gapdiff_core.diffusion.tokenizer import clip_tokenizer  # noqa: E402

PROMPT = "a photo of sks person"
PROMPT_IDS = [49406, 320, 1125, 539, 48136, 2533, 49407]


@pytest.fixture(scope="module")
def tiny():
    return Surrogate.tiny(0)


@pytest.fixture(scope="module")
def probe():
    g = torch.Generator().manual_seed(123)
    return torch.randn(2, 4, 8, 8, generator=g), torch.tensor([10, 900]), torch.rand(1, 3, 32, 32, generator=g)


def _outputs(s, probe):
    z, t, x = probe
    with torch.no_grad():
        emb = s.encode_prompt([PROMPT, "a photo of a person"])
        return [emb, s.predict(z, t, emb), s.encode_images(x, sample=False), s.decode_latents(z[:1, :, :4, :4])]


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


# ---------------------------------------------------------------- tiny model
def test_tiny_is_deterministic_and_seed_dependent(tiny, probe):
    state = torch.random.get_rng_state()
    again, other = Surrogate.tiny(0), Surrogate.tiny(1)
    assert torch.equal(torch.random.get_rng_state(), state), "building must not consume the global RNG"
    for name, module in tiny.modules().items():
        a, b, c = module.state_dict(), again.modules()[name].state_dict(), other.modules()[name].state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name
        assert any(not torch.equal(a[k], c[k]) for k in a if a[k].numel() > 1), name
    ref = _outputs(tiny, probe)
    for x, y in zip(ref, _outputs(again, probe)):
        assert torch.equal(x, y)
    assert not torch.allclose(ref[1], _outputs(other, probe)[1])


def test_tiny_properties_and_frozen(tiny):
    assert tiny.is_demo and tiny.resolution == 512 and tiny.prediction_type == "epsilon" and tiny.family == "sd1"
    assert tiny.latent_scale == 8
    for m in tiny.modules().values():
        assert not m.training and not any(p.requires_grad for p in m.parameters())
    procs = tiny.unet.attn_processors
    assert procs and all(type(p).__name__ == "AttnProcessor2_0" for p in procs.values())
    assert type(tiny.scheduler).__name__ == "DDPMScheduler"


def test_tiny_512_image_gives_64_latents(tiny):
    with torch.no_grad():
        z = tiny.encode_images(torch.rand(1, 3, 512, 512), generator=torch.Generator().manual_seed(0))
        assert z.shape == (1, 4, 64, 64)
        emb = tiny.encode_prompt([PROMPT])
        assert emb.shape == (1, 77, TINY_TEXT_ENCODER["hidden_size"])
        assert tiny.predict(z, torch.tensor([500]), emb).shape == z.shape
        x = tiny.decode_latents(z[:, :, :8, :8])
    assert x.shape == (1, 3, 64, 64) and 0 <= x.min() and x.max() <= 1


@pytest.mark.parametrize("family", ["sd1", "sd2"])
def test_random_from_shipped_tiny_config_equals_tiny(family):
    a = Surrogate.tiny(5, family=family)
    b = Surrogate.random("tiny" if family == "sd1" else "tiny-sd2", seed=5)
    assert b.family == family and b.resolution == 512 and b.tokenizer.pad_token == a.tokenizer.pad_token
    for name, module in a.modules().items():
        sa, sb = module.state_dict(), b.modules()[name].state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa), name


def test_shipped_tiny_configs_match_code():
    for sub, cfg in (("unet", TINY_UNET), ("vae", TINY_VAE), ("text_encoder", TINY_TEXT_ENCODER)):
        shipped = json.loads((bundled_config("tiny") / sub / "config.json").read_text())
        assert shipped == cfg, sub


# ---------------------------------------------------------------- tokenizer and prompts
def test_tokenizer_ids_and_padding_per_family():
    ids = clip_tokenizer("sd1")([PROMPT], padding="max_length", max_length=77).input_ids[0]
    assert ids == PROMPT_IDS + [49407] * (77 - len(PROMPT_IDS))
    ids2 = clip_tokenizer("sd2")([PROMPT], padding="max_length", max_length=77).input_ids[0]
    assert ids2 == PROMPT_IDS + [0] * (77 - len(PROMPT_IDS))  # SD 2.x pads with "!" (id 0)


def test_tokenize_truncates_to_77(tiny):
    ids = tiny.tokenize(["word " * 200])
    assert ids.shape == (1, 77) and ids[0, 0] == 49406 and ids[0, -1] == 49407


def test_prompt_embeddings_are_cached(tiny):
    calls = []
    hook = tiny.text_encoder.register_forward_hook(lambda *a: calls.append(1))
    try:
        tiny.clear_prompt_cache()
        a = tiny.encode_prompt([PROMPT, PROMPT])
        b = tiny.encode_prompt(PROMPT)
        assert len(calls) == 1 and torch.equal(a[0], b[0]) and torch.equal(a[0], a[1])
        assert not a.requires_grad
    finally:
        hook.remove()


def test_encode_images_is_differentiable(tiny):
    x = torch.rand(1, 3, 32, 32, requires_grad=True)
    z = tiny.encode_images(x, generator=torch.Generator().manual_seed(0))
    loss = tiny.predict(z, torch.tensor([300]), tiny.encode_prompt([PROMPT])).pow(2).mean()
    loss.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for m in tiny.modules().values() for p in m.parameters())


def test_gradient_checkpointing_switch_keeps_results(tiny, probe):
    z, t, _ = probe
    emb = tiny.encode_prompt([PROMPT, PROMPT])
    zz = z.clone().requires_grad_(True)
    ref = tiny.predict(zz, t, emb)
    (g_ref,) = torch.autograd.grad(ref.sum(), zz)
    tiny.enable_gradient_checkpointing(True)
    try:
        assert tiny.unet.is_gradient_checkpointing and tiny.vae.is_gradient_checkpointing
        out = tiny.predict(zz, t, emb)
        (g,) = torch.autograd.grad(out.sum(), zz)
    finally:
        tiny.enable_gradient_checkpointing(False)
    assert not tiny.unet.is_gradient_checkpointing
    assert torch.allclose(out, ref, atol=1e-6) and torch.allclose(g, g_ref, atol=1e-5)


# ---------------------------------------------------------------- loaders round-trip
@pytest.mark.slow
@pytest.mark.parametrize("family", ["sd1", "sd2"])
@pytest.mark.parametrize("marker", [True, False])
def test_diffusers_folder_round_trip(family, marker, probe, tmp_path, no_network):
    model = Surrogate.tiny(3, family=family)
    model.save_pretrained(tmp_path / "tiny")
    if not marker:  # a folder written by other tools: the family comes from the text encoder
        (tmp_path / "tiny" / SURROGATE_MARKER).unlink()
    loaded = load_surrogate(tmp_path / "tiny")
    assert loaded.is_demo == marker and loaded.resolution == 512 and loaded.family == family
    assert loaded.tokenizer.pad_token_id == (49407 if family == "sd1" else 0)
    for x, y in zip(_outputs(model, probe), _outputs(loaded, probe)):
        assert torch.equal(x, y)
    state, _ = read_state_dict(loaded.save_single_file(tmp_path / "again.safetensors"))
    assert detect_sd_version(state) == family


def test_save_pretrained_is_atomic(probe, tmp_path, monkeypatch):
    """A save that fails half-way (after the UNet is written) leaves no partial folder, and a previous complete
    folder exactly as it was; a save that completes replaces it whole."""
    first, second = Surrogate.tiny(0), Surrogate.tiny(1)
    folder = first.save_pretrained(tmp_path / "model")
    before = {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(second.vae, "save_pretrained", disk_full)  # the UNet is written by then
    with pytest.raises(OSError, match="No space left"):
        second.save_pretrained(folder)
    assert {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before
    with pytest.raises(OSError, match="No space left"):
        second.save_pretrained(tmp_path / "new")
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no partial folder, temporary or model.old
    monkeypatch.undo()
    synced, fsync_dir = [], atomic.fsync_dir
    monkeypatch.setattr(atomic, "fsync_dir", lambda path: synced.append(Path(path).name) or fsync_dir(path))
    second.save_pretrained(folder)
    assert {"unet", "vae", "text_encoder", "tokenizer", "scheduler"} <= set(synced)  # their entries are durable too
    monkeypatch.undo()
    for x, y in zip(_outputs(second, probe), _outputs(load_surrogate(folder), probe)):
        assert torch.equal(x, y)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["sd1", "sd2"])
def test_single_file_round_trip(family, probe, tmp_path, no_network):
    model = Surrogate.tiny(3, family=family)
    path = model.save_single_file(tmp_path / "tiny.safetensors")
    state, meta = read_state_dict(path)
    assert any(k.startswith("model.diffusion_model.input_blocks.") for k in state)
    assert any(k.startswith("first_stage_model.encoder.down.") for k in state)
    text_prefix = "cond_stage_model.transformer.text_model." if family == "sd1" else "cond_stage_model.model."
    assert any(k.startswith(text_prefix) for k in state)
    assert detect_sd_version(state) == family
    config = "tiny" if family == "sd1" else "tiny-sd2"
    loaded = load_surrogate(path, config=config)
    assert loaded.is_demo and loaded.family == family
    assert loaded.tokenizer.pad_token_id == (49407 if family == "sd1" else 0)
    ref = _outputs(model, probe)
    for x, y in zip(ref, _outputs(loaded, probe)):
        assert torch.equal(x, y)
    assert load_surrogate(path).config_dir.name == config  # the config recorded in the file's metadata


def test_weights_only_ckpt_loads(tiny, probe, tmp_path):
    path = tmp_path / "tiny.ckpt"
    torch.save({"state_dict": tiny.ldm_state_dict(), "global_step": 1}, path)
    loaded = load_surrogate(path, config="tiny")
    assert torch.equal(_outputs(loaded, probe)[1], _outputs(tiny, probe)[1])


def test_dtype_and_prediction_override(tmp_path):
    s = load_surrogate("tiny", dtype=torch.float64, prediction_type="v_prediction")
    assert s.dtype == torch.float64 and s.prediction_type == "v_prediction"
    assert s.encode_images(torch.rand(1, 3, 16, 16)).dtype == torch.float64


# ---------------------------------------------------------------- safety and errors
class _Malicious:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):  # unpickling would create this file
        return (open, (self.target, "w"))


def test_malicious_ckpt_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": _Malicious(str(marker))}, path)
    with pytest.raises(CheckpointError, match="evil.ckpt.*refused"):
        load_surrogate(path)
    assert not marker.exists()


def test_foreign_files_give_clear_errors(tmp_path):
    from safetensors.torch import save_file

    foreign = tmp_path / "classifier.safetensors"
    save_file({"fc.weight": torch.zeros(2, 2)}, str(foreign))
    with pytest.raises(CheckpointError, match="classifier.safetensors.*not a Stable Diffusion"):
        load_surrogate(foreign)
    junk = tmp_path / "junk.safetensors"
    junk.write_text("not a model")
    with pytest.raises(CheckpointError, match="junk.safetensors"):
        load_surrogate(junk)
    other = tmp_path / "weights.onnx"
    other.write_bytes(b"\0")
    with pytest.raises(CheckpointError, match="weights.onnx.*unsupported"):
        load_surrogate(other)
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        load_surrogate(tmp_path / "missing.safetensors")


def test_single_file_is_written_atomically_with_the_umask_mode(tiny, tmp_path, monkeypatch, fsynced):
    import safetensors.torch

    previous = os.umask(0o027)
    try:
        path = tiny.save_single_file(tmp_path / "tiny.safetensors")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640  # as any new file (safetensors alone makes it 0600)
    assert fsynced.has(path) and fsynced.has(tmp_path)
    complete = path.read_bytes()

    def disk_full(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", disk_full)
    with pytest.raises(OSError, match="No space"):
        tiny.save_single_file(path)
    assert path.read_bytes() == complete and [p.name for p in tmp_path.iterdir()] == ["tiny.safetensors"]


def test_wrong_config_is_named(tiny, tmp_path):
    path = tiny.save_single_file(tmp_path / "tiny.safetensors")
    with pytest.raises(CheckpointError, match="tiny.safetensors.*sd15"):
        load_surrogate(path, config="sd15")


# ---------------------------------------------------------------- version detection and real-layout converter
def _fake_keys(context_dim, openclip):
    state = {"model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight":
             torch.zeros(320, context_dim)}
    if openclip:
        state["cond_stage_model.model.token_embedding.weight"] = torch.zeros(1, 1)
        state["cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"] = torch.zeros(1, 1)
    else:
        state["cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"] = torch.zeros(1, 1)
    return state


def test_version_detection():
    assert detect_sd_version(_fake_keys(1024, openclip=True)) == "sd2"
    assert detect_sd_version(_fake_keys(768, openclip=False)) == "sd1"
    with pytest.raises(ValueError, match="SDXL"):
        detect_sd_version({**_fake_keys(2048, False), "conditioner.embedders.1.model.positional_embedding": 0})
    with pytest.raises(ValueError, match="diffusers UNet"):
        detect_sd_version({"down_blocks.0.resnets.0.conv1.weight": torch.zeros(1)})
    v = {"model.diffusion_model.output_blocks.11.1.transformer_blocks.0.norm1.bias": torch.randn(320)}
    assert looks_v_prediction(v) and not looks_v_prediction({k: t * 0.01 for k, t in v.items()})


@pytest.mark.parametrize("name", ["sd15", "sd21-v"])
def test_converter_matches_diffusers_on_real_sd_layouts(name):
    """Our diffusers->ldm keys, read back by diffusers' ldm->diffusers converter, give the real model's keys."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    cfg = bundled_config(name)
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(cfg, subfolder="unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(cfg, subfolder="vae"))
    us, vs = unet.state_dict(), vae.state_dict()
    ldm_unet = convert.unet_to_ldm(us, unet.config)
    assert len(ldm_unet) == 686  # the SD 1.x/2.x UNet key count
    for key in ("output_blocks.11.0.skip_connection.weight", "input_blocks.3.0.op.weight",
                "output_blocks.2.1.conv.weight", "output_blocks.5.2.conv.weight", "middle_block.1.proj_in.weight"):
        assert "model.diffusion_model." + key in ldm_unet
    back = convert_ldm_unet_checkpoint(ldm_unet, dict(unet.config))
    assert set(back) == set(us) and all(back[k].shape == us[k].shape for k in us)
    ldm_vae = convert.vae_to_ldm(vs, vae.config)
    assert ldm_vae["first_stage_model.encoder.mid.attn_1.q.weight"].shape == (512, 512, 1, 1)
    vback = convert_ldm_vae_checkpoint(ldm_vae, dict(vae.config))
    assert set(vback) == set(vs) and all(vback[k].shape == vs[k].shape for k in vs)
