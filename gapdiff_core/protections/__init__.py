"""Competing protections in one harness: same surrogate, same budget convention (L∞ grey levels on 0–255, checked
after 8-bit rounding), same step loop, progress and cancellation.

    from gapdiff_core.protections import get_protection
    method = get_protection("aspl", surrogate="tiny", schedule="tiny")
    protected = method.protect(set_b, reference=set_a)   # one identity's photos, protected together

Registry names: aspl, fsmg, photoguard, mist, ace (alias mist-v2), metacloak, caat, simac — iterative methods
(:mod:`.base`) — and gap-diff (one forward pass of a trained generator, via :class:`gapdiff_core.Protector`).
Glaze is closed source (a desktop app and web service, no published code): it is listed in ``CLOSED`` and not
imitated.
"""
from __future__ import annotations

import torch

from .aspl import ASPL, FSMG
from .base import IterativeProtection, ProtectionCancelled
from .caat import CAAT
from .metacloak import MetaCloak
from .mist import ACE, Mist
from .photoguard import PhotoGuard
from .simac import SimAC

METHODS: dict[str, type[IterativeProtection]] = {
    cls.name: cls for cls in (ASPL, FSMG, PhotoGuard, Mist, ACE, MetaCloak, CAAT, SimAC)}
ALIASES = {"anti-dreambooth": "aspl", "anti-db": "aspl", "mist-v2": "ace", "mistv2": "ace", "gapdiff": "gap-diff"}
CLOSED = {"glaze": "Glaze (UChicago) is closed source — a desktop app and web service with no published code or "
                   "weights; it is not imitated here."}
ALL_NAMES = tuple(METHODS) + ("gap-diff",)


class GapDiffMethod:
    """GAP-Diff in the registry's interface: one forward pass of a trained generator (:class:`Protector`)."""

    name = "gap-diff"
    paper = "GAP-Diff (NDSS 2025): one forward pass of a trained generator, budget 8 grey levels"
    defaults = {"budget": 8.0, "mode": "working"}

    def __init__(self, generator, **options):
        from ..protect import Protector

        if generator is None:
            raise ValueError("gap-diff needs a generator checkpoint: get_protection('gap-diff', generator=PATH)")
        self.protector = Protector(generator, **options)
        self.settings = dict(self.defaults, budget=self.protector.budget, mode=self.protector.mode)

    @property
    def budget(self) -> float:
        return self.protector.budget

    def protect(self, images, reference=None):
        """Photos (B×3×H×W or a list) -> protected photos; each is computed on its own (``reference`` unused)."""
        if isinstance(images, torch.Tensor):
            return self.protector(images)
        return [self.protector(x if x.dim() == 4 else x.unsqueeze(0)) for x in images]

    __call__ = protect


def canonical_name(name: str) -> str:
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key in CLOSED:
        raise ValueError(CLOSED[key])
    if key not in METHODS and key != "gap-diff":
        raise ValueError(f"unknown protection {name!r}; choose one of {', '.join(ALL_NAMES)}")
    return key


def get_protection(name: str, surrogate=None, *, schedule: str = "default", generator=None, **overrides):
    """The protection called ``name`` with ``.protect(images) -> images``, ``.name``, ``.defaults``, ``.settings``.

    ``surrogate``: a :class:`~gapdiff_core.diffusion.Surrogate`, or a spec for
    :func:`~gapdiff_core.diffusion.load_surrogate` (``"tiny"``, a diffusers folder, a single-file checkpoint);
    default the tiny demo model (protects nothing real). ``schedule="tiny"`` picks the few-step test schedule.
    ``overrides``: any of the method's settings (``budget`` and ``step`` in grey levels, schedule lengths, …), plus
    ``progress``, ``should_stop``, ``class_images`` (N×3×H×W) and ``class_cache_dir`` (where generated class images
    are cached). For ``gap-diff`` pass ``generator=`` and :class:`Protector` options instead.
    """
    key = canonical_name(name)
    if key == "gap-diff":
        return GapDiffMethod(generator, **overrides)
    if surrogate is None or isinstance(surrogate, str) or hasattr(surrogate, "__fspath__"):
        from ..diffusion import load_surrogate

        surrogate = load_surrogate(surrogate or "tiny")
    return METHODS[key](surrogate, schedule=schedule, **overrides)


__all__ = ["ACE", "ALL_NAMES", "ASPL", "CAAT", "CLOSED", "FSMG", "GapDiffMethod", "IterativeProtection", "METHODS",
           "MetaCloak", "Mist", "PhotoGuard", "ProtectionCancelled", "SimAC", "canonical_name", "get_protection"]
