"""Generator training (GAP-Diff): config, image-folder data, the accelerate loop, surrogate warm-up and fine-tuning,
validation, the demo generator."""
from .config import TrainConfig, load_config, parse_override
from .data import EpochSampler, ImageFolderDataset, list_images, usable_images
from .demo import train_demo_generator
from .loop import Trainer, build_surrogate, train
from .validation import evaluate_generator, protect_batch, save_grid

__all__ = ["TrainConfig", "load_config", "parse_override", "Trainer", "train", "build_surrogate",
           "ImageFolderDataset", "EpochSampler", "list_images", "usable_images", "evaluate_generator",
           "protect_batch", "save_grid", "train_demo_generator"]
