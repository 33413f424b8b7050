"""The shared step loop of the iterative protections: surrogate, L∞ budget in grey levels, sign-PGD, surrogate
fine-tuning, progress and cancellation.

Every method subclasses :class:`IterativeProtection`, sets ``name``, ``paper``, ``defaults`` (its authors'
settings, budgets and steps in grey levels on 0–255) and ``tiny`` (a few-step schedule for tests), and implements
``perturb(x0) -> x_adv`` at the working resolution plus ``schedule_units(set_size)`` (how many gradient units
its full schedule costs, for the benchmark's extrapolation).

Size handling (all methods): photos are resized (stretched, bilinear with antialias) to the surrogate's working
resolution, the perturbation is computed there, and only the *perturbation* is resized back and added to the
full-resolution photo, as Mist-v2 does with ``--resize`` and as :class:`gapdiff_core.Protector` does. The original
tools instead resize + centre-crop and return 512×512 crops. The final projection is
:func:`gapdiff_core.protect.apply_budget`: 8-bit rounding, then every pixel within ``floor(budget)`` grey levels.
"""
from __future__ import annotations

import contextlib
import copy
import math
import time
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from ..attack.progress import ProgressFn, StopFn, stop_requested
from ..losses import INSTANCE_PROMPT, denoising_error, dreambooth_loss
from ..protect import apply_budget

GREY = 1.0 / 255.0


class ProtectionCancelled(RuntimeError):
    """Raised inside ``protect`` when ``should_stop`` asks to stop; no partial output is returned."""


def with_unet(surrogate, unet):
    """A shallow view of ``surrogate`` whose UNet is ``unet`` (VAE, text encoder, scheduler shared)."""
    view = copy.copy(surrogate)
    view.unet = unet
    return view


def trainable_copy(unet: torch.nn.Module) -> torch.nn.Module:
    """A private copy of a (frozen) UNet whose parameters require grad."""
    clone = copy.deepcopy(unet)
    clone.requires_grad_(True)
    return clone


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size, mode="bilinear", antialias=True, align_corners=False)


