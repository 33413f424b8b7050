"""gapdiff: one-step, JPEG-robust protection of face photos against diffusion fine-tuning (GAP-Diff, NDSS 2025)."""
from .model.checkpoint import CheckpointError, GeneratorInfo, load_generator, save_generator
from .model.generator import Discriminator, Generator
from .model.protector import Protector, protect

__version__ = "0.1.0"
__all__ = ["CheckpointError", "Discriminator", "Generator", "GeneratorInfo", "Protector", "load_generator",
           "protect", "save_generator"]
