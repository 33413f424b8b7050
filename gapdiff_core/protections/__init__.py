"""Competing protections in one harness: same surrogate, same budget convention (L∞ grey levels on 0–255, checked
after 8-bit rounding), same step loop, progress and cancellation.

    from gapdiff_core.protections import get_protection
    method = get_protection("aspl", surrogate="tiny", schedule="tiny")
    protected = method.protect(set_b, reference=set_a)   # one identity's photos, protected together

Registry (:mod:`.registry`, the one list every entry point reads): aspl, fsmg, photoguard, mist, ace (alias
mist-v2), metacloak, caat, simac — iterative methods (:mod:`.base`) —, gap-diff (alias generator: one forward pass
of a trained generator, via :class:`gapdiff_core.Protector`), none (the protocol's unprotected baseline) and
random-noise (its control), each with the budget its authors published (``published_budget``).
Glaze is closed source: it is listed in ``CLOSED`` and not imitated.
"""
from __future__ import annotations

from .aspl import ASPL, FSMG
from .base import REFERENCE_NUMERICS, IterativeProtection, ProtectionCancelled
from .caat import CAAT
from .metacloak import MetaCloak
from .mist import ACE, Mist
from .photoguard import PhotoGuard
from .registry import (ALIASES, CLOSED, METHODS, PROTECTIONS, GapDiffMethod, ProtectFn, Registered, canonical_name,
                       get_protection, published_budget, register_protection)
from .simac import SimAC

__all__ = ["ACE", "ALIASES", "ASPL", "CAAT", "CLOSED", "FSMG", "GapDiffMethod", "IterativeProtection", "METHODS",
           "MetaCloak", "Mist", "PROTECTIONS", "PhotoGuard", "ProtectFn", "ProtectionCancelled", "REFERENCE_NUMERICS",
           "Registered", "SimAC", "canonical_name", "get_protection", "published_budget", "register_protection"]
