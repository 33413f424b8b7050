"""The parts of a transform spec: typed parameters, registry entries and the parsing of one ``name:args`` step.

A step is ``name`` or ``name:ARGS``; ARGS are comma-separated values, positional (in the entry's parameter order)
then ``key=value``. ``jpeg:75``, ``jpeg:75,subsampling=444`` and ``jpeg:quality=75`` are all valid. Every
problem raises :class:`TransformSpecError` naming the spec and what is wrong.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

TRUE_WORDS = ("yes", "true", "on", "1")
FALSE_WORDS = ("no", "false", "off", "0")


class TransformSpecError(ValueError):
    """A transform spec that cannot be parsed or has a value out of range."""

    def __init__(self, spec: str, problem: str):
        super().__init__(f"image transform {spec!r}: {problem}")
        self.spec, self.problem = spec, problem


@dataclass(frozen=True)
class Param:
    """One parameter of a transform: its type (``int``, ``float``, ``bool``, ``str``, ``"choice"``, ``"path"``),
    default, inclusive range or choices (aliases map other spellings onto a choice), and a short help."""

    name: str
    kind: Any
    default: Any
    help: str
    low: Optional[float] = None
    high: Optional[float] = None
    choices: tuple[str, ...] = ()
    aliases: dict[str, str] = field(default_factory=dict)
    odd: bool = False

    def parse(self, text: str, spec: str) -> Any:
        """The value of ``text`` for this parameter, checked; raises :class:`TransformSpecError`."""
        text = text.strip()
        if self.kind == "path":
            if not text:
                raise TransformSpecError(spec, f"{self.name} needs a value")
            return text
        word = text.lower()
        if self.kind == "choice":
            word = self.aliases.get(word, word)
            if word not in self.choices:
                raise TransformSpecError(spec, f"{self.name} must be one of {', '.join(self.choices)}, got {text!r}")
            return word
        if self.kind is bool:
            if word in TRUE_WORDS or word in FALSE_WORDS:
                return word in TRUE_WORDS
            raise TransformSpecError(spec, f"{self.name} must be yes or no, got {text!r}")
        try:
            value = self.kind(word)
        except ValueError:
            raise TransformSpecError(spec, f"{self.name} must be {'an integer' if self.kind is int else 'a number'}"
                                           f", got {text!r}") from None
        return self.check(value, spec)

    def check(self, value: Any, spec: str) -> Any:
        if value != value or value in (float("inf"), float("-inf")):
            raise TransformSpecError(spec, f"{self.name} must be finite, got {value}")
        if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            raise TransformSpecError(spec, f"{self.name} must be in {self.range_text()}, got {value}")
        if self.odd and value % 2 == 0:
            raise TransformSpecError(spec, f"{self.name} must be odd, got {value}")
        return value

    def range_text(self) -> str:
        low = "-inf" if self.low is None else _fmt(self.low)
        high = "inf" if self.high is None else _fmt(self.high)
        return f"[{low}, {high}]"

    def render(self, value: Any) -> str:
        if self.kind is bool:
            return "yes" if value else "no"
        return _fmt(value)


@dataclass(frozen=True)
class TransformType:
    """A registry entry. ``fn(images, **params)`` takes and returns float B×3×H×W in [0, 1] and names its source in
    its docstring; ``random`` entries also get ``seed=``, ``needs_surrogate`` entries ``surrogate=``. An entry with
    ``expand`` is a named chain: ``expand(params)`` returns the chain's spec (the platform presets). ``check(params,
    spec)`` checks values against each other (raises :class:`TransformSpecError`)."""

    name: str
    fn: Optional[Callable]
    params: tuple[Param, ...]
    help: str
    random: bool = False
    needs_surrogate: bool = False
    expand: Optional[Callable[[dict], str]] = None
    check: Optional[Callable[[dict, str], None]] = None

    def param(self, name: str) -> Optional[Param]:
        return next((p for p in self.params if p.name == name), None)

    def usage(self) -> str:
        """``jpeg[:quality,subsampling=420]``: the first parameter positional, the others by name with defaults."""
        if not self.params:
            return self.name
        first, rest = self.params[0], self.params[1:]
        parts = [first.name] + [f"{p.name}={p.render(p.default) if p.default is not None else '...'}" for p in rest]
        return f"{self.name}[:{','.join(parts)}]"

    def source(self) -> str:
        """The ``Source:`` line of the implementing function's docstring."""
        doc = (self.fn.__doc__ if self.fn is not None else self.expand.__doc__) or ""
        return next((line.strip() for line in doc.splitlines() if line.strip().startswith("Source:")), "")


def parse_args(entry: TransformType, args: str, spec: str) -> dict:
    """``"75,subsampling=444"`` -> ``{"quality": 75, "subsampling": "444"}`` (only the values given)."""
    given: dict = {}
    if not args.strip():
        return given
    if not entry.params:
        raise TransformSpecError(spec, f"{entry.name} takes no argument")
    keyword_seen = False
    for i, part in enumerate(args.split(",")):
        key, eq, text = part.partition("=")
        if eq:
            keyword_seen = True
            param = entry.param(key.strip().lower())
            if param is None:
                raise TransformSpecError(spec, f"{entry.name} has no parameter {key.strip()!r}; "
                                               f"it takes {', '.join(p.name for p in entry.params)}")
        else:
            if keyword_seen:
                raise TransformSpecError(spec, "a positional value cannot follow a key=value one")
            if i >= len(entry.params):
                raise TransformSpecError(spec, f"{entry.name} takes at most {len(entry.params)} values, "
                                               f"got {len(args.split(','))}")
            param, text = entry.params[i], key
        if param.name in given:
            raise TransformSpecError(spec, f"{param.name} given twice")
        given[param.name] = param.parse(text, spec)
    return given


def render_step(entry: TransformType, given: dict) -> str:
    """The normalised text of a step: the first parameter positional, the others as key=value, in entry order."""
    parts = []
    for i, p in enumerate(entry.params):
        if p.name in given:
            value = p.render(given[p.name])
            parts.append(value if i == 0 else f"{p.name}={value}")
    return entry.name + (":" + ",".join(parts) if parts else "")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return repr(int(value)) + ".0" if value.is_integer() and abs(value) < 1e15 else repr(value)
    return str(value)
