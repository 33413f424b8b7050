"""Diffusers -> original Stable Diffusion (ldm / CompVis) state-dict keys, and SD version detection.

The ldm layout is what A1111, ComfyUI's ``CheckpointLoaderSimple`` and diffusers' ``from_single_file`` read:
``model.diffusion_model.*`` (UNet), ``first_stage_model.*`` (VAE), ``cond_stage_model.transformer.*``
(SD 1.x CLIP) or ``cond_stage_model.model.*`` (SD 2.x OpenCLIP). The mapping is derived from the model
configs (blocks, ``layers_per_block``), so it serves the real SD layouts and the tiny model alike.
"""
from __future__ import annotations

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer.text_model."
OPENCLIP_PREFIX = "cond_stage_model.model."

_RESNET_UNET = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
                ("norm2", "out_layers.0"), ("conv2", "out_layers.3"), ("conv_shortcut", "skip_connection")]
_RESNET_VAE = [("conv_shortcut", "nin_shortcut")]
_ATTN_VAE = [("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")]


def _rename_inside(rest: str, pairs) -> str:
    for new, old in pairs:
        if rest.startswith(new + "."):
            return old + rest[len(new):]
    return rest


def unet_key_map(config) -> dict[str, str]:
    """Diffusers UNet2DConditionModel prefix -> ldm prefix (both without the ``model.diffusion_model.`` head)."""
    n_blocks = len(config["block_out_channels"])
    per = config["layers_per_block"]
    if not isinstance(per, int):
        raise ValueError("per-block layers_per_block lists are not supported by the ldm converter")
    m = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
         "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
         "mid_block.attentions.0": "middle_block.1", "mid_block.resnets.0": "middle_block.0",
         "mid_block.resnets.1": "middle_block.2"}
    for i in range(n_blocks):
        for j in range(per):
            m[f"down_blocks.{i}.resnets.{j}"] = f"input_blocks.{(per + 1) * i + j + 1}.0"
            m[f"down_blocks.{i}.attentions.{j}"] = f"input_blocks.{(per + 1) * i + j + 1}.1"
        if i < n_blocks - 1:
            m[f"down_blocks.{i}.downsamplers.0.conv"] = f"input_blocks.{(per + 1) * (i + 1)}.0.op"
        up_has_attn = "CrossAttn" in config["up_block_types"][i]
        for j in range(per + 1):
            m[f"up_blocks.{i}.resnets.{j}"] = f"output_blocks.{(per + 1) * i + j}.0"
            m[f"up_blocks.{i}.attentions.{j}"] = f"output_blocks.{(per + 1) * i + j}.1"
        if i < n_blocks - 1:
            m[f"up_blocks.{i}.upsamplers.0"] = f"output_blocks.{(per + 1) * i + per}.{2 if up_has_attn else 1}"
    return m


def _convert_by_prefix(state: dict, key_map: dict[str, str], rename_inside, what: str) -> dict:
    prefixes = sorted(key_map, key=len, reverse=True)
    out = {}
    for key, value in state.items():
        for p in prefixes:
            if key.startswith(p + "."):
                out[key_map[p] + "." + rename_inside(p, key[len(p) + 1:])] = value
                break
        else:
            raise KeyError(f"{what}: no ldm name for diffusers key {key!r}")
    return out


def unet_to_ldm(state: dict, config) -> dict:
    """A diffusers UNet2DConditionModel state dict in ldm names (with ``model.diffusion_model.``)."""
    def inside(prefix, rest):
        return _rename_inside(rest, _RESNET_UNET) if ".resnets." in prefix else rest
    out = _convert_by_prefix(state, unet_key_map(config), inside, "UNet")
    return {UNET_PREFIX + k: v for k, v in out.items()}


def vae_to_ldm(state: dict, config) -> dict:
    """A diffusers AutoencoderKL state dict in ldm names (with ``first_stage_model.``); attention Linear -> 1x1 conv."""
    n = len(config["block_out_channels"])
    per = config["layers_per_block"]
    m = {"encoder.conv_norm_out": "encoder.norm_out", "decoder.conv_norm_out": "decoder.norm_out",
         "encoder.conv_in": "encoder.conv_in", "encoder.conv_out": "encoder.conv_out",
         "decoder.conv_in": "decoder.conv_in", "decoder.conv_out": "decoder.conv_out",
         "quant_conv": "quant_conv", "post_quant_conv": "post_quant_conv"}
    for part in ("encoder", "decoder"):
        m[f"{part}.mid_block.attentions.0"] = f"{part}.mid.attn_1"
        for j in range(2):
            m[f"{part}.mid_block.resnets.{j}"] = f"{part}.mid.block_{j + 1}"
    for i in range(n):
        for j in range(per):
            m[f"encoder.down_blocks.{i}.resnets.{j}"] = f"encoder.down.{i}.block.{j}"
        if i < n - 1:
            m[f"encoder.down_blocks.{i}.downsamplers.0.conv"] = f"encoder.down.{i}.downsample.conv"
        for j in range(per + 1):
            m[f"decoder.up_blocks.{i}.resnets.{j}"] = f"decoder.up.{n - 1 - i}.block.{j}"
        if i < n - 1:
            m[f"decoder.up_blocks.{i}.upsamplers.0.conv"] = f"decoder.up.{n - 1 - i}.upsample.conv"

    def inside(prefix, rest):
        if ".attentions." in prefix:
            return _rename_inside(rest, _ATTN_VAE)
        return _rename_inside(rest, _RESNET_VAE) if ".resnets." in prefix else rest
    out = _convert_by_prefix(state, m, inside, "VAE")
    for k, v in out.items():  # ldm VAE attention uses 1x1 convolutions
        if ".mid.attn_1." in k and k.endswith(".weight") and v.ndim == 2:
            out[k] = v[:, :, None, None]
    return {VAE_PREFIX + k: v for k, v in out.items()}


