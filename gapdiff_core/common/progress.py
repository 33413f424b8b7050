"""Progress callbacks and cancellation shared by the long loops: attack, generation, protections, evaluation."""
from __future__ import annotations

import threading
from typing import Callable, Optional, Union

# progress(step, total, loss or None)
ProgressFn = Optional[Callable[[int, int, Optional[float]], None]]
# a callable returning True to stop, or a threading.Event that is set to stop
StopFn = Optional[Union[Callable[[], bool], threading.Event]]


def stop_requested(should_stop: StopFn) -> bool:
    """True when cancellation was asked for (an Event that is set, or a callable that returns True)."""
    if should_stop is None:
        return False
    if isinstance(should_stop, threading.Event):
        return should_stop.is_set()
    return bool(should_stop())


class TqdmProgress:
    """A ``progress`` callback that drives a tqdm bar (for the CLI); use as a context manager."""

    def __init__(self, desc: str, unit: str = "step"):
        self.desc, self.unit, self.bar = desc, unit, None

    def __call__(self, step: int, total: int, loss: float | None = None) -> None:
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=total, desc=self.desc, unit=self.unit, initial=0)
        self.bar.total = total
        self.bar.update(step - self.bar.n)
        if loss is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()
