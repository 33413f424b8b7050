"""The attack's resumable state in ``OUT/checkpoint``: trainable tensors and optimizer state (safetensors) plus JSON,
written atomically; nothing is pickled."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..common.optimizer_state import flatten_optimizer, unflatten_optimizer
from ..io import atomic

CHECKPOINT_DIR = "checkpoint"
OPTIMIZER = "optimizer"  # prefix of the optimizer state in a checkpoint (optimizer_state.flatten_optimizer)


def save_checkpoint(folder: Path, step: int, params: dict, optimizer, fingerprint: str, losses: list[float],
                    scaler=None) -> None:
    """Write ``folder`` atomically (:func:`atomic.folder_beside`): a kill leaves the previous checkpoint or this one."""
    from safetensors.torch import save_file

    tensors, state = {}, {"step": step, "fingerprint": fingerprint, "param_names": list(params), "losses": losses,
                          "grad_scaler": scaler.state_dict() if scaler is not None else None}
    flatten_optimizer(OPTIMIZER, optimizer.state_dict(), tensors, state)
    with atomic.folder_beside(folder) as tmp:
        save_file({n: p.detach().cpu().contiguous() for n, p in params.items()}, str(tmp / "trainable.safetensors"))
        if tensors:
            save_file(tensors, str(tmp / "optimizer.safetensors"))
        (tmp / "state.json").write_text(json.dumps(state), encoding="utf-8")


def load_checkpoint(folder: Path, params: dict, optimizer, fingerprint: str, scaler=None) -> tuple[int, list]:
    """Restore ``params``, ``optimizer`` (and ``scaler``) from ``folder``; returns (step, losses so far). A checkpoint
    of another attack or format is a ValueError naming the folder."""
    from safetensors.torch import load_file

    state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    if OPTIMIZER not in state:
        raise ValueError(f"{folder}: checkpoint in an older format; delete {folder} to start this attack afresh")
    if state["fingerprint"] != fingerprint:
        raise ValueError(f"{folder}: checkpoint of a different attack (model, photos or settings changed); "
                         f"use another output folder or delete {folder}")
    if state["param_names"] != list(params):
        raise ValueError(f"{folder}: checkpoint parameters do not match this model")
    weights = load_file(str(folder / "trainable.safetensors"))
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(weights[n].to(p.device, p.dtype))
    tensors = load_file(str(folder / "optimizer.safetensors")) if (folder / "optimizer.safetensors").is_file() else {}
    optimizer.load_state_dict(unflatten_optimizer(OPTIMIZER, tensors, state))
    if scaler is not None and state.get("grad_scaler"):
        scaler.load_state_dict(state["grad_scaler"])
    return int(state["step"]), list(state["losses"])
