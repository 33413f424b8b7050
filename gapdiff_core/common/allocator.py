"""Process-wide glibc malloc settings for gapdiff's short batch processes (`gapdiff protect`, `gapdiff compress`,
bench/protect.py).

By default glibc serves large blocks with mmap and hands freed heap back to the kernel, so every forward pass
of the generator page-faults its activations in again (at 512x512 in fp32 about 30 MB, 15 % of the time in
the kernel). `keep_freed_memory()` serves everything from the heap and keeps up to 512 MB of freed memory for
reuse. Hosts (ComfyUI, AUTOMATIC1111) and long-running commands (app, serve, train) keep the defaults.
"""
from __future__ import annotations

import ctypes

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4


def keep_freed_memory() -> None:
    """Keep freed memory for reuse instead of returning it to the kernel; a no-op outside glibc."""
    libc = _glibc()
    if libc is not None:
        libc.mallopt(_M_MMAP_MAX, 0)
        libc.mallopt(_M_TRIM_THRESHOLD, 512 << 20)
        libc.mallopt(_M_TOP_PAD, 64 << 20)


def release_freed_memory() -> None:
    """Hand the memory freed so far back to the kernel (glibc's `malloc_trim`): what building a model leaves
    behind (the checkpoint's tensors, the plain weights once packed, `auto`'s probe), so the work that follows
    starts from what is in use. A no-op outside glibc."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def _glibc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None
