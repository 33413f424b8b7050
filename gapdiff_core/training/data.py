"""Image-folder dataset for generator training: resize to the working resolution, skip unusable images."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from ..common import seeds
from ..io import image_extensions
from ..samples import SAMPLES_DIR

log = logging.getLogger("gapdiff.train")


def list_images(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: no such image folder")
    suffixes = image_extensions()
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in suffixes and p.is_file())


def usable_images(paths: Sequence[Path], resolution: int, min_side_fraction: float = 0.5,
                  max_aspect: float = 2.0) -> tuple[list[Path], list[tuple[Path, str]]]:
    """(kept, skipped-with-reason): skips unreadable, too small and too oblong images (reads headers only)."""
    kept, skipped = [], []
    for p in paths:
        try:
            with Image.open(p) as im:
                w, h = im.size
        except Exception as exc:  # noqa: BLE001 - any decoder failure means "skip this file"
            skipped.append((p, f"unreadable ({type(exc).__name__}: {exc})"))
            continue
        if min(w, h) < min_side_fraction * resolution:
            skipped.append((p, f"too small ({w}x{h} < {min_side_fraction:g} x {resolution})"))
        elif max(w, h) / min(w, h) > max_aspect:
            skipped.append((p, f"too oblong ({w}x{h}, aspect > {max_aspect:g})"))
        else:
            kept.append(p)
    for p, why in skipped:
        log.warning("skipping %s: %s", p, why)
    return kept, skipped


def load_rgb01(path: Path) -> torch.Tensor:
    """3×H×W float32 in [0, 1] (EXIF orientation applied, any mode converted to RGB)."""
    from ..io import load_image

    return load_image(path).tensor()[0]


class ImageFolderDataset(torch.utils.data.Dataset):
    """Images resized (squashed, as the official FaceDataset) to ``resolution``², float32 in [0, 1].

    With ``augment``, a random square-ish crop of 80-100 % of each side and a random horizontal flip are applied
    first; the draw depends only on (seed, epoch, index), so runs and resumed runs see the same images.
    With ``cache``, decoded images are kept in memory (small folders such as the demo's sample photos).
    """

    def __init__(self, paths: Sequence[Path], resolution: int = 512, augment: bool = False, seed: int = 0,
                 cache: bool = False):
        if not paths:
            raise ValueError("no usable training images (see the 'skipping' warnings above)")
        self.paths, self.resolution, self.augment, self.seed = list(paths), int(resolution), augment, int(seed)
        self.epoch = 0
        self._cache: Optional[dict[int, torch.Tensor]] = {} if cache else None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.paths)

    def _image(self, i: int) -> torch.Tensor:
        if self._cache is not None and i in self._cache:
            return self._cache[i]
        x = load_rgb01(self.paths[i])
        if self._cache is not None:
            self._cache[i] = x
        return x

    def __getitem__(self, i: int) -> torch.Tensor:
        x = self._image(i)
        if self.augment:
            g = torch.Generator().manual_seed(seeds.derive_seed(seeds.AUGMENT, self.seed, self.epoch, i))
            _, h, w = x.shape
            f = 0.8 + 0.2 * float(torch.rand((), generator=g))
            ch, cw = max(1, int(h * f)), max(1, int(w * f))
            top = int(torch.randint(0, h - ch + 1, (), generator=g))
            left = int(torch.randint(0, w - cw + 1, (), generator=g))
            x = x[:, top:top + ch, left:left + cw]
            if float(torch.rand((), generator=g)) < 0.5:
                x = x.flip(-1)
        x = F.interpolate(x[None], size=(self.resolution, self.resolution), mode="bilinear", antialias=True,
                          align_corners=False)[0]
        return x.clamp(0, 1)


class EpochSampler(torch.utils.data.Sampler):
    """A fresh permutation per epoch from (seed, epoch): resumable without saving sampler state."""

    def __init__(self, n: int, seed: int = 0, shuffle: bool = True):
        self.n, self.seed, self.shuffle, self.epoch = n, int(seed), shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        if not self.shuffle:
            return iter(range(self.n))
        g = torch.Generator().manual_seed(seeds.derive_seed(seeds.EPOCH, self.seed, self.epoch))
        return iter(torch.randperm(self.n, generator=g).tolist())


def split_train_val(train_dir: Optional[str], val_dir: Optional[str], val_count: int, resolution: int,
                    min_side_fraction: float, max_aspect: float) -> tuple[list[Path], list[Path]]:
    """Usable training and validation paths. Without ``val_dir`` the last ``val_count`` images are held out
    (unless that would leave no training image, in which case validation reuses training images: logged)."""
    folder = Path(train_dir) if train_dir else SAMPLES_DIR
    train, _ = usable_images(list_images(folder), resolution, min_side_fraction, max_aspect)
    if val_dir:
        val, _ = usable_images(list_images(val_dir), resolution, min_side_fraction, max_aspect)
        return train, val[:max(val_count, 1)]
    if len(train) > val_count:
        return train[:-val_count], train[-val_count:]
    log.warning("%s: only %d usable images; validating on training images", folder, len(train))
    return train, train[:max(val_count, 1)]
