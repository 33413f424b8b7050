"""The protection behind the service: one `Protector`; a batch of uploads in, each decoded, protected, measured and
encoded in the batch's worker thread, so that a decoded image exists only while its batch runs."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable, Sequence

import numpy as np

from ..common.budget import check_budget
from ..model.protector import MODES
from .settings import ServiceSettings

JPEG_QUALITY = 95


@dataclass
class Job:
    """One upload waiting for its batch: its name, the file's bytes (decoded when the batch runs), the format to
    answer in."""

    name: str
    data: bytes
    format: str


@dataclass
class Protected:
    """One protected image, encoded, with what the answer reports about it: the change and PSNR measured on the
    returned file (for jpg, after JPEG), and a warning when that file breaks the budget."""

    name: str
    data: bytes
    format: str
    max_change: float
    psnr: float
    batch_size: int
    budget: float
    mode: str
    notes: list[str]
    demo: bool
    warning: str | None = None


class Engine:
    """A loaded generator and the `Protector` built from it. A batch key is ((width, height) as the header declares
    it, mode, budget): uploads of one size share a forward pass; mode and budget come from each request, the budget
    at most the service's (the Protector's automatic precision is checked to stay within 1 grey level of fp32 at
    that budget)."""

    def __init__(self, settings: ServiceSettings):
        from ..model.checkpoint import load_generator
        from ..model.protector import Protector

        generator = load_generator(settings.generator)
        self.info = generator.info
        self.max_pixels = settings.max_pixels
        self.protector = Protector(generator, budget=settings.budget, mode=settings.mode, device=settings.device,
                                   precision=settings.precision, batch_size=settings.max_batch)

    def key(self, size: tuple[int, int], mode: str | None, budget: float | None) -> Hashable:
        """The batch key of a request, with the defaults filled in; raises ValueError for a bad mode or budget."""
        mode = self.protector.mode if mode is None else mode
        budget = self.protector.budget if budget is None else check_budget(budget, "budget")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        if budget > self.protector.budget:  # auto precision was checked at the service's budget
            raise ValueError(f"budget must be at most {self.protector.budget:g} grey levels (the service's budget; "
                             f"start it with --budget to allow more), not {budget:g}")
        return tuple(size), mode, budget

    def check_size(self, key: Hashable, name: str) -> None:
        """Raise ValueError for a photo the Protector refuses (a working-size copy too large to hold); the working
        size's pixel count does not depend on the EXIF orientation."""
        (width, height), mode, budget = key
        self._protector(mode, budget).check_size(height, width, name)

    def run_batch(self, key: Hashable, jobs: Sequence[Job]) -> list[Protected | Exception]:
        """Decode the uploads, protect those of one decoded shape together (EXIF orientation may turn some), and
        measure and encode each; an upload that fails to decode gets its ImageError, the others go on."""
        from ..io import ImageError, load_image

        _, mode, budget = key
        protector = self._protector(mode, budget)
        outcomes: list[Protected | Exception | None] = [None] * len(jobs)
        groups: dict[tuple, list] = {}
        for i, job in enumerate(jobs):
            try:
                image = load_image(job.name, self.max_pixels, data=job.data)
            except ImageError as exc:
                outcomes[i] = exc.with_traceback(None)
                continue
            groups.setdefault(image.rgb.shape, []).append((i, image))
        while groups:
            _, members = groups.popitem()
            protected = protector.protect_uint8(np.stack([image.rgb for _, image in members]))
            for (i, image), pixels in zip(members, protected):
                outcomes[i] = self._answer(jobs[i], image, pixels, len(members), key)
            del protected, members
        return outcomes

    def _answer(self, job: Job, image, pixels: np.ndarray, batch_size: int, key) -> Protected:
        from ..io import encode_image, load_image
        from ..metrics.fidelity import change_stats

        _, mode, budget = key
        lossy = job.format == "jpg"
        data = encode_image(pixels, None if lossy else image.alpha, format=job.format, quality=JPEG_QUALITY,
                            metadata={"icc_profile": image.metadata.get("icc_profile")}, name=job.name)
        returned = load_image(job.name, self.max_pixels, data=data).rgb if lossy else pixels  # png, webp: lossless
        stats = change_stats(image.rgb, returned)
        warning = None
        if stats.max_change > budget:
            warning = (f"JPEG quality {JPEG_QUALITY} moved pixels by up to {stats.max_change:g} grey levels, beyond "
                       f"the {budget:g}-level budget; ask for png or webp for the exact protection")
        return Protected(name=job.name, data=data, format=job.format, max_change=stats.max_change, psnr=stats.psnr,
                         batch_size=batch_size, budget=budget, mode=mode, notes=image.notes,
                         demo=bool(self.info.demo), warning=warning)

    def _protector(self, mode: str, budget: float):
        return self.protector.with_options(budget=budget, mode=mode)
