"""DreamBooth / LoRA test attack on (protected) photos, and sampling from the attacked model."""
from ..common.progress import TqdmProgress, stop_requested
from .class_images import class_images, default_cache_dir, model_fingerprint
from .data import load_photos
from .dreambooth import (CLASS_PROMPT, INSTANCE_PROMPT, AttackResult, DreamBoothAttack, DreamBoothConfig,
                         instance_loss, run_dreambooth)
from .identity import identity_gain, relative_gain
from .generation import PAPER_GENERATION, PAPER_PROMPTS, Generated, GenerationConfig, generate, sample
from .lora_export import kohya_state_dict, load_kohya_lora, merge_kohya_lora, save_kohya_lora
from .presets import PRESETS, preset

__all__ = ["AttackResult", "CLASS_PROMPT", "DreamBoothAttack", "DreamBoothConfig", "Generated", "GenerationConfig",
           "INSTANCE_PROMPT", "PAPER_GENERATION", "PAPER_PROMPTS", "PRESETS", "TqdmProgress", "class_images",
           "default_cache_dir", "generate", "identity_gain", "instance_loss", "kohya_state_dict", "load_kohya_lora",
           "load_photos", "merge_kohya_lora", "model_fingerprint", "preset", "relative_gain", "run_dreambooth",
           "sample", "save_kohya_lora", "stop_requested"]
