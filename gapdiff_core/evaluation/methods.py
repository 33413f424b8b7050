"""The protocol's methods: a ``--method`` spec resolved against the one registry
(:data:`gapdiff_core.protections.PROTECTIONS`) at one budget."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..model.checkpoint import GENERATOR_SUFFIXES
from ..protections import ALIASES, PROTECTIONS, canonical_name
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


def resolve_method(spec: str, budget: Optional[float]) -> Method:
    """``none``, a checkpoint path, or a registered ``name[:arg]`` (any alias: ``generator:PATH`` is
    ``gap-diff:PATH``) -> :class:`Method`; ``none`` has no budget."""
    spec = str(spec)
    path = Path(spec)
    if spec.strip().lower() == "none":
        return Method("none", "none", None, None, "none", "none", description=PROTECTIONS["none"].describe)
    name, colon, arg = spec.partition(":")
    registered = bool(colon) and name.strip().lower() in PROTECTIONS.keys() | ALIASES.keys()  # name:arg
    if not registered and (path.suffix.lower() in GENERATOR_SUFFIXES or path.is_file()):
        kind, arg = "gap-diff", spec
    else:
        arg = arg or None
        try:
            kind = canonical_name(name)
        except ValueError as e:
            raise ValueError(f"unknown protection method {spec!r}: not a checkpoint file, and {e}") from None
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
