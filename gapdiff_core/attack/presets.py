"""Named DreamBooth settings: the paper's protocol, a typical LoRA attacker, and both scaled for the tiny model."""
from __future__ import annotations

from .dreambooth import DreamBoothConfig

PRESETS: dict[str, dict] = {
    # The protocol of the paper (the authors' scripts; Anti-DreamBooth's train_dreambooth.py settings), for
    # SD 2.1-base at 512: UNet + text encoder, lr 5e-7 constant, 1000 steps, batch 2, 200 class images, bf16.
    "paper-full": dict(mode="full", resolution=512, learning_rate=5e-7, max_train_steps=1000, train_batch_size=2,
                       prior_loss_weight=1.0, num_class_images=200, train_text_encoder=True,
                       mixed_precision="bf16", gradient_checkpointing=True, checkpointing_steps=250),
    # What most attackers run: LoRA DreamBooth after diffusers' examples/dreambooth/train_dreambooth_lora.py, whose
    # defaults are rank 4 and lr 5e-4 (its README example: lr 1e-4, 500 steps, constant, no warm-up). Rank 8 and
    # 800 steps at lr 1e-4 are this project's choice (a somewhat stronger attacker), not diffusers' defaults.
    "lora": dict(mode="lora", lora_rank=8, learning_rate=1e-4, max_train_steps=800, train_batch_size=1,
                 prior_loss_weight=1.0, num_class_images=200, train_text_encoder=False, mixed_precision="bf16",
                 checkpointing_steps=200),
    # The tiny random model (tests, demo): the model's own resolution, few steps, few class images.
    "tiny-lora": dict(mode="lora", lora_rank=4, learning_rate=5e-3, max_train_steps=40, train_batch_size=1,
                      prior_loss_weight=1.0, num_class_images=4, class_steps=10, train_text_encoder=False,
                      checkpointing_steps=20),
    "tiny-full": dict(mode="full", learning_rate=2e-4, max_train_steps=30, train_batch_size=1,
                      prior_loss_weight=1.0, num_class_images=4, class_steps=10, train_text_encoder=False,
                      checkpointing_steps=10),
}

# what each preset is meant for, shown by `gapdiff attack --help`
PRESET_NOTES = {
    "paper-full": "the paper's protocol: full DreamBooth of SD 2.1-base (UNet + text encoder), 1000 steps at 512",
    "lora": "LoRA DreamBooth (rank 8, lr 1e-4, 800 steps): what most attackers run",
    "tiny-lora": "LoRA on the tiny built-in model (demo/tests; protects and proves nothing real)",
    "tiny-full": "full fine-tuning on the tiny built-in model (demo/tests)",
}


def preset(name: str, **overrides) -> DreamBoothConfig:
    """The :class:`DreamBoothConfig` of preset ``name`` with ``overrides`` (field=value) applied."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return DreamBoothConfig(**{**PRESETS[name], "preset": name, **overrides})
