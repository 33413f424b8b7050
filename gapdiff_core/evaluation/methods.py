"""The protocol's methods: a ``--method`` spec resolved against the one registry
(:data:`gapdiff_core.protections.PROTECTIONS`) at one budget, and the budgets each runs at."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..model.checkpoint import GENERATOR_SUFFIXES
from ..protections import ALIASES, PROTECTIONS, canonical_name, published_budget
from .inputs import file_digest


@dataclass
class Method:
    """A method at one budget: ``kind`` is its registered name, ``arg`` what followed ``name:`` (a checkpoint path
    for gap-diff, a schedule for iterative methods), ``fingerprint`` what the stage cache keys hold for it."""

    spec: str
    kind: str
    arg: Optional[str]
    budget: Optional[float]
    label: str
    fingerprint: str
    is_demo: bool = False
    description: str = ""


def spec_kind(spec: str) -> tuple[str, Optional[str]]:
    """(registered name, argument) of a ``--method`` spec: ``none``, a checkpoint path (gap-diff), or a registered
    ``name[:arg]`` (any alias: ``generator:PATH`` is ``gap-diff:PATH``)."""
    spec = str(spec)
    if spec.strip().lower() == "none":
        return "none", None
    name, colon, arg = spec.partition(":")
    registered = bool(colon) and name.strip().lower() in PROTECTIONS.keys() | ALIASES.keys()  # name:arg
    path = Path(spec)
    if not registered and (path.suffix.lower() in GENERATOR_SUFFIXES or path.is_file()):
        return "gap-diff", spec
    try:
        return canonical_name(name), arg or None
    except ValueError as e:
        raise ValueError(f"unknown protection method {spec!r}: not a checkpoint file, and {e}") from None


def method_budgets(spec: str, budgets: list, published: bool) -> list:
    """The budgets method ``spec`` runs at: none has none; with ``published``, the budget its authors published
    (:func:`gapdiff_core.protections.published_budget`; ``budgets`` where none is known); else each of ``budgets``."""
    kind = spec_kind(spec)[0]
    if kind == "none":
        return [None]
    known = published_budget(kind)[0] if published else None
    return [known] if known is not None else list(budgets)


def resolve_method(spec: str, budget: Optional[float]) -> Method:
    """``none``, a checkpoint path, or a registered ``name[:arg]`` (:func:`spec_kind`) -> :class:`Method`; ``none``
    has no budget."""
    spec = str(spec)
    kind, arg = spec_kind(spec)
    if kind == "none":
        return Method("none", "none", None, None, "none", "none", description=PROTECTIONS["none"].describe)
    is_demo, fingerprint, name = False, kind + (f":{arg}" if arg else ""), spec
    if kind == "gap-diff":
        if not arg:
            raise ValueError(f"method {spec!r} needs a generator checkpoint: a checkpoint file or gap-diff:PATH")
        gpath = Path(arg)
        if not gpath.is_file():
            raise FileNotFoundError(f"generator checkpoint {gpath} not found")
        from ..model.checkpoint import read_info

        is_demo = bool(getattr(read_info(gpath), "demo", False))
        fingerprint = file_digest(gpath)
        name = gpath.stem + (" (demo)" if is_demo else "")
    return Method(spec, kind, arg, budget, f"{name} @{budget:g}", fingerprint, is_demo, PROTECTIONS[kind].describe)
