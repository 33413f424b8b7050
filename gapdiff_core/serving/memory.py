"""The service's peak memory as a formula of its settings (docs/serving.md explains each term).

    peak RSS <= ready + generator + BATCH_BYTES_PER_PIXEL * max_batch_pixels + QUEUE_BYTES_PER_PIXEL * max_queue_pixels
                + BODY_COPIES * limit_concurrency * max_body_bytes

`ready`: the process once the generator is loaded; `generator`: the generator's own working memory for one batch
of `max_batch` photos at the working size (it depends on the generator's width and the device, not on the
photos' size); then the one batch that runs (its photos decoded, protected and measured), the answers of every
admitted image (encoded, base64, JSON), and the request bodies being read or parsed.
"""
from __future__ import annotations

from .settings import ServerSettings, ServiceSettings

#: Per pixel of the running batch: the decoded uploads, their stack and the protected copy (3 x 3 bytes); the
#: Protector's float32 image and step at full size and the int16 step (12 + 12 + 12 + 6); the measurement of one
#: image (int16 and float64 differences), with room to spare.
BATCH_BYTES_PER_PIXEL = 64
#: Per admitted pixel, until its answer is sent: the encoded image (PNG of a protected photo: up to ~3.1 bytes),
#: its base64 (4.2), the JSON answer as text and as bytes (2 x 4.2) and the copy written to the socket (4.2).
QUEUE_BYTES_PER_PIXEL = 20
#: A request body is held whole while it is read, and its multipart parts are copied out of it.
BODY_COPIES = 2


def peak_memory_bound(settings: ServiceSettings, server: ServerSettings, ready: int, generator: int) -> int:
    """The most bytes of RSS the service reaches under any load, given its RSS when `ready` and the `generator`'s
    working memory for one batch (both measured)."""
    return (ready + generator + BATCH_BYTES_PER_PIXEL * settings.max_batch_pixels
            + QUEUE_BYTES_PER_PIXEL * settings.max_queue_pixels
            + BODY_COPIES * server.limit_concurrency * settings.max_body_bytes)


def process_memory(pid: int | str = "self", field: str = "VmHWM") -> int:
    """Bytes of a process's `field` in /proc/PID/status (Linux): VmRSS now, VmHWM its peak so far."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise ValueError(f"/proc/{pid}/status has no {field}")


def generator_working_memory(settings: ServiceSettings, size: tuple[int, int] = (683, 512)) -> int:
    """What a batch of `max_batch` photos at the working size (height, width) adds to the peak RSS of a fresh
    Python process in the generator (Linux: read from /proc)."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys; from gapdiff_core.serving.memory import _generator_here; "
            "from gapdiff_core.serving.settings import ServiceSettings; "
            "print(_generator_here(ServiceSettings.model_validate_json(sys.argv[1]), tuple(map(int, sys.argv[2:]))))")
    run = subprocess.run([sys.executable, "-c", code, settings.model_dump_json(), *map(str, size)],
                         cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, check=True)
    return int(run.stdout)


def _generator_here(settings: ServiceSettings, size: tuple[int, int]) -> int:
    import numpy as np

    from ..model.protector import Protector

    protector = Protector(settings.generator, budget=settings.budget, mode=settings.mode, device=settings.device,
                          precision=settings.precision, batch_size=settings.max_batch)
    photos = np.zeros((settings.max_batch, *size, 3), np.uint8)
    protector.protect_uint8(photos[:1, :64, :64])  # the model's one-off allocations belong to `ready`
    before = process_memory(field="VmRSS")
    protector.protect_uint8(photos)
    return max(0, process_memory(field="VmHWM") - before)
