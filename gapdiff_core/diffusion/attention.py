"""bf16 attention on CPUs without AVX-512: torch's fused CPU attention packs bf16 with AVX-512 VNNI instructions and
fails elsewhere ("pack_vnni2 is only supported when avx512 is supported"); the plain matmul-softmax attention
computes the same function and runs on any CPU."""
from __future__ import annotations

import torch


def cpu_has_bf16_attention() -> bool:
    """Whether torch's fused bf16 attention runs on this CPU (the kernels torch dispatches to, so
    ``ATEN_CPU_CAPABILITY=avx2`` counts as a CPU without AVX-512)."""
    return torch.backends.cpu.get_cpu_capability() in ("AVX512", "AMX")


def math_attention(unet, text_encoder=None) -> None:
    """Switch ``unet`` (diffusers) and ``text_encoder`` (transformers CLIP, if given) to the unfused matmul-softmax
    attention, in place."""
    from diffusers.models.attention_processor import AttnProcessor

    unet.set_attn_processor(AttnProcessor())
    if text_encoder is not None:
        text_encoder.set_attn_implementation("eager")
