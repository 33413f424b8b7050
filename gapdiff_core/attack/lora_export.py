"""LoRA weights in the kohya / A1111 ``.safetensors`` layout that ComfyUI's LoRA loader reads, and merging them back.

Key names follow kohya's sd-scripts for SD 1.x / 2.x: the diffusers module path with dots replaced by underscores,
``lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight`` / ``.lora_up.weight`` /
``.alpha`` for the UNet and ``lora_te_text_model_encoder_layers_0_self_attn_q_proj...`` for the text encoder.
ComfyUI (``comfy/lora.py``, ``model_lora_keys_unet``) builds exactly these names from ``unet_to_diffusers``;
the update applied is ``W += strength * alpha / rank * up @ down``.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..io import atomic

PREFIXES = {"unet": "lora_unet_", "text_encoder": "lora_te_"}


def kohya_name(prefix: str, module_name: str) -> str:
    """Kohya key of a module. Text-encoder names are those of transformers' ``CLIPTextModel`` with its
    ``text_model.`` level, which transformers 5 no longer has: it is put back so the keys match ComfyUI's."""
    if prefix == PREFIXES["text_encoder"] and not module_name.startswith("text_model."):
        module_name = "text_model." + module_name
    return prefix + module_name.replace(".", "_")


def peft_lora_layers(model: torch.nn.Module, adapter: str = "default"):
    """(module name, down weight, up weight, scaling) of every peft LoRA layer in ``model``."""
    for name, module in model.named_modules():
        lora_a = getattr(module, "lora_A", None)
        if isinstance(lora_a, torch.nn.ModuleDict) and adapter in lora_a:
            yield name, lora_a[adapter].weight, module.lora_B[adapter].weight, float(module.scaling[adapter])


def kohya_state_dict(unet: torch.nn.Module, text_encoder: torch.nn.Module | None = None,
                     adapter: str = "default") -> dict[str, torch.Tensor]:
    """The peft LoRA layers of ``unet`` (and ``text_encoder``) as kohya tensors (fp32, contiguous, on the CPU)."""
    state: dict[str, torch.Tensor] = {}
    for part, model in (("unet", unet), ("text_encoder", text_encoder)):
        if model is None:
            continue
        for name, down, up, scaling in peft_lora_layers(model, adapter):
            key = kohya_name(PREFIXES[part], name)
            rank = down.shape[0]
            state[f"{key}.lora_down.weight"] = down.detach().float().cpu().contiguous().clone()
            state[f"{key}.lora_up.weight"] = up.detach().float().cpu().contiguous().clone()
            state[f"{key}.alpha"] = torch.tensor(scaling * rank, dtype=torch.float32)
    if not state:
        raise ValueError("no peft LoRA layers found to export")
    return state


def save_kohya_lora(path: str | Path, state: dict[str, torch.Tensor], *, family: str = "sd1",
                    metadata: dict[str, str] | None = None) -> Path:
    """Write ``state`` as a ``.safetensors`` LoRA with kohya-style metadata (what A1111 and ComfyUI expect)."""
    from safetensors.torch import save

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: LoRA files are written as .safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    ranks = sorted({int(v.shape[0]) for k, v in state.items() if k.endswith("lora_down.weight")})
    alphas = sorted({float(v) for k, v in state.items() if k.endswith(".alpha")})
    meta = {"format": "pt", "ss_network_module": "networks.lora", "ss_network_dim": str(ranks[0]),
            "ss_network_alpha": str(alphas[0]), "ss_v2": str(family == "sd2"),
            "ss_base_model_version": "sd_v2" if family == "sd2" else "sd_v1"}
    meta.update({k: str(v) for k, v in (metadata or {}).items()})
    return atomic.write_bytes(path, save(state, metadata=meta))


def _target_modules(model: torch.nn.Module, prefix: str) -> dict[str, torch.nn.Module]:
    return {kohya_name(prefix, n): m for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear,
                                                                                         torch.nn.Conv2d))}


@torch.no_grad()
def merge_kohya_lora(state: dict[str, torch.Tensor], unet: torch.nn.Module,
                     text_encoder: torch.nn.Module | None = None, strength: float = 1.0) -> int:
    """Add a kohya LoRA into plain diffusers/transformers modules in place (``W += strength·α/r·up@down``).

    Returns the number of layers changed; raises ValueError naming keys that match no module.
    """
    targets = _target_modules(unet, PREFIXES["unet"])
    if text_encoder is not None:
        targets.update(_target_modules(text_encoder, PREFIXES["text_encoder"]))
    bases = sorted({k[:-len(".lora_down.weight")] for k in state if k.endswith(".lora_down.weight")})
    unknown = [b for b in bases if b not in targets]
    if unknown:
        raise ValueError(f"LoRA keys match no layer of this model (wrong base model?): {unknown[:5]}"
                         + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""))
    for base in bases:
        module = targets[base]
        down, up = state[f"{base}.lora_down.weight"].float(), state[f"{base}.lora_up.weight"].float()
        rank = down.shape[0]
        alpha = float(state[f"{base}.alpha"]) if f"{base}.alpha" in state else float(rank)
        delta = (up.flatten(1) @ down.flatten(1)).reshape(module.weight.shape) * (strength * alpha / rank)
        module.weight.add_(delta.to(module.weight.device, module.weight.dtype))
    return len(bases)


def load_kohya_lora(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a kohya ``.safetensors`` LoRA."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
