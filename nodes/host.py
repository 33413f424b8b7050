"""What the nodes need from ComfyUI: model folders, device, progress, cancellation, IMAGE <-> core tensors.

Every host import lives here, so the node modules stay thin. ComfyUI IMAGE is B x H x W x C float in [0, 1] on the
CPU; core APIs take B x 3 x H x W float32 in [0, 1].
"""
from __future__ import annotations

import logging
import os

import torch

import comfy.model_management
import comfy.utils
import folder_paths

from ..gapdiff_core.diffusion.loading import SINGLE_FILE_SUFFIXES
from ..gapdiff_core.model.checkpoint import GENERATOR_SUFFIXES

log = logging.getLogger("gapdiff")

GENERATOR_FOLDER = "gapdiff"
GENERATOR_EXTENSIONS = set(GENERATOR_SUFFIXES)
SURROGATE_EXTENSIONS = set(SINGLE_FILE_SUFFIXES)  # every single file load_surrogate reads
DIFFUSERS_PREFIX = "[diffusers] "


def register_generator_folder() -> None:
    """Register `models/gapdiff` with folder_paths; safe to call any number of times.

    A new key gets an empty extension set from folder_paths (which lists every file), and a user's
    extra_model_paths.yaml may have created the key already: both end with our extensions in the set.
    """
    default = os.path.join(folder_paths.models_dir, GENERATOR_FOLDER)
    folder_paths.add_model_folder_path(GENERATOR_FOLDER, default, is_default=True)
    paths, extensions = folder_paths.folder_names_and_paths[GENERATOR_FOLDER]
    folder_paths.folder_names_and_paths[GENERATOR_FOLDER] = (paths, set(extensions) | GENERATOR_EXTENSIONS)


def generator_names() -> list[str]:
    register_generator_folder()
    return folder_paths.get_filename_list(GENERATOR_FOLDER)


def generator_path(name: str) -> str:
    register_generator_folder()
    path = folder_paths.get_full_path(GENERATOR_FOLDER, name)
    if path is None:
        raise FileNotFoundError(f"GAP-Diff generator {name!r} not found in models/{GENERATOR_FOLDER} "
                                f"(searched {folder_paths.get_folder_paths(GENERATOR_FOLDER)}); put the .safetensors "
                                f"or official .pth file there, or run `gapdiff demo-assets` for a demo one")
    return path


def surrogate_names() -> list[str]:
    """Single-file checkpoints in models/checkpoints, then diffusers folders in models/diffusers."""
    files = [n for n in folder_paths.get_filename_list("checkpoints")
             if os.path.splitext(n)[1].lower() in SURROGATE_EXTENSIONS]
    folders = []
    for root in folder_paths.get_folder_paths("diffusers"):
        if os.path.isdir(root):
            folders += sorted(d for d in os.listdir(root) if os.path.isfile(os.path.join(root, d, "model_index.json")))
    return files + [DIFFUSERS_PREFIX + d for d in folders]


def surrogate_path(name: str) -> str:
    if name.startswith(DIFFUSERS_PREFIX):
        folder = name[len(DIFFUSERS_PREFIX):]
        for root in folder_paths.get_folder_paths("diffusers"):
            path = os.path.join(root, os.path.relpath(os.path.join("/", folder), "/"))
            if os.path.isfile(os.path.join(path, "model_index.json")):
                return path
        raise FileNotFoundError(f"diffusers folder {folder!r} not found in models/diffusers")
    path = folder_paths.get_full_path("checkpoints", name)
    if path is None:
        raise FileNotFoundError(f"checkpoint {name!r} not found in models/checkpoints")
    return path


def loras_folder() -> str:
    return folder_paths.get_folder_paths("loras")[0]


def input_folder() -> str:
    return folder_paths.get_input_directory()


def output_folder() -> str:
    return folder_paths.get_output_directory()


def temp_folder(name: str) -> str:
    """A folder ``name`` in ComfyUI's temp directory (caches that may be deleted)."""
    return os.path.join(folder_paths.get_temp_directory(), name)


def device() -> torch.device:
    return comfy.model_management.get_torch_device()


def check_interrupted() -> None:
    """Raise ComfyUI's interruption exception when the user pressed Cancel."""
    comfy.model_management.throw_exception_if_processing_interrupted()


class Progress:
    """ComfyUI's progress bar, which also stops the work when the user cancels (call `step` between units)."""

    def __init__(self, total: int):
        self.bar = comfy.utils.ProgressBar(max(1, int(total)))

    def step(self, done: int | None = None, total: int | None = None) -> None:
        check_interrupted()
        if done is None:
            self.bar.update(1)
        else:
            self.bar.update_absolute(done, total)


class training_mode:
    """ComfyUI runs every node under torch.inference_mode(); training (and models that will be trained) must be
    built outside it, with gradients on. Use as `with host.training_mode():`."""

    def __enter__(self):
        self._modes = [torch.inference_mode(False), torch.enable_grad()]
        for m in self._modes:
            m.__enter__()
        return self

    def __exit__(self, *exc):
        for m in reversed(self._modes):
            m.__exit__(*exc)
        return False


def the_one(values: list):
    """The value of a setting of an INPUT_IS_LIST node (ComfyUI passes every input of such a node as a list)."""
    return values[0]


def photos_to_core(images: list[torch.Tensor]) -> list[torch.Tensor]:
    """A list of IMAGE batches (photos of any sizes, as an INPUT_IS_LIST node gets them) -> one 1 x 3 x H x W core
    tensor per photo."""
    return [photo for image in images for photo in image_to_core(image).split(1)]


def image_to_core(image: torch.Tensor) -> torch.Tensor:
    """ComfyUI IMAGE (B x H x W x C, C=3 or 4, [0, 1]) -> B x 3 x H x W float32 in [0, 1]."""
    if not isinstance(image, torch.Tensor) or image.dim() != 4 or image.shape[-1] not in (1, 3, 4):
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"expected an IMAGE batch B x H x W x 3, got {shape}")
    x = image[..., :3] if image.shape[-1] != 1 else image.expand(*image.shape[:3], 3)
    return x.movedim(-1, 1).float().clamp(0, 1).contiguous()


def core_to_image(x: torch.Tensor) -> torch.Tensor:
    """B x 3 x H x W [0, 1] -> ComfyUI IMAGE (B x H x W x 3 float32 on the CPU)."""
    return x.detach().movedim(1, -1).float().cpu().contiguous()
