"""Stand-in for `comfy.model_management`: the compute device and the user's Cancel flag (tests only)."""
from __future__ import annotations

import threading

import torch

_lock = threading.RLock()
interrupt_processing = False


class InterruptProcessingException(Exception):
    pass


def get_torch_device() -> torch.device:
    return torch.device("cpu")


def intermediate_device() -> torch.device:
    return torch.device("cpu")


def interrupt_current_processing(value: bool = True) -> None:
    global interrupt_processing
    with _lock:
        interrupt_processing = value


def processing_interrupted() -> bool:
    with _lock:
        return interrupt_processing


def throw_exception_if_processing_interrupted() -> None:
    """Raise once per Cancel, clearing the flag, as ComfyUI does."""
    global interrupt_processing
    with _lock:
        if interrupt_processing:
            interrupt_processing = False
            raise InterruptProcessingException()
