"""The device rule every command and the service share: auto, cpu, cuda, cuda:N or mps, refused when this machine
lacks it."""
from __future__ import annotations


class NotADevice(ValueError):
    """The text names no device at all (the message names it)."""


def check_device(text: str) -> str:
    """``text`` if this machine has that device; NotADevice, or a ValueError saying why this machine lacks it
    (callers say which value and where it came from)."""
    if text == "auto":
        return text
    import torch

    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise NotADevice(f"{text!r} is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("CUDA is not available here (no NVIDIA GPU, or PyTorch built without CUDA); use cpu or "
                             "auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"only {torch.cuda.device_count()} CUDA device(s) here")
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
            raise ValueError("Apple MPS is not available here; use cpu or auto")
    elif dev.type != "cpu":
        raise ValueError("unsupported device; use auto, cpu, cuda, cuda:N or mps")
    return text
