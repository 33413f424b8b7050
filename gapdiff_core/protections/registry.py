"""The one registry of protection methods, by name with aliases: `gapdiff protect --method`, `gapdiff evaluate
--method`, the protocol runner, the ComfyUI Iterative Protection node and the benches all read it.

Names: ``none`` (the clean photos, the protocol's baseline), ``random-noise`` (±budget sign noise on every pixel,
the protocol's control), ``gap-diff`` (one forward pass of a trained generator, :class:`GapDiffMethod`) and the
iterative methods of :data:`METHODS`. :data:`ALIASES` maps other spellings to them
(``generator`` and ``gapdiff`` to gap-diff, ``anti-dreambooth`` to aspl, ``mist-v2`` to ace). Glaze is closed
source (a desktop app and web service, no published code): it is listed in :data:`CLOSED` and not imitated.

Each entry builds two things: :func:`get_protection` gives the method as an object (``.protect(images)``), and its
``factory`` gives the protocol runner's set function (:data:`ProtectFn`, see :func:`register_protection`). Each
also states the budget its authors published (:func:`published_budget`), which ``--protocol paper`` runs it at.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from .aspl import ASPL, FSMG
from .base import IterativeProtection
from .caat import CAAT
from .metacloak import MetaCloak
from .mist import ACE, Mist
from .photoguard import PhotoGuard
from .simac import SimAC

# a protection in the protocol: (an identity's set_B photos, its clean set_A photos), lists of 1×3×H×W in [0, 1]
# -> the protected set_B photos; iterative methods protect the set together, as their released code does
ProtectFn = Callable[[list, list], list]
NOISE_STREAM = (1_000_037, 1)  # the seed of the random-noise control on photo i: (seed, i)

METHODS: dict[str, type[IterativeProtection]] = {
    cls.name: cls for cls in (ASPL, FSMG, PhotoGuard, Mist, ACE, MetaCloak, CAAT, SimAC)}
ALIASES = {"anti-dreambooth": "aspl", "anti-db": "aspl", "mist-v2": "ace", "mistv2": "ace", "gapdiff": "gap-diff",
           "generator": "gap-diff"}
CLOSED = {"glaze": "Glaze (UChicago) is closed source — a desktop app and web service with no published code or "
                   "weights; it is not imitated here."}


@dataclass(frozen=True)
class Registered:
    """A registered method: its protocol ``factory``, a description for reports, and the class
    :func:`get_protection` builds (None for methods that exist only in the protocol, such as ``none``)."""

    name: str
    factory: Callable[..., ProtectFn]
    describe: str = ""
    cls: Optional[type] = None
    budget: Optional[float] = None  # the budget its authors published (grey levels), None where unknown
    budget_source: str = ""


PROTECTIONS: dict[str, Registered] = {}


def register_protection(name: str, factory: Callable[..., ProtectFn], describe: str = "",
                        cls: Optional[type] = None, budget: Optional[float] = None, budget_source: str = "") -> None:
    """Make ``name`` (and ``name:arg``) a method: ``factory(arg, budget, settings, model, cache_dir)`` returns a
    :data:`ProtectFn`, which protects one identity's set_B photos (a list of 1×3×H×W in [0, 1]) given its clean
    set_A photos (a list, maybe empty). ``settings`` is the protocol's configuration (``device``, ``resolution``,
    ``seed``, ``norm``, ``official_mode``, ``generator_precision``, ``class_images``, ``reference_numerics``);
    ``model()`` returns the protocol's diffusion model, loaded once and shared with the attack stage (methods that
    attack it must not change it); ``cache_dir`` is the protocol's cache folder (class images live in
    ``cache_dir/class_images``, shared with the attack stage). ``describe`` is shown in reports; ``cls`` is what :func:`get_protection` builds; ``budget`` the budget (grey levels) its
    authors published and ``budget_source`` where (None: unknown)."""
    PROTECTIONS[name.strip().lower()] = Registered(name.strip().lower(), factory, describe, cls, budget, budget_source)


def published_budget(name: str) -> tuple[Optional[float], str]:
    """(budget in grey levels, where it is published) of method ``name``; (None, "unknown") where no budget is
    known. Iterative methods: their authors' released scripts (:attr:`IterativeProtection.budget_source`)."""
    entry = PROTECTIONS[canonical_name(name)]
    return (entry.budget, entry.budget_source) if entry.budget is not None else (None, "unknown")


def canonical_name(name: str) -> str:
    """The registered name of ``name`` or one of its aliases (any case); a clear error for closed or unknown ones."""
    key = str(name).strip().lower()
    key = ALIASES.get(key, key)
    if key in CLOSED:
        raise ValueError(CLOSED[key])
    if key not in PROTECTIONS:
        raise ValueError(f"unknown protection {name!r}; choose one of {', '.join(PROTECTIONS)}")
    return key


class GapDiffMethod:
    """GAP-Diff in the registry's interface: one forward pass of a trained generator (:class:`Protector`)."""

    name = "gap-diff"
    paper = "GAP-Diff (NDSS 2025): one forward pass of a trained generator, budget 8 grey levels"
    defaults = {"budget": 8.0, "mode": "working"}

    def __init__(self, generator, **options):
        from ..model.protector import Protector

        if generator is None:
            raise ValueError("gap-diff needs a generator checkpoint: get_protection('gap-diff', generator=PATH)")
        self.protector = Protector(generator, **options)
        self.settings = {"budget": self.protector.budget, "mode": self.protector.mode}

    @property
    def budget(self) -> float:
        return self.protector.budget

    def protect(self, images, reference=None):
        """Photos (B×3×H×W or a list) -> protected photos; each is computed on its own (``reference`` unused)."""
        if isinstance(images, torch.Tensor):
            return self.protector(images)
        return [self.protector(x if x.dim() == 4 else x.unsqueeze(0)) for x in images]

    __call__ = protect


