"""Load a :class:`Surrogate` offline: ``"tiny"``, a local diffusers folder, or a single-file SD 1.x/2.x checkpoint.

Nothing here touches the network: folders load with ``local_files_only=True``, and single files use the component
configs and tokenizer shipped in ``configs/`` (sd15, sd21-base, sd21-v, tiny, tiny-sd2). ``.ckpt`` pickles are read with
``torch.load(weights_only=True)`` only, so a file that needs arbitrary code to unpickle is refused.
"""
from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path

import torch

from ..model.checkpoint import CheckpointError, read_safetensors
from . import convert
from .surrogate import CONFIG_ROOT, SURROGATE_MARKER, Surrogate, family_of, resolution_of
from .tokenizer import tokenizer_from_config

TORCH_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")  # PyTorch files, read with torch.load(weights_only=True)
SINGLE_FILE_SUFFIXES = (".safetensors", *TORCH_SUFFIXES)  # every single-file checkpoint load_surrogate reads
BUNDLED_CONFIGS = ("sd15", "sd21-base", "sd21-v", "tiny", "tiny-sd2")


def bundled_config(name: str) -> Path:
    """Path of a shipped config folder (``sd15``, ``sd21-base``, ``sd21-v``, ``tiny``, ``tiny-sd2``)."""
    if name not in BUNDLED_CONFIGS:
        raise ValueError(f"unknown bundled config {name!r}; choose one of {', '.join(BUNDLED_CONFIGS)} or a folder")
    return CONFIG_ROOT / name


def _config_dir(config: str | Path) -> Path:
    if isinstance(config, str) and config in BUNDLED_CONFIGS:
        return bundled_config(config)
    path = Path(config)
    if not (path / "unet").is_dir():
        raise ValueError(f"{path}: not a diffusers config folder (no unet/ inside); "
                         f"or name a bundled config: {', '.join(BUNDLED_CONFIGS)}")
    return path


# ---------------------------------------------------------------- reading files safely
def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a ``.safetensors`` or a weights-only ``.ckpt``/``.pt`` file; raises CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return read_safetensors(path)
    if suffix in TORCH_SUFFIXES:
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise CheckpointError(
                f"{path}: refused: this pickle needs more than plain tensors to load (weights_only=True failed: "
                f"{str(e).splitlines()[0]}). It may run code; convert it to .safetensors with a trusted tool.") from e
        except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
            raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({e})") from e
        if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
            obj = obj["state_dict"]
        if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)} if isinstance(obj, dict) else {}
            if not tensors:
                raise CheckpointError(f"{path}: holds no tensor state dict")
            obj = tensors
        return obj, {}
    raise CheckpointError(f"{path}: unsupported file type {suffix!r}; expected one of "
                          f"{', '.join(sorted(SINGLE_FILE_SUFFIXES))} or a diffusers folder")


# ---------------------------------------------------------------- public entry point
def load_surrogate(spec: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None, *,
                   config: str | Path | None = None, prediction_type: str | None = None,
                   seed: int = 0) -> Surrogate:
    """Load a frozen surrogate from ``spec``:

    - ``"tiny"`` / ``"tiny-sd2"``: the built-in tiny random model (``seed``), SD 1.x / SD 2.x flavour;
    - a diffusers folder (``unet/``, ``vae/``, ``text_encoder/``, ``scheduler/``, optional ``tokenizer/``);
    - a single-file SD 1.x / 2.x checkpoint (``.safetensors``; ``.ckpt`` weights-only). ``config`` picks the
      component configs (a bundled name or a diffusers folder); default: auto-detected from the keys
      (SD 1.x -> sd15; SD 2.x -> sd21-v or sd21-base by ComfyUI's v-prediction heuristic), or the config recorded
      by :meth:`Surrogate.save_single_file`.

    ``prediction_type`` overrides the scheduler's (``"epsilon"`` / ``"v_prediction"``).
    """
    if isinstance(spec, str) and spec in ("tiny", "tiny-sd2"):
        surrogate = Surrogate.tiny(seed, family="sd1" if spec == "tiny" else "sd2")
    else:
        path = Path(spec)
        if path.is_dir():
            surrogate = _load_diffusers_folder(path)
        elif path.is_file():
            surrogate = _load_single_file(path, config)
        else:
            raise FileNotFoundError(f"{spec}: no such file or folder (expected 'tiny', a diffusers folder or an "
                                    f"SD 1.x/2.x .safetensors checkpoint)")
    if prediction_type is not None:
        if prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"prediction_type must be 'epsilon' or 'v_prediction', not {prediction_type!r}")
        surrogate.scheduler.register_to_config(prediction_type=prediction_type)
    return surrogate.to(device, dtype)


