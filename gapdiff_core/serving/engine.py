"""The protection behind the service: one `Protector`, batches of equal-size 8-bit photos in, protected out."""
from __future__ import annotations

from typing import Hashable, Sequence

import numpy as np

from ..common.budget import check_budget
from ..model.protector import MODES
from .settings import ServiceSettings


class Engine:
    """A loaded generator and the `Protector` built from it. A batch key is (shape, mode, budget): photos of
    one shape share a forward pass; mode and budget come from each request, the budget at most the service's
    (the Protector's automatic precision is checked to stay within 1 grey level of fp32 at that budget)."""

    def __init__(self, settings: ServiceSettings):
        from ..model.checkpoint import load_generator
        from ..model.protector import Protector

        generator = load_generator(settings.generator)
        self.info = generator.info
        self.protector = Protector(generator, budget=settings.budget, mode=settings.mode, device=settings.device,
                                   precision=settings.precision, batch_size=settings.max_batch)

    def key(self, rgb: np.ndarray, mode: str | None, budget: float | None) -> Hashable:
        """The batch key of a request, with the defaults filled in; raises ValueError for a bad mode or budget."""
        mode = self.protector.mode if mode is None else mode
        budget = self.protector.budget if budget is None else check_budget(budget, "budget")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        if budget > self.protector.budget:  # auto precision was checked at the service's budget
            raise ValueError(f"budget must be at most {self.protector.budget:g} grey levels (the service's budget; "
                             f"start it with --budget to allow more), not {budget:g}")
        return rgb.shape, mode, budget

    def check_size(self, key: Hashable, name: str) -> None:
        """Raise ValueError for a photo the Protector refuses (a working-size copy too large to hold)."""
        shape, mode, budget = key
        self._protector(mode, budget).check_size(shape[0], shape[1], name)

    def run_batch(self, key: Hashable, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Protect equal-shape H x W x 3 uint8 photos in one call of the Protector."""
        _, mode, budget = key
        return list(self._protector(mode, budget).protect_uint8(np.stack(images)))

    def _protector(self, mode: str, budget: float):
        return self.protector.with_options(budget=budget, mode=mode)
