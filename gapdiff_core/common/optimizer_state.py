"""Optimizer state as flat tensors plus JSON, so checkpoints hold no pickles.

``flatten`` splits ``optimizer.state_dict()`` into tensors named ``PREFIX/PARAM_INDEX/KEY`` (for safetensors) and a
JSON-able record of the parameter groups and non-tensor values; ``unflatten`` rebuilds the state dict.
"""
from __future__ import annotations

import torch


def flatten_optimizer(prefix: str, state_dict: dict, tensors: dict, meta: dict) -> None:
    """Per-parameter tensors -> ``tensors``; param_groups and scalars -> ``meta[prefix]``."""
    scalars: dict = {}
    for idx, entry in state_dict["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{prefix}/{idx}/{key}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    meta[prefix] = {"param_groups": state_dict["param_groups"], "scalars": scalars}


def unflatten_optimizer(prefix: str, tensors: dict, meta: dict) -> dict:
    """The state dict :func:`flatten_optimizer` took apart (ready for ``optimizer.load_state_dict``)."""
    state: dict = {}
    for name, value in tensors.items():
        if name.startswith(prefix + "/"):
            _, idx, key = name.split("/", 2)
            state.setdefault(int(idx), {})[key] = value
    for idx, entry in meta[prefix]["scalars"].items():
        state.setdefault(int(idx), {}).update(entry)
    return {"state": state, "param_groups": meta[prefix]["param_groups"]}
