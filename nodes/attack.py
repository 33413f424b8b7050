"""DreamBooth Test Attack and Generate: what a deepfake maker would do with the (protected) photos."""
from __future__ import annotations

import filecmp
import os
import shutil
import tempfile
from pathlib import Path

from ..gapdiff_core.common.prompts import CLASS_PROMPT, INSTANCE_PROMPT
from ..gapdiff_core.io.atomic import write_file
from . import host
from .surrogate import SURROGATE

CATEGORY = "GAP-Diff"
ATTACKED = "GAPDIFF_ATTACKED_MODEL"
PRESETS = ("tiny-lora", "tiny-full", "lora", "paper-full")
SCHEDULERS = ("ddim", "pndm", "dpm++", "euler", "ddpm")


def _progress_callback(progress: host.Progress):
    def update(step, total, loss=None):
        progress.step(step, total)
    return update


def _stop_on_cancel() -> bool:
    """Passed as `should_stop`: raises ComfyUI's interruption (so the run ends as 'interrupted'), else False."""
    host.check_interrupted()
    return False


def save_lora(source: Path, name: str, overwrite: bool) -> Path:
    """Copy the attack's LoRA to models/loras/`name` atomically. A file of that name with the same content is left
    as it is; a different one is replaced only with `overwrite`, else FileExistsError says how to go on."""
    target = Path(host.loras_folder()) / name
    refusal = FileExistsError(f"models/loras/{name} ({target}) already exists and holds a different LoRA; set "
                              f"overwrite to true to replace it, or choose another lora_name (this attack's LoRA "
                              f"stays at {source})")
    if target.exists() and not overwrite:
        if filecmp.cmp(source, target, shallow=False):
            return target
        raise refusal
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        return write_file(target, lambda tmp: shutil.copyfile(source, tmp), overwrite=overwrite)
    except FileExistsError:  # written by someone else since the check
        raise refusal from None


