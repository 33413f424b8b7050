"""Protector: photos in, protected photos out, in one forward pass of a trained generator.

Images are float32 tensors B x 3 x H x W in [0, 1] (`Protector.__call__`) or 8-bit H x W x 3 arrays
(`Protector.protect_uint8`, the same result with fewer full-resolution float passes). Outputs are exactly 8-bit
values and, relative to the 8-bit input, never move a pixel by more than `budget` grey levels.
"""
from __future__ import annotations

import copy
import math
import os
import time
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..common.allocator import release_freed_memory
from ..common.budget import check_budget
from ..common.sizes import short_side_size
from .checkpoint import GeneratorInfo, load_generator
from .generator import MIN_SIZE, NORMS, SIZE_MULTIPLE, Generator, InferenceGenerator
from .packed_cpu import OneDNNGenerator, pack_for_cpu

MODES = ("working", "native")
#: Largest photo at the working resolution (a 512 x 8192 strip: +1.4 GB at ngf=64, fp32, CPU; bench/cli_memory.py).
#: A small file can be a huge strip (16 x 100000 pixels is 512 x 3.2 million at the generator).
MAX_WORKING_PIXELS = 2048 * 2048
#: What each choice of normalisation computes, for banners, reports and node info.
NORM_DESCRIPTIONS = {
    "image": ("per-image statistics: the function the authors ran at inference (batch 1, train-mode BatchNorm), "
              "dropout off"),
    "running": "running statistics (eval-mode BatchNorm, folded; not the function the authors ran)",
    "official": "the authors' generate.py (train mode, dropout on, one image per batch, seeded)",
}
#: Devices whose convolution and normalisation kernels are fastest on channels-last activations (oneDNN; cuDNN's
#: tensor-core kernels in fp16), so the generator runs in that layout there.
CHANNELS_LAST_DEVICES = ("cpu", "cuda")
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
#: The precision a user may ask for: auto (the fastest within 1 grey level of fp32, see default_precision) or one of
#: PRECISIONS. The CLI, the service and the hosts offer these.
PRECISION_CHOICES = ("auto", *PRECISIONS)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """`auto` picks CUDA, then MPS, then CPU."""
    if str(device) != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def default_precision(device: torch.device) -> str:
    """The fastest precision worth trying on `device`: bf16 on CPUs with native bf16 (AVX512-BF16 / AMX), fp16 on
    CUDA, fp32 elsewhere. `Protector(precision="auto")` keeps it only where it stays within 1 grey level of fp32
    for the generator at hand (bench/protect.py measures the distance)."""
    if device.type == "cuda":
        return "fp16"
    if device.type == "cpu" and torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return "bf16"
    return "fp32"


def padded_size(n: int) -> int:
    """The smallest side the generator accepts that is >= n."""
    return max(MIN_SIZE, math.ceil(n / SIZE_MULTIPLE) * SIZE_MULTIPLE)


