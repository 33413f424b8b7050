"""Load and save generators: the authors' `.pth` state dicts and project `.safetensors` files with metadata.

Nothing here unpickles code: `.pth` files go through `torch.load(weights_only=True)` only.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .generator import Generator

ARCHITECTURE = "gap-diff-unet"
FORMAT_VERSION = "1"
OFFICIAL_PREFIX = "generator."


class CheckpointError(ValueError):
    """A model file (generator or surrogate) that cannot be used; the message names the file and the problem."""


@dataclass
class GeneratorInfo:
    """What a checkpoint says about its generator. `budget` is in grey levels (0-255 scale)."""

    ngf: int = 64
    budget: float = 8.0
    working_resolution: int = 512
    demo: bool = False
    provenance: str = ""
    surrogate: str = ""
    training_config: dict = field(default_factory=dict)
    source: str = ""

    def describe(self) -> str:
        label = "DEMO generator (trained on a toy model: protects nothing real)" if self.demo else "generator"
        return (f"{label}: width ngf={self.ngf}, trained budget {self.budget:g} grey levels, "
                f"working resolution {self.working_resolution}, surrogate {self.surrogate or 'unknown'}, "
                f"provenance: {self.provenance or 'unknown'}")


def load_generator(path: str | os.PathLike, device: str | torch.device = "cpu") -> Generator:
    """Load a generator (official `.pth` or project `.safetensors`) strictly, in eval mode.

    The returned module carries its `GeneratorInfo` as `.info`.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such generator checkpoint (get the authors' G_per16_pretrain.pth, "
                              "or train one with `gapdiff train`)")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the file is empty")
    if path.suffix == ".safetensors":
        state, info = _read_safetensors(path)
    else:
        state, info = _read_pth(path), GeneratorInfo(provenance=f"official-format state dict ({path.name})")
    state = _strip_prefix(state)
    if "conv1.weight" not in state:
        raise CheckpointError(f"{path}: not a GAP-Diff generator (no conv1.weight; keys start with "
                              f"{sorted(state)[:3]})")
    info.ngf = int(state["conv1.weight"].shape[0])
    info.source = str(path)
    with torch.device("meta"):  # no random initialisation: every tensor comes from the file
        generator = Generator(ngf=info.ngf)
    _load_strict(generator, state, path)
    generator.info = info
    return generator.to(device).eval()


def save_generator(generator: Generator, path: str | os.PathLike, info: GeneratorInfo) -> Path:
    """Write `generator` as `.safetensors` with metadata, atomically."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise CheckpointError(f"{path}: generators are saved as .safetensors")
    meta = asdict(info)
    meta.pop("source")
    metadata = {"format": "pt", "gapdiff.format_version": FORMAT_VERSION, "architecture": ARCHITECTURE,
                **{k: json.dumps(v) for k, v in meta.items()}}
    state = {k: v.detach().contiguous().cpu() for k, v in generator.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(state, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_info(path: str | os.PathLike) -> GeneratorInfo:
    """The metadata of a checkpoint without building the model (for `gapdiff info`)."""
    return load_generator(path).info


def _read_pth(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # the safe unpickler refuses code and foreign objects
        raise CheckpointError(f"{path}: cannot be read as a plain PyTorch state dict with the safe loader "
                              f"(weights_only=True); it may be corrupt, truncated, or contain code: {exc}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors, found {type(state).__name__}")
    return state


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a `.safetensors` file, read once; raises CheckpointError."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable .safetensors file ({exc})") from None


def _read_safetensors(path: Path) -> tuple[dict, GeneratorInfo]:
    state, meta = read_safetensors(path)
    if meta.get("architecture", ARCHITECTURE) != ARCHITECTURE:
        raise CheckpointError(f"{path}: architecture {meta['architecture']!r} is not {ARCHITECTURE!r}")
    info = GeneratorInfo()
    for key in (f.name for f in fields(GeneratorInfo) if f.name != "source"):
        if key in meta:
            try:
                setattr(info, key, json.loads(meta[key]))
            except json.JSONDecodeError:
                raise CheckpointError(f"{path}: metadata field {key!r} is not valid JSON") from None
    return state, info


def _strip_prefix(state: dict) -> dict:
    """Official checkpoints hold `Generator_Prelayer.state_dict()`: every key starts with `generator.`."""
    return {k.removeprefix(OFFICIAL_PREFIX): v for k, v in state.items()}


def _load_strict(generator: Generator, state: dict, path: Path) -> None:
    expected = generator.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        parts = []
        for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong)):
            if keys:
                shown = ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")
                parts.append(f"{label}: {shown}")
        raise CheckpointError(f"{path}: does not match the GAP-Diff generator (ngf={generator.ngf}); "
                              + "; ".join(parts))
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    generator.load_state_dict(state, strict=True, assign=True)
