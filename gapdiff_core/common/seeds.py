"""Seeds of derived random streams (per step, per epoch, per process, per image), from one function.

A stream's seed is a fixed linear mix of the run's seed and the stream's coordinates, taken modulo 2**63 so
``torch.Generator.manual_seed`` accepts it. Each kind of stream has its own weights (below), so streams of
different kinds do not share seeds for small coordinates; the weights are those the streams have always used,
which keeps results reproducible across versions.
"""
from __future__ import annotations

# weights of (seed, coordinate 1, coordinate 2, ...)
STEP = (1_000_003, 7_919, 1)      # training step: (seed, process, step); DreamBooth: (seed, step, salt)
AUGMENT = (1_000_003, 10_007, 1)  # training augmentation: (seed, epoch, image index)
EPOCH = (7_919, 1)                # training epoch order: (seed, epoch)
PROCESS = (1_000, 1)              # per-process stream of a run: (seed, process index)


def derive_seed(weights: tuple[int, ...], seed: int, *coords: int) -> int:
    """``sum(w * part) mod 2**63`` over ``(seed, *coords)``: e.g. ``derive_seed(STEP, seed, rank, step)``."""
    parts = (seed, *coords)
    if len(parts) != len(weights):
        raise ValueError(f"a stream with weights {weights} takes {len(weights)} parts, got {len(parts)}")
    return sum(int(w) * int(p) for w, p in zip(weights, parts)) % (2 ** 63)