class DreamBoothTestAttack:
    DESCRIPTION = ("Fine-tunes a copy of the surrogate on the photos with DreamBooth (LoRA or full), as a deepfake "
                   "maker would. Presets: tiny-* for the demo model, lora (rank 8, 800 steps) and paper-full (the "
                   "paper's protocol) for a real SD model; steps > 0 overrides the preset's. With lora_name set, a "
                   "LoRA attack is also saved to models/loras for ComfyUI's own LoRA loader; a different file of that "
                   "name is replaced only with overwrite on. Takes photos of any sizes (a list from Photos of One "
                   "Person, or a batch): each is resized and centre-cropped to the training resolution, as "
                   "DreamBooth does.")
    CATEGORY = CATEGORY
    RETURN_TYPES = (ATTACKED, "STRING")
    RETURN_NAMES = ("attacked_model", "info")
    FUNCTION = "attack"
    INPUT_IS_LIST = True  # the whole set of photos at once, whatever their sizes

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "surrogate": (SURROGATE, {}),
            "images": ("IMAGE", {"tooltip": "The instance photos of one person (protected or clean)."}),
            "instance_prompt": ("STRING", {"default": INSTANCE_PROMPT}),
            "class_prompt": ("STRING", {"default": CLASS_PROMPT,
                                        "tooltip": "Prompt of the prior-preservation class images."}),
            "preset": (list(PRESETS), {"default": "tiny-lora"}),
            "steps": ("INT", {"default": 0, "min": 0, "max": 10000, "step": 1,
                              "tooltip": "Training steps; 0 keeps the preset's."}),
            "resolution": ("INT", {"default": 0, "min": 0, "max": 2048, "step": 64,
                                   "tooltip": "Training (and later generation) resolution; 0 = the model's own "
                                              "(512 for SD 1.5). Lower is faster on a CPU."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFF, "control_after_generate": True}),
            "lora_name": ("STRING", {"default": "",
                                     "tooltip": "LoRA presets: also save the LoRA as models/loras/<name>.safetensors "
                                                "(empty: do not save)."}),
        }, "optional": {
            "overwrite": ("BOOLEAN", {"default": False,
                                      "tooltip": "Replace a different models/loras file of the same name (off: "
                                                 "such a file is kept and the node stops with an error)."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, lora_name):
        lora_name = host.the_one(lora_name)  # INPUT_IS_LIST: ComfyUI validates with lists too
        if lora_name and (os.path.basename(lora_name) != lora_name or lora_name.startswith(".")):
            return f"lora_name must be a plain file name without folders, got {lora_name!r}"
        return True

    def attack(self, surrogate, images, instance_prompt, class_prompt, preset, steps, resolution, seed, lora_name,
               overwrite=(False,)):
        from ..gapdiff_core.attack import DreamBoothAttack
        from ..gapdiff_core.attack import preset as make_preset

        surrogate, instance_prompt, class_prompt, preset, steps, resolution, seed, lora_name, overwrite = map(
            host.the_one, (surrogate, instance_prompt, class_prompt, preset, steps, resolution, seed, lora_name,
                           overwrite))
        overrides = {"instance_prompt": instance_prompt, "class_prompt": class_prompt, "seed": int(seed),
                     "save_model": False}
        if steps > 0:
            overrides["max_train_steps"] = int(steps)
        if resolution > 0:
            if resolution % surrogate.latent_scale:
                raise ValueError(f"resolution must be a multiple of {surrogate.latent_scale}, got {resolution}")
            overrides["resolution"] = int(resolution)
        config = make_preset(preset, **overrides)
        if lora_name and config.mode != "lora":
            raise ValueError(f"preset {preset!r} fine-tunes the full model: only LoRA presets can be saved as a "
                             f"LoRA (clear lora_name or pick a *lora preset)")
        runs = host.temp_folder("gapdiff_attack")
        os.makedirs(runs, exist_ok=True)
        out_dir = tempfile.mkdtemp(dir=runs)
        progress = host.Progress(config.max_train_steps)
        attack = DreamBoothAttack(surrogate, config, cache_dir=host.temp_folder("gapdiff_class_images"))
        with host.training_mode():
            photos = [p.clone() for p in host.photos_to_core(images)]  # normal tensors, not inference-mode ones
            result = attack.run(photos, out_dir, progress=_progress_callback(progress), should_stop=_stop_on_cancel,
                                resume=False)
        info = (f"{result.surrogate.name}: {config.mode} DreamBooth, preset {preset}, {result.steps_done} steps at "
                f"{result.surrogate.resolution} px" + (f", final loss {result.losses[-1]:.4f}" if result.losses else ""))
        if lora_name and result.lora_path is not None:
            name = lora_name if lora_name.endswith(".safetensors") else lora_name + ".safetensors"
            save_lora(Path(result.lora_path), name, overwrite)
            info += f"; LoRA saved as models/loras/{name}"
        if surrogate.is_demo:
            info = "DEMO model: " + info
        return (result, info)


class Generate:
    DESCRIPTION = ("Samples images from the attacked model: `count` images for each prompt line (image j of a "
                   "prompt uses seed + j). These are the deepfakes whose quality the evaluation measures.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("images",)
    FUNCTION = "generate"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "attacked_model": (ATTACKED, {}),
            "prompts": ("STRING", {"default": INSTANCE_PROMPT, "multiline": True,
                                   "tooltip": "One prompt per line."}),
            "count": ("INT", {"default": 4, "min": 1, "max": 256, "step": 1, "tooltip": "Images per prompt."}),
            "steps": ("INT", {"default": 50, "min": 1, "max": 1000, "step": 1}),
            "guidance": ("FLOAT", {"default": 7.5, "min": 1.0, "max": 30.0, "step": 0.5}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFF, "control_after_generate": True}),
            "scheduler": (list(SCHEDULERS), {"default": "ddim"}),
        }}

    def generate(self, attacked_model, prompts, count, steps, guidance, seed, scheduler):
        from ..gapdiff_core.attack import GenerationConfig, generate

        lines = tuple(p.strip() for p in prompts.splitlines() if p.strip())
        if not lines:
            raise ValueError("prompts is empty: write at least one prompt (one per line)")
        config = GenerationConfig(prompts=lines, images_per_prompt=int(count), steps=int(steps),
                                  guidance_scale=float(guidance), scheduler=scheduler, seed=int(seed))
        progress = host.Progress(len(lines) * int(count))
        result = generate(attacked_model.surrogate, config, progress=_progress_callback(progress),
                          should_stop=_stop_on_cancel)
        return (host.core_to_image(result.images),)