def clip_to_ldm(state: dict) -> dict:
    """A transformers CLIPTextModel state dict in SD 1.x names (``cond_stage_model.transformer.text_model.*``)."""
    return {CLIP_PREFIX + k.removeprefix("text_model."): v for k, v in state.items()
            if not k.endswith("position_ids")}


def openclip_to_ldm(state: dict, n_heads: int) -> dict:
    """A transformers CLIPTextModel state dict in SD 2.x OpenCLIP names (``cond_stage_model.model.*``).

    q/k/v are fused into ``in_proj_*``. Real SD 2.x files hold one more resblock (the unused last layer) than the
    diffusers text encoder; that block cannot be recreated and is not written.
    """
    del n_heads  # fused layout does not depend on the head count
    s = {k.removeprefix("text_model."): v for k, v in state.items() if not k.endswith("position_ids")}
    out = {"token_embedding.weight": s.pop("embeddings.token_embedding.weight"),
           "positional_embedding": s.pop("embeddings.position_embedding.weight"),
           "ln_final.weight": s.pop("final_layer_norm.weight"), "ln_final.bias": s.pop("final_layer_norm.bias")}
    layer_ids = sorted({int(k.split(".")[2]) for k in s if k.startswith("encoder.layers.")})
    names = [("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj"),
             ("self_attn.out_proj", "attn.out_proj")]
    for i in layer_ids:
        src, dst = f"encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[dst + f"attn.in_proj_{kind}"] = torch.cat(
                [s.pop(src + f"self_attn.{p}_proj.{kind}") for p in ("q", "k", "v")], 0)
            for new, old in names:
                out[dst + f"{old}.{kind}"] = s.pop(src + f"{new}.{kind}")
    if s:
        raise KeyError(f"text encoder: no OpenCLIP name for {sorted(s)[:5]}")
    # diffusers reads text_projection (transposed) to size q/k/v splits: an identity keeps them at hidden size
    width = out["ln_final.weight"].shape[0]
    out["text_projection"] = torch.eye(width, dtype=out["ln_final.weight"].dtype)
    return {OPENCLIP_PREFIX + k: v for k, v in out.items()}


# ---------------------------------------------------------------- detection
def _context_dim(state) -> int | None:
    for key in state:
        if key.startswith(UNET_PREFIX) and key.endswith("attn2.to_k.weight"):
            return int(state[key].shape[-1])
    return None


def detect_sd_version(state: dict) -> str:
    """``"sd1"`` or ``"sd2"`` from an ldm state dict's keys (raises ValueError for anything else).

    SD 2.x: OpenCLIP text keys (``cond_stage_model.model.*``) and/or 1024-dim cross-attention context.
    SD 1.x: ``cond_stage_model.transformer.*`` CLIP keys and/or 768-dim context.
    """
    if not any(k.startswith(UNET_PREFIX) for k in state):
        hint = ""
        if any(k.startswith(("down_blocks.", "up_blocks.", "mid_block.")) for k in state):
            hint = " (it looks like a diffusers UNet alone: load its diffusers folder instead)"
        raise ValueError(f"no Stable Diffusion UNet keys (model.diffusion_model.*) found{hint}")
    if any(k.startswith("conditioner.embedders.") for k in state):
        raise ValueError("this is an SDXL checkpoint (conditioner.embedders.*); only SD 1.x / 2.x are supported")
    ctx = _context_dim(state)
    openclip = any(k.startswith(OPENCLIP_PREFIX) for k in state)
    clip = any(k.startswith("cond_stage_model.transformer.") for k in state)
    if openclip or ctx == 1024:
        return "sd2"
    if clip or ctx == 768:
        return "sd1"
    raise ValueError(f"cannot tell SD 1.x from 2.x (no text-encoder keys, context dim {ctx})")


def looks_v_prediction(state: dict) -> bool:
    """SD 2.x 768-v vs 512-base heuristic (ComfyUI's): a ``v_pred`` key, or std of a late norm bias > 0.09."""
    if "v_pred" in state:
        return True
    bias = state.get(UNET_PREFIX + "output_blocks.11.1.transformer_blocks.0.norm1.bias")
    return bias is not None and float(torch.std(bias.float(), unbiased=False)) > 0.09