def get_protection(name: str, surrogate=None, *, schedule: str = "default", generator=None, **overrides):
    """The protection called ``name`` with ``.protect(images) -> images``, ``.name``, ``.defaults``, ``.settings``.

    ``surrogate``: a :class:`~gapdiff_core.diffusion.Surrogate`, or a spec for
    :func:`~gapdiff_core.diffusion.load_surrogate` (``"tiny"``, a diffusers folder, a single-file checkpoint);
    default the tiny demo model (protects nothing real). ``schedule="tiny"`` picks the few-step test schedule.
    ``overrides``: any of the method's settings (``budget`` and ``step`` in grey levels, schedule lengths, …), plus
    ``progress``, ``should_stop``, ``class_images`` (N×3×H×W) and ``class_cache_dir`` (where generated class images
    are cached). For ``gap-diff`` pass ``generator=`` and :class:`Protector` options instead.
    """
    entry = PROTECTIONS[canonical_name(name)]
    if entry.cls is None:
        raise ValueError(f"{entry.name!r} ({entry.describe}) is a method of `gapdiff evaluate` only, not a "
                         "protection to run on photos")
    if entry.cls is GapDiffMethod:
        return GapDiffMethod(generator, **overrides)
    if surrogate is None or isinstance(surrogate, str) or hasattr(surrogate, "__fspath__"):
        from ..diffusion import load_surrogate

        surrogate = load_surrogate(surrogate or "tiny")
    return entry.cls(surrogate, schedule=schedule, **overrides)


# ---------------------------------------------------------------- the protocol's set functions
def _none_factory(arg, budget, settings, model, cache_dir) -> ProtectFn:
    return lambda photos, clean_set: photos


def _random_noise_factory(arg, budget, settings, model, cache_dir) -> ProtectFn:
    """±``budget`` grey levels of random sign on every pixel (the largest change the budget allows, with no
    adversarial direction), photo i seeded by (``settings.seed``, i): the control a protection must beat."""
    from ..common.seeds import derive_seed
    from ..model.protector import apply_budget

    if arg:
        raise ValueError(f"method 'random-noise:{arg}' takes no argument")

    def noise(x: torch.Tensor, seed: int) -> torch.Tensor:
        sign = torch.randint(0, 2, x.shape, generator=torch.Generator().manual_seed(seed)).float() * 2 - 1
        return apply_budget(x, sign.to(x.device) * (math.floor(budget + 1e-6) / 255), budget)
    return lambda photos, clean_set: [noise(x, derive_seed(NOISE_STREAM, settings.seed, i))
                                      for i, x in enumerate(photos)]


def _gap_diff_factory(arg, budget, settings, model, cache_dir) -> ProtectFn:
    """A generator checkpoint (``arg``), one photo at a time as the authors' code protects."""
    if not arg:
        raise ValueError("method 'gap-diff:PATH' needs a generator checkpoint path")
    method = GapDiffMethod(arg, budget=budget, device=settings.device, norm=settings.norm,
                           official_mode=settings.official_mode, seed=settings.seed,
                           precision=settings.generator_precision)
    return lambda photos, clean_set: method.protect(photos)


def _iterative_factory(name: str):
    """An iterative protection (ASPL, Mist, …) against the protocol's own model, white-box as in the paper;
    ``name:tiny`` picks the method's few-step schedule. Each identity's set_B is protected as one set, with its
    set_A as the clean set where the method's code uses one; class images come from the protocol's class-images
    folder, or else from the protocol's model, cached beside the attack stage's; ASPL, SimAC and MetaCloak
    fine-tune with the protocol's ``reference_numerics``. The methods train private copies of the model only."""
    def factory(arg, budget, settings, model, cache_dir) -> ProtectFn:
        if arg not in (None, "tiny", "default"):
            raise ValueError(f"method '{name}:{arg}': the argument is a schedule, 'tiny' or 'default'")
        cls = METHODS[name]
        extra = {"reference_numerics": settings.reference_numerics} if cls.released_numerics else {}
        method = get_protection(name, model(), schedule=arg or "default", budget=budget,
                                resolution=settings.resolution, seed=settings.seed,
                                class_images=settings.class_images if "num_class_images" in cls.defaults else None,
                                class_cache_dir=Path(cache_dir) / "class_images", **extra)

        def protect_set(photos: list, clean_set: list) -> list:
            return method.protect(photos, reference=clean_set or None)
        protect_set.method = method
        return protect_set
    return factory


register_protection("none", _none_factory, "no protection (clean photos attacked)")
register_protection("random-noise", _random_noise_factory, "random ±budget sign noise (the control)")
register_protection("gap-diff", _gap_diff_factory, "GAP-Diff generator checkpoint", GapDiffMethod, 8.0,
                    "GAP-Diff (NDSS 2025): 16/255 on [-1, 1]")
for _name, _cls in METHODS.items():
    register_protection(_name, _iterative_factory(_name), f"{_name} (iterative, against the protocol's model)", _cls,
                        _cls.defaults["budget"], _cls.budget_source)
