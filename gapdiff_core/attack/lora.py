"""LoRA adapters (peft) on attention projections: the one way the attack and the protections add them."""
from __future__ import annotations

import torch

UNET_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")


def add_lora(module: torch.nn.Module, targets: tuple[str, ...], rank: int,
             alpha: float | None = None) -> list[torch.nn.Parameter]:
    """Inject a rank-``rank`` LoRA (``alpha`` default = rank, scale 1; Gaussian A, zero B) named ``default`` into the
    ``targets`` layers of ``module``, freeze everything else, and return the LoRA parameters (now trainable). The
    initial values come from the global torch RNG: seed it (or fork it) for reproducible adapters."""
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError as exc:  # pragma: no cover - peft is in the [diffusion] extra
        raise ImportError("LoRA needs peft (pip install 'gapdiff[diffusion]')") from exc
    config = LoraConfig(r=rank, lora_alpha=rank if alpha is None else alpha, init_lora_weights="gaussian",
                        target_modules=list(targets))
    inject_adapter_in_model(config, module, adapter_name="default")
    module.requires_grad_(False)
    params = [p for n, p in module.named_parameters() if ".lora_A." in n or ".lora_B." in n]
    for p in params:
        p.requires_grad_(True)
    return params