def pad_to(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Pad at the bottom/right to h x w, reflecting where the image is large enough, else replicating."""
    ph, pw = h - x.shape[-2], w - x.shape[-1]
    if ph == 0 and pw == 0:
        return x
    mode = "reflect" if ph < x.shape[-2] and pw < x.shape[-1] else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


def budget_step(delta: torch.Tensor, budget: float, *, in_place: bool = False) -> torch.Tensor:
    """`delta` (in [0,1] units) as whole grey levels, clipped to +-floor(budget) (in_place: overwriting delta)."""
    limit = math.floor(budget + 1e-6)
    return (delta.mul_(255) if in_place else delta * 255).round_().clamp_(-limit, limit)


def apply_budget(x: torch.Tensor, delta: torch.Tensor, budget: float) -> torch.Tensor:
    """Add `delta` (in [0,1] units) to `x` in 8-bit steps, never more than `budget` grey levels per pixel.

    The step is rounded to whole grey levels and clipped to the budget before it is added to the 8-bit version
    of `x`, so the bound holds exactly on the saved image (the official code truncates instead, which biases the
    image darker and can exceed the budget by one level).
    """
    return budget_step(delta, budget).add_((x * 255).round_()).clamp_(0, 255).div_(255)


class Protector:
    """Protect photos of any size with a trained GAP-Diff generator.

    mode="working" computes the perturbation at the resolution a fine-tuner trains at (`working_resolution` on the
    short side, padded to a multiple of 256), resizes it to the photo and clips it to the budget; mode="native"
    runs the generator at full resolution, tiled with overlap for large photos so memory stays bounded.

    norm="image" (the default) computes the function the authors ran at inference (their generate.py: batch 1,
    train-mode BatchNorm), dropout off: every BatchNorm normalises each photo with its own statistics, so the result
    is deterministic and never depends on the other photos of a batch (training normalised over batches of 6 with
    dropout on: not this function). The statistics cover the photo only, never the padding (they are
    masked to the photo's region at every level). In native mode each tile of a large photo is normalised with its
    own statistics, as the generator sees a photo of that size: sharing the whole photo's statistics across tiles
    agrees less with the untiled result (measured: correlation 0.89 against 0.93 with each tile's own), because a
    tile's deep layers see only the tile. norm="running" normalises with the running statistics (eval mode), an
    explicit option only. official_mode=True reproduces the authors' generate.py: train mode,
    dropout on, one image per batch, seeded (statistics over the padded input, as their module computes them).
    """

    def __init__(self, generator: Generator | str | os.PathLike, *, budget: float | None = None,
                 mode: str = "working", working_resolution: int | None = None, device: str = "auto",
                 precision: str = "auto", norm: str = "image", official_mode: bool = False, seed: int = 0,
                 batch_size: int = 4, tile_size: int = 1024, tile_overlap: int = 256):
        self.device = resolve_device(device)
        if not isinstance(generator, torch.nn.Module):
            generator = load_generator(generator)
        self.info: GeneratorInfo = getattr(generator, "info", GeneratorInfo())
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, not {norm!r}")
        if precision != "auto" and precision not in PRECISIONS:
            raise ValueError(f"precision must be auto or one of {sorted(PRECISIONS)}, not {precision!r}")
        self.budget = check_budget(self.info.budget if budget is None else budget)
        if tile_size % SIZE_MULTIPLE or tile_size < MIN_SIZE or not 0 <= tile_overlap < tile_size:
            raise ValueError(f"tile_size must be a multiple of {SIZE_MULTIPLE} >= {MIN_SIZE} and "
                             f"0 <= tile_overlap < tile_size (got {tile_size}, {tile_overlap})")
        self.mode, self.official_mode, self.seed = mode, official_mode, seed
        self.norm = "official" if official_mode else norm
        self.working_resolution = int(working_resolution or self.info.working_resolution)
        self.batch_size = 1 if official_mode else max(1, batch_size)
        self.tile_size, self.tile_overlap = tile_size, tile_overlap
        self._build(generator, default_precision(self.device) if precision == "auto" else precision)
        self.precision_note = "" if precision != "auto" else "auto"
        self.probe_seconds: float | None = None  # how long `auto`'s probe took
        if precision == "auto" and self.precision != "fp32":
            self._keep_reduced_precision_only_if_close(generator)
        if self.device.type == "cpu":
            release_freed_memory()

    def _build(self, generator: Generator, precision: str) -> None:
        self.precision, self.dtype = precision, PRECISIONS[precision]
        if self.official_mode:
            self.model = copy.deepcopy(generator).train().to(self.device, self.dtype)
        else:  # the inference form sets each layer's dtype itself
            self.model = InferenceGenerator(generator, self.norm, self.dtype).to(self.device)
        if self.device.type == "cpu" and not self.official_mode:
            self.model = pack_for_cpu(self.model)
        if self.device.type in CHANNELS_LAST_DEVICES and not isinstance(self.model, OneDNNGenerator):
            self.model = self.model.to(memory_format=torch.channels_last)  # packed weights have oneDNN's own layout

    def _keep_reduced_precision_only_if_close(self, generator: Generator) -> None:
        """`auto`: keep the device's reduced precision only if, on a probe photo, its step stays within half a grey
        level of fp32's (so the 8-bit outputs differ by at most 1). Per-image statistics over the few pixels of
        the deepest layers can be ill-conditioned (an untrained generator's are: 1.7-3.4 grey levels off in bf16),
        and then fp32 is used. The fp32 side runs on an unpacked model that shares the generator's weights (no
        second copy of them) unless the chosen function needs its own (folded or official mode)."""
        start = time.perf_counter()
        probe = _probe_photo()
        reduced = self.perturbation(probe)
        with torch.inference_mode():
            reference = self._fp32_model(generator)
            if self.official_mode:
                with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                    torch.manual_seed(self.seed)
                    exact = reference(probe.to(self.device) * 2 - 1)
            else:
                exact = reference(probe.to(self.device) * 2 - 1)
        del reference
        deviation = (reduced - exact.float()).abs().max().item() * self.budget
        note = f"auto: {self.precision} is {deviation:.2f} grey levels from fp32 on a probe photo"
        if deviation > 0.5:
            self.model = None  # freed before the fp32 model is built
            self._build(generator, "fp32")
        self.probe_seconds = time.perf_counter() - start
        self.precision_note = (f"{note}, {'kept' if deviation <= 0.5 else 'too far: fp32 used'} "
                               f"(probe {self.probe_seconds:.2f} s)")

    def _fp32_model(self, generator: Generator) -> torch.nn.Module:
        """The function of this Protector in fp32, for the probe: per-image statistics run unpacked on the
        generator's own fp32 weights (shared, not copied, on a CPU)."""
        if self.official_mode:
            return copy.deepcopy(generator).train().to(self.device, torch.float32)
        return InferenceGenerator(generator, self.norm, torch.float32).to(self.device)

    def with_options(self, *, budget: float | None = None, mode: str | None = None) -> "Protector":
        """This Protector at another budget or mode, sharing the loaded model (nothing is reloaded or re-probed):
        both are plain settings of the forward pass. The `auto` precision was checked at this Protector's budget,
        so a larger budget is refused: build a new Protector for it."""
        budget = self.budget if budget is None else check_budget(budget)
        mode = self.mode if mode is None else mode
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        if self.precision_note.startswith("auto") and self.precision != "fp32" and budget > self.budget:
            raise ValueError(f"budget {budget:g} is above {self.budget:g}, the budget the automatic precision was "
                             "checked at; load the generator again with the larger budget")
        if (budget, mode) == (self.budget, self.mode):
            return self
        other = copy.copy(self)
        other.budget, other.mode = budget, mode
        return other

    def __call__(self, images: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        """Protect a B x 3 x H x W batch (or a list of 1 x 3 x H x W / 3 x H x W images of different sizes)."""
        if isinstance(images, torch.Tensor):
            _check_images(images)
            return torch.cat([self._protect_batch(chunk) for chunk in images.split(self.batch_size)])
        return [self(img if img.dim() == 4 else img.unsqueeze(0)) for img in images]

    def protect_uint8(self, rgb: np.ndarray) -> np.ndarray:
        """Protect 8-bit photos: H x W x 3 or N x H x W x 3 uint8 in, the same shape out. Equal to
        `to_uint8(self(x))` bit for bit; faster and lighter for large photos (the step is added in 8 bits)."""
        arr = np.asarray(rgb)
        if arr.dtype != np.uint8 or arr.ndim not in (3, 4) or arr.shape[-1] != 3:
            raise ValueError(f"expected H x W x 3 or N x H x W x 3 uint8 pixels, got {arr.dtype} {arr.shape}")
        batch = torch.from_numpy(np.ascontiguousarray(arr if arr.ndim == 4 else arr[None]))
        out = torch.empty_like(batch)
        with torch.inference_mode():
            for chunk, dest in zip(batch.split(self.batch_size), out.split(self.batch_size)):
                x8 = chunk.to(self.device)
                raw = self._raw(x8.permute(0, 3, 1, 2).float().div_(255))  # its float input: freed once resized
                step = budget_step(raw.float().mul_(self.budget / 255), self.budget, in_place=True)
                dest.copy_(step.add_(x8.permute(0, 3, 1, 2)).clamp_(0, 255).permute(0, 2, 3, 1))  # whole numbers
        result = out.numpy()
        return result if arr.ndim == 4 else result[0]

    def perturbation(self, images: torch.Tensor) -> torch.Tensor:
        """The generator's raw perturbation (tanh output, in [-1, 1]) at the size of `images`."""
        _check_images(images)
        with torch.inference_mode():
            return self._raw(images.to(self.device)).float()

    def _protect_batch(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            x = x.to(self.device, torch.float32)
            delta = self._raw(x).float().mul_(self.budget / 255)
            return apply_budget(x, delta, self.budget).cpu()

    def check_size(self, h: int, w: int, name: object = "the photo") -> None:
        """Refuse an h x w photo whose working-resolution copy would exceed MAX_WORKING_PIXELS (its memory follows
        the working size, not the file); native mode runs in tiles of bounded memory."""
        if self.mode != "working":
            return
        wh, ww = short_side_size(h, w, self.working_resolution)
        if wh * ww > MAX_WORKING_PIXELS:
            raise ValueError(f"{name}: a {w}x{h} photo is {ww}x{wh} at the working resolution "
                             f"{self.working_resolution}, over {MAX_WORKING_PIXELS:,} pixels (its aspect ratio is too "
                             "extreme); crop it, or use native mode (tiled, bounded memory)")

    def _raw(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if self.mode == "native":
            return self._tiled(x)
        self.check_size(h, w)
        wh, ww = short_side_size(h, w, self.working_resolution)
        small = x if (wh, ww) == (h, w) else F.interpolate(x, (wh, ww), mode="bilinear", antialias=True,
                                                            align_corners=False)
        del x  # where the caller keeps no reference (protect_uint8), a full-size float photo less in memory
        raw = self._run(pad_to(small, padded_size(wh), padded_size(ww)), valid=(wh, ww))[..., :wh, :ww]
        if (wh, ww) != (h, w):
            raw = F.interpolate(raw.float(), (h, w), mode="bilinear", antialias=True, align_corners=False)
        return raw

    def _tiled(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        t, stride = self.tile_size, self.tile_size - self.tile_overlap
        ph, pw = padded_size(h), padded_size(w)
        if ph <= t and pw <= t:
            return self._run(pad_to(x, ph, pw), valid=(h, w))[..., :h, :w]
        th, tw = min(t, ph), min(t, pw)
        ph = max(ph, (_tile_count(ph, th, stride) - 1) * stride + th)
        pw = max(pw, (_tile_count(pw, tw, stride) - 1) * stride + tw)
        xp = pad_to(x, ph, pw)
        acc = torch.zeros(x.shape[0], 3, ph, pw, device=x.device)
        weight = torch.zeros(1, 1, ph, pw, device=x.device)
        ramp = _feather(th, tw, self.tile_overlap, x.device)
        starts = [(y0, x0) for y0 in _tile_starts(ph, th, stride) for x0 in _tile_starts(pw, tw, stride)]
        per_call = max(1, self.batch_size // x.shape[0])  # tiles through the generator together (each normalised
        for i in range(0, len(starts), per_call):          # with its own statistics: batching changes nothing)
            group = starts[i:i + per_call]
            raw = self._run(torch.cat([xp[..., y0:y0 + th, x0:x0 + tw] for y0, x0 in group])).float()
            for (y0, x0), tile in zip(group, raw.split(x.shape[0])):
                acc[..., y0:y0 + th, x0:x0 + tw] += tile * ramp
                weight[..., y0:y0 + th, x0:x0 + tw] += ramp
        return (acc / weight)[..., :h, :w]

    def _run(self, x: torch.Tensor, valid: tuple[int, int] | None = None) -> torch.Tensor:
        """The generator's raw output for x (B x 3 x H x W in [0, 1], a valid generator size)."""
        x = (x * 2 - 1).to(self.dtype)
        if self.device.type in CHANNELS_LAST_DEVICES:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.official_mode:
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                torch.manual_seed(self.seed)
                out = self.model(x)
        else:
            out = self.model(x, valid=valid)
        if not torch.isfinite(out).all():
            source = f" ({self.info.source})" if self.info.source else ""
            raise FloatingPointError(f"the generator{source} produced non-finite values (NaN or Inf): its weights "
                                     f"are broken, or {self.precision} overflowed (try precision fp32)")
        return out


def protect(images: torch.Tensor, generator: Generator | str | os.PathLike, **options) -> torch.Tensor:
    """One-call protection: `protect(batch, "G.safetensors", budget=8)`; options as for `Protector`."""
    return Protector(generator, **options)(images)


def _probe_photo() -> torch.Tensor:
    """A bundled face photo at 512 x 512 (1 x 3 x H x W in [0, 1]), for the `auto` precision check."""
    from PIL import Image

    from ..samples import SAMPLES_DIR

    with Image.open(SAMPLES_DIR / "obama.jpg") as im:
        rgb = np.asarray(im.convert("RGB").resize((512, 512), Image.BICUBIC))
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float() / 255


def _check_images(x: torch.Tensor) -> None:
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"expected images of shape B x 3 x H x W, got {tuple(x.shape)}")
    if x.is_floating_point() and (x.min() < 0 or x.max() > 1):
        raise ValueError("expected pixel values in [0, 1]")


def _tile_count(n: int, t: int, stride: int) -> int:
    return 1 if n <= t else math.ceil((n - t) / stride) + 1


def _tile_starts(n: int, t: int, stride: int) -> Iterable[int]:
    return range(0, max(n - t, 0) + 1, stride)


def _feather(h: int, w: int, overlap: int, device) -> torch.Tensor:
    """Blend weights for a tile: 1 inside, rising linearly across the overlap at each edge, never zero."""
    def ramp(n):
        i = torch.arange(n, device=device, dtype=torch.float32)
        edge = torch.minimum(i + 1, n - i) / max(overlap, 1)
        return edge.clamp(1e-3, 1)
    return ramp(h)[:, None] * ramp(w)[None, :]