class IterativeProtection:
    """Base class: ``protect(images)`` runs the method's ``perturb`` on the whole set of photos at once."""

    name: str = ""
    paper: str = ""
    defaults: dict = {}
    tiny: dict = {}
    prompt: str = INSTANCE_PROMPT
    # keys every method accepts besides its own defaults
    COMMON = ("budget", "step", "resolution", "seed", "prompt", "prior_weight")

    def __init__(self, surrogate, *, schedule: str = "default", progress: ProgressFn = None,
                 should_stop: StopFn = None, class_images: Optional[torch.Tensor] = None,
                 reference: Optional[torch.Tensor] = None, **overrides):
        if schedule not in ("default", "tiny"):
            raise ValueError(f"gapdiff_core/protections: schedule must be 'default' or 'tiny', not {schedule!r}")
        settings = dict(self.defaults, resolution=None, seed=0, prompt=self.prompt, prior_weight=1.0)
        settings.update(self.defaults)
        if schedule == "tiny":
            settings.update(self.tiny)
        unknown = sorted(set(overrides) - set(settings))
        if unknown:
            raise ValueError(f"gapdiff_core/protections/{self.name}: unknown setting(s) {', '.join(unknown)}; "
                             f"known: {', '.join(sorted(settings))}")
        settings.update(overrides)
        if not 0 < float(settings["budget"]) <= 255:
            raise ValueError(f"{self.name}: budget must be in (0, 255] grey levels, not {settings['budget']}")
        self.settings = settings
        self.surrogate = surrogate
        self.progress, self.should_stop = progress, should_stop
        self.class_images, self.reference = class_images, reference
        self.stats: dict[str, list] = {}  # kind -> [count, seconds]
        self._done = self._total = 0

    # ------------------------------------------------------------ public API
    @property
    def budget(self) -> float:
        return float(self.settings["budget"])

    @property
    def resolution(self) -> int:
        return int(self.settings["resolution"] or self.surrogate.resolution)

    def protect(self, images: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        """Protect a set of photos together (B×3×H×W in [0, 1], or a list of 1×3×H×W / 3×H×W of any sizes).

        Returns 8-bit-valued images of the input sizes; no pixel moves by more than ``floor(budget)`` grey levels.
        """
        as_list = not isinstance(images, torch.Tensor)
        photos = [im if im.dim() == 4 else im.unsqueeze(0) for im in images] if as_list else list(images.split(1))
        for im in photos:
            if im.dim() != 4 or im.shape[1] != 3:
                raise ValueError(f"{self.name}: images must be B×3×H×W (or a list of 3×H×W), got {tuple(im.shape)}")
        dev = self.surrogate.device
        res = (self.resolution, self.resolution)
        x0 = torch.cat([resize(im.float().to(dev), res) for im in photos]).clamp(0, 1)
        self.stats.clear()
        self._done, self._total = 0, self.total_steps(x0.shape[0])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(self.settings["seed"]))
            x_adv = self.perturb(x0).detach()
        delta = x_adv - x0
        out = [apply_budget(im.float().to(dev), resize(d.unsqueeze(0), im.shape[-2:]), self.budget).cpu()
               for im, d in zip(photos, delta)]
        return out if as_list else torch.cat(out)

    __call__ = protect

    # ------------------------------------------------------------ to implement
    def perturb(self, x0: torch.Tensor) -> torch.Tensor:
        """x0: the clean set at working resolution -> perturbed set (within the budget)."""
        raise NotImplementedError

    def total_steps(self, n: int) -> int:
        """Progress total (the number of ``tick`` calls ``perturb`` will make)."""
        return 1

    def schedule_units(self, set_size: int = 4) -> dict[str, float]:
        """Gradient units of the full schedule for a set of ``set_size`` photos (kinds as in :meth:`timed`):
        ``pgd`` (image gradient through VAE + UNet, per image), ``encoder`` (through the VAE encoder only, per
        image), ``train`` (one full-UNet fine-tuning step on one image), ``train_kv`` (a step on K/V
        projections only), ``train_lora`` (a LoRA step), ``clone`` (a copy of the UNet)."""
        raise NotImplementedError

    # ------------------------------------------------------------ shared pieces
    @contextlib.contextmanager
    def timed(self, kind: str, units: float = 1):
        start = time.perf_counter()
        yield
        entry = self.stats.setdefault(kind, [0.0, 0.0])
        entry[0] += units
        entry[1] += time.perf_counter() - start

    def tick(self, loss: Optional[float] = None) -> None:
        """One step done: report progress, honour cancellation."""
        self._done += 1
        if self.progress is not None:
            self.progress(self._done, max(self._total, self._done), loss)
        if stop_requested(self.should_stop):
            raise ProtectionCancelled(f"{self.name}: cancelled after {self._done} of {self._total} steps")

    def embeds(self, n: int, prompt: Optional[str] = None) -> torch.Tensor:
        return self.surrogate.encode_prompt(prompt or self.settings["prompt"]).expand(n, -1, -1)

    def project(self, x_adv: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """L∞ projection onto the budget ball around x0 and the [0, 1] box."""
        eps = self.budget * GREY
        return torch.min(torch.max(x_adv, x0 - eps), x0 + eps).clamp(0, 1)

    def sign_step(self, x_adv: torch.Tensor, x0: torch.Tensor, grad: torch.Tensor, step: Optional[float] = None,
                  ascend: bool = True) -> torch.Tensor:
        """One sign-gradient step of ``step`` grey levels (ascent by default), then the projection."""
        step = float(self.settings["step"] if step is None else step) * GREY
        direction = grad.sign() if ascend else -grad.sign()
        return self.project(x_adv.detach() + step * direction, x0).detach()

    def denoising_grad(self, unet, x_adv: torch.Tensor, timesteps: Optional[torch.Tensor] = None,
                       transform: Optional[Callable] = None) -> tuple[torch.Tensor, float]:
        """Gradient of the mean denoising MSE (DreamBooth loss, instance prompt) w.r.t. the images."""
        x = x_adv.detach().requires_grad_(True)
        with self.timed("pgd", x.shape[0]):
            inp = transform(x) if transform is not None else x
            loss = denoising_error(with_unet(self.surrogate, unet), inp, self.embeds(x.shape[0]),
                                   timesteps=timesteps).mean()
            grad, = torch.autograd.grad(loss, x)
        return grad, float(loss.detach())

    def pgd(self, unet, x_adv: torch.Tensor, x0: torch.Tensor, steps: int, transform: Optional[Callable] = None,
            timestep_sets: Optional[list[torch.Tensor]] = None) -> torch.Tensor:
        """``steps`` untargeted sign-PGD steps maximising the denoising loss under ``unet`` (Anti-DB ``pgd_attack``).

        ``timestep_sets``: per image, the timesteps to sample from (SimAC); default uniform over [0, T)."""
        for _ in range(int(steps)):
            t = None
            if timestep_sets is not None:
                t = torch.stack([s[torch.randint(len(s), (1,))[0]] for s in timestep_sets]).to(x_adv.device)
            grad, loss = self.denoising_grad(unet, x_adv, t, transform)
            x_adv = self.sign_step(x_adv, x0, grad)
            self.tick(loss)
        return x_adv

    def finetune(self, unet, images: torch.Tensor, steps: int, lr: float, params=None, kind: str = "train",
                 optimizer: Optional[torch.optim.Optimizer] = None) -> torch.optim.Optimizer:
        """``steps`` DreamBooth steps on ``unet`` (one image per step, cycling, as Anti-DB's ``train_one_epoch``),
        plus prior preservation on class images when they were given. A fresh AdamW per call unless
        ``optimizer`` is passed (Anti-DB creates one per call)."""
        params = [p for p in (unet.parameters() if params is None else params) if p.requires_grad]
        if optimizer is None:
            optimizer = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
        view = with_unet(self.surrogate, unet)
        images = images.detach()
        pw = float(self.settings.get("prior_weight", 1.0))
        for i in range(int(steps)):
            with self.timed(kind):
                x = images[i % images.shape[0]].unsqueeze(0)
                cls = cls_emb = None
                if self.class_images is not None and pw > 0:
                    cls = self.class_images[i % self.class_images.shape[0]].unsqueeze(0).to(x)
                    cls = resize(cls, tuple(x.shape[-2:]))
                    cls_emb = self.surrogate.encode_prompt("a photo of person")
                loss = dreambooth_loss(view, x, self.embeds(1), cls, cls_emb, prior_weight=pw)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
            self.tick(float(loss.detach()))
        optimizer.zero_grad(set_to_none=True)
        return optimizer

    def clean_reference(self, x0: torch.Tensor) -> torch.Tensor:
        """The clean set the surrogate is fine-tuned on (Anti-DB's set_A); defaults to the photos themselves."""
        if self.reference is None:
            return x0
        return resize(self.reference.float().to(x0.device), tuple(x0.shape[-2:]))

    def clone_unet(self, unet=None) -> torch.nn.Module:
        with self.timed("clone"):
            return trainable_copy(self.surrogate.unet if unet is None else unet)

    def describe(self) -> str:
        s = self.settings
        return (f"{self.name}: budget {s['budget']:g} grey levels (effective {math.floor(s['budget'] + 1e-6)} after "
                f"8-bit rounding), step {s['step']:g}; {self.paper}")
