"""Training checkpoints without pickles: tensors in ``state.safetensors``, everything else in ``state.json``."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

TENSORS, META = "state.safetensors", "state.json"


def flatten_optimizer(prefix: str, state_dict: dict, tensors: dict, meta: dict) -> None:
    """Optimizer state: per-parameter tensors -> ``tensors``; param_groups and scalars -> ``meta``."""
    scalars: dict = {}
    for idx, entry in state_dict["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{prefix}/{idx}/{key}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    meta[prefix] = {"param_groups": state_dict["param_groups"], "scalars": scalars}


def unflatten_optimizer(prefix: str, tensors: dict, meta: dict) -> dict:
    state: dict = {}
    for name, value in tensors.items():
        if name.startswith(prefix + "/"):
            _, idx, key = name.split("/", 2)
            state.setdefault(int(idx), {})[key] = value
    for idx, entry in meta[prefix]["scalars"].items():
        state.setdefault(int(idx), {}).update(entry)
    return {"state": state, "param_groups": meta[prefix]["param_groups"]}


def prefixed(prefix: str, state_dict: dict) -> dict:
    return {f"{prefix}/{k}": v.detach().contiguous().cpu() for k, v in state_dict.items()}


def unprefixed(prefix: str, tensors: dict) -> dict:
    n = len(prefix) + 1
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix + "/")}


def write_checkpoint(folder: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Write atomically: into ``folder.tmp``, then rename."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / TENSORS))
    (tmp / META).write_text(json.dumps(meta, indent=1), encoding="utf-8")
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    return folder


def read_checkpoint(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    folder = Path(folder)
    if not (folder / TENSORS).is_file() or not (folder / META).is_file():
        raise ValueError(f"{folder}: not a training checkpoint (needs {TENSORS} and {META})")
    return load_file(str(folder / TENSORS)), json.loads((folder / META).read_text(encoding="utf-8"))


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under ``root`` (``step-NNNNNNNN``), oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp")
                  and (p / META).is_file())


def prune_checkpoints(root: Path, keep: int) -> None:
    for old in list_checkpoints(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