def _marker(folder: Path) -> dict:
    p = folder / SURROGATE_MARKER
    return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else {}


def _load_diffusers_folder(folder: Path) -> Surrogate:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel

    missing = [s for s in ("unet", "vae", "text_encoder", "scheduler") if not (folder / s).is_dir()]
    if missing:
        raise CheckpointError(f"{folder}: not a Stable Diffusion diffusers folder (missing {', '.join(missing)}/)")
    kw = {"local_files_only": True}
    try:
        unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", **kw)
        vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", **kw)
        text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", **kw)
        scheduler = DDPMScheduler.from_pretrained(folder, subfolder="scheduler", **kw)
    except (OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{folder}: cannot load diffusers components ({e})") from e
    info = _marker(folder)
    family = family_of(unet, text_encoder, info)
    tok_dir = folder / "tokenizer"
    tokenizer = tokenizer_from_config(tok_dir if tok_dir.is_dir() else bundled_config(
        "sd15" if family == "sd1" else "sd21-base") / "tokenizer")
    return Surrogate(vae, text_encoder, tokenizer, unet, scheduler, name=info.get("name", folder.name),
                     is_demo=bool(info.get("is_demo", False)), resolution=resolution_of(unet, vae), family=family,
                     config_dir=folder)


def _load_single_file(path: Path, config: str | Path | None) -> Surrogate:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
    from transformers import CLIPTextModel

    state, meta = read_state_dict(path)
    try:
        family = convert.detect_sd_version(state)
    except ValueError as e:
        raise CheckpointError(f"{path}: not a Stable Diffusion 1.x/2.x checkpoint: {e}") from e
    if config is None:
        recorded = meta.get("gapdiff.config")
        if recorded in BUNDLED_CONFIGS:
            config = recorded
        elif family == "sd1":
            config = "sd15"
        else:
            config = "sd21-v" if convert.looks_v_prediction(state) else "sd21-base"
    cfg = _config_dir(config)
    kw = {"config": str(cfg), "local_files_only": True}
    try:
        unet = UNet2DConditionModel.from_single_file(state, subfolder="unet", **kw)
        vae = AutoencoderKL.from_single_file(state, subfolder="vae", **kw)
        text_encoder = create_diffusers_clip_model_from_ldm(
            CLIPTextModel, state, subfolder="text_encoder", config=str(cfg), local_files_only=True)
    except (ValueError, RuntimeError, KeyError) as e:
        raise CheckpointError(f"{path}: does not fit the config {cfg.name!r} ({type(e).__name__}: {e}); "
                              f"pass config= the matching one of {', '.join(BUNDLED_CONFIGS)} or a folder") from e
    for comp_name, comp in (("unet", unet), ("vae", vae), ("text_encoder", text_encoder)):
        meta_params = [n for n, p in comp.named_parameters() if p.device.type == "meta"]
        if meta_params:
            raise CheckpointError(f"{path}: {comp_name} weights missing for the config {cfg.name!r} "
                                  f"(e.g. {meta_params[:3]}); pass the matching config=")
    scheduler = DDPMScheduler.from_pretrained(cfg, subfolder="scheduler", local_files_only=True)
    tokenizer = tokenizer_from_config(cfg / "tokenizer")
    name = meta.get("gapdiff.name", path.stem)
    is_demo = meta.get("gapdiff.is_demo", "False") == "True"
    return Surrogate(vae, text_encoder, tokenizer, unet, scheduler, name=name, is_demo=is_demo,
                     resolution=resolution_of(unet, vae), family=family, config_dir=cfg)
