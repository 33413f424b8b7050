"""Load and save generators: the authors' `.pth` state dicts and project `.safetensors` files with metadata.

Nothing here unpickles code: `.pth` files go through `torch.load(weights_only=True)` only.
"""
from __future__ import annotations

import functools
import json
import math
import os
import unicodedata
import zipfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..common.budget import BUDGET_RULE, DEFAULT_BUDGET, BudgetError, check_budget
from ..io.atomic import write_file
from .generator import Generator

ARCHITECTURE = "gap-diff-unet"
FORMAT_VERSION = "1"
OFFICIAL_PREFIX = "generator."
#: What a generator checkpoint file may end with: project `.safetensors`, the authors' `.pth` (also as `.pt`).
GENERATOR_SUFFIXES = (".safetensors", ".pth", ".pt")
MAX_NGF = 128  # twice the official width (ngf=64): 293 M parameters
WORKING_RESOLUTIONS = (64, 2048)  # up to twice SDXL's 1024; generator memory grows with its square
_UNPACK_RATIO = 4  # a .pth archive may unpack to at most this many times its own size (torch.save stores, never deflates)
#: Weight types the generator runs: each is widened to float32, exactly (float64 is rounded). Integer, boolean and
#: complex weights, and float8_e8m0fnu (scales: powers of two only), are refused by name.
WEIGHT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.float8_e4m3fn, torch.float8_e5m2,
                 torch.float8_e4m3fnuz, torch.float8_e5m2fnuz)
#: Counter types (BatchNorm's num_batches_tracked).
COUNTER_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)
#: The dtype names of a .safetensors header (safetensors' own table), so a listing can check types unread.
_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                       "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
                       "F8_E4M3FNUZ": torch.float8_e4m3fnuz, "F8_E5M2FNUZ": torch.float8_e5m2fnuz,
                       "F8_E8M0": torch.float8_e8m0fnu, "I64": torch.int64, "I32": torch.int32, "I16": torch.int16,
                       "I8": torch.int8, "U64": torch.uint64, "U32": torch.uint32, "U16": torch.uint16, "U8": torch.uint8,
                       "BOOL": torch.bool, "C64": torch.complex64}


class CheckpointError(ValueError):
    """A model file (generator or surrogate) that cannot be used; the message names the file and the problem."""


@dataclass
class GeneratorInfo:
    """What a checkpoint says about its generator. `budget` is in grey levels (0-255 scale)."""

    ngf: int = 64
    budget: float = DEFAULT_BUDGET
    working_resolution: int = 512
    demo: bool = False
    provenance: str = ""
    surrogate: str = ""
    training_config: dict = field(default_factory=dict)
    source: str = ""

    def describe(self) -> str:
        """One line for people; text from the file has its control characters escaped (see `printable`)."""
        label = "DEMO generator (trained on a toy model: protects nothing real)" if self.demo else "generator"
        return (f"{label}: width ngf={self.ngf}, trained budget {self.budget:g} grey levels, "
                f"working resolution {self.working_resolution}, surrogate {printable(self.surrogate or 'unknown')}, "
                f"provenance: {printable(self.provenance or 'unknown')}")


def printable(text) -> str:
    """`text` safe to print on a terminal: control and bidirectional-override characters (escape sequences, carriage
    returns, newlines) and unpaired surrogates are shown as backslash escapes. Use it wherever a checkpoint's own
    text (metadata, tensor names) is shown."""
    return "".join(ch if _shows_as_itself(ch) else ch.encode("unicode_escape").decode("ascii") for ch in str(text))


def _shows_as_itself(ch: str) -> bool:
    category = unicodedata.category(ch)
    return not (category in ("Cc", "Cs", "Zl", "Zp") or (category == "Cf" and unicodedata.bidirectional(ch) in
                                                           ("LRE", "RLE", "LRO", "RLO", "PDF", "LRI", "RLI", "FSI", "PDI")))


def load_generator(path: str | os.PathLike, device: str | torch.device = "cpu") -> Generator:
    """Load a generator (official `.pth` or project `.safetensors`) strictly, in eval mode.

    The returned module carries its `GeneratorInfo` as `.info`.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such generator checkpoint (get the authors' G_per16_pretrain.pth, "
                              "or train one with `gapdiff train`)")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the file is empty")
    if path.suffix.lower() == ".safetensors":
        state, info = _read_safetensors(path)
    else:
        state, info = _read_pth(path), GeneratorInfo(provenance=f"official-format state dict ({path.name})")
    state = _strip_prefix(state, path)
    first = state.get("conv1.weight")
    info.ngf = _width(path, None if first is None else tuple(first.shape), state)
    info.source = str(path)
    with torch.device("meta"):  # no random initialisation: every tensor comes from the file
        generator = Generator(ngf=info.ngf)
    _load_strict(generator, state, path)
    generator.info = info
    return generator.to(device).eval()


def save_generator(generator: Generator, path: str | os.PathLike, info: GeneratorInfo, *,
                   overwrite: bool = True) -> Path:
    """Write `generator` as `.safetensors` with metadata, atomically; without `overwrite`, an existing file (even
    one that appears during the write) is never replaced: FileExistsError."""
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise CheckpointError(f"{path}: generators are saved as .safetensors")
    meta = asdict(info)
    meta.pop("source")
    for key, value in meta.items():
        _checked_field(path, key, value)
    metadata = {"format": "pt", "gapdiff.format_version": FORMAT_VERSION, "architecture": ARCHITECTURE,
                **{k: json.dumps(v) for k, v in meta.items()}}
    state = {k: v.detach().contiguous().cpu() for k, v in generator.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_file(path, lambda tmp: save_file(state, str(tmp), metadata=metadata), overwrite=overwrite)


def read_info(path: str | os.PathLike) -> GeneratorInfo:
    """What a checkpoint says about its generator, without reading its weights (for listing a models folder).

    `.safetensors`: the header only (metadata, and the width from conv1.weight's shape); `.pth`: the state dict
    memory-mapped, so its tensors are not read. The metadata and every tensor's number type are checked as
    `load_generator` checks them (a file of integer weights is not listed as usable); the values are checked only
    when the generator is loaded."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such generator checkpoint")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the file is empty")
    if path.suffix.lower() == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = dict(f.metadata() or {})
                names = {k.removeprefix(OFFICIAL_PREFIX): k for k in f.keys()}
                shape = tuple(f.get_slice(names["conv1.weight"]).get_shape()) if "conv1.weight" in names else None
                dtypes = {k: _SAFETENSORS_DTYPES.get(f.get_slice(key).get_dtype(), f.get_slice(key).get_dtype())
                          for k, key in names.items()}
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: not a readable .safetensors file ({exc})") from None
        info = _info_from_metadata(path, meta)
    else:
        state = _strip_prefix(_read_pth(path, mmap=zipfile.is_zipfile(path)), path)
        shape = tuple(state["conv1.weight"].shape) if "conv1.weight" in state else None
        info, names = GeneratorInfo(provenance=f"official-format state dict ({path.name})"), state
        dtypes = {k: v.dtype for k, v in state.items()}
    info.ngf = _width(path, shape, names)
    _check_dtypes(path, dtypes)
    info.source = str(path)
    return info


def _width(path: Path, shape: tuple | None, names) -> int:
    """ngf, from the shape of conv1.weight (None: no such tensor among `names`)."""
    if shape is None:
        raise CheckpointError(f"{path}: not a GAP-Diff generator (no conv1.weight; keys start with "
                              f"{printable(sorted(names)[:3])})")
    if len(shape) != 4 or not 1 <= shape[0] <= MAX_NGF:
        raise CheckpointError(f"{path}: conv1.weight has shape {shape}; a GAP-Diff generator's is "
                              f"(ngf, 3, 7, 7) with ngf 1-{MAX_NGF} (the official width is 64)")
    return int(shape[0])


def _read_pth(path: Path, mmap: bool = False) -> dict:
    """The state dict of a `.pth` file; with `mmap` (zip archives only), its tensors map the file unread."""
    _check_archive_sizes(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:  # the safe unpickler refuses code and foreign objects
        raise CheckpointError(f"{path}: cannot be read as a plain PyTorch state dict with the safe loader "
                              f"(weights_only=True); it may be corrupt, truncated, or contain code: {exc}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors, found {type(state).__name__}")
    if not all(isinstance(k, str) for k in state):
        odd = next(k for k in state if not isinstance(k, str))
        raise CheckpointError(f"{path}: state dict keys must be tensor names (strings); found {printable(repr(odd))}")
    return state


def _check_archive_sizes(path: Path) -> None:
    """Refuse a zip `.pth` whose entries declare more bytes than a generator can hold, before anything is unpacked
    (torch.load would allocate every declared byte: a few MB of deflated zeros can claim many GB)."""
    if not zipfile.is_zipfile(path):
        return  # the legacy format stores tensors raw: it cannot unpack to more than its own size
    try:
        with zipfile.ZipFile(path) as archive:
            declared = sum(entry.file_size for entry in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: damaged .pth archive ({exc})") from None
    limit = min(_UNPACK_RATIO * path.stat().st_size, _largest_state_bytes()) + (1 << 20)
    if declared > limit:
        raise CheckpointError(f"{path}: the archive declares {declared:,} bytes unpacked from a {path.stat().st_size:,}"
                              f"-byte file, over the {limit:,}-byte limit for a GAP-Diff generator (ngf <= {MAX_NGF}, "
                              "stored as torch.save writes it); it is not a generator state dict, or is a zip bomb")


@functools.lru_cache(maxsize=1)
def _largest_state_bytes() -> int:
    """Bytes of the widest accepted generator's state dict in float64 (no memory: built on the meta device)."""
    with torch.device("meta"):
        return sum(8 * t.numel() for t in Generator(ngf=MAX_NGF).state_dict().values())


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a `.safetensors` file, read once; raises CheckpointError."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable .safetensors file ({exc})") from None


def _read_safetensors(path: Path) -> tuple[dict, GeneratorInfo]:
    state, meta = read_safetensors(path)
    return state, _info_from_metadata(path, meta)


def _info_from_metadata(path: Path, meta: dict[str, str]) -> GeneratorInfo:
    if meta.get("architecture", ARCHITECTURE) != ARCHITECTURE:
        raise CheckpointError(f"{path}: architecture {meta['architecture']!r} is not {ARCHITECTURE!r}")
    info = GeneratorInfo()
    for key in (f.name for f in fields(GeneratorInfo) if f.name != "source"):
        if key in meta:
            try:
                value = json.loads(meta[key])
            except (json.JSONDecodeError, RecursionError):
                raise CheckpointError(f"{path}: metadata field {key!r} is not valid JSON") from None
            setattr(info, key, _checked_field(path, key, value))
    return info


def _checked_field(path: Path, key: str, value):
    """A metadata value of the type and range its field needs, or CheckpointError (a working resolution of 16384
    would make every photo cost tens of GB)."""
    def refuse(what: str):
        return CheckpointError(f"{path}: metadata field {key!r} is {printable(repr(value))[:80]}; {what}")

    if key in ("ngf", "working_resolution"):
        if not isinstance(value, int) or isinstance(value, bool):
            raise refuse("it must be a whole number")
        lo, hi = (1, MAX_NGF) if key == "ngf" else WORKING_RESOLUTIONS
        if not lo <= value <= hi:
            raise refuse(f"it must be {lo}-{hi}")
    elif key == "budget":
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise refuse("it must be a number of grey levels")
        try:
            value = check_budget(value)
        except BudgetError:
            raise refuse(f"it must be {BUDGET_RULE}") from None
    elif key == "demo" and not isinstance(value, bool):
        raise refuse("it must be true or false")
    elif key in ("provenance", "surrogate") and not isinstance(value, str):
        raise refuse("it must be a string")
    elif key == "training_config" and not isinstance(value, dict):
        raise refuse("it must be a JSON object")
    return value


def _strip_prefix(state: dict, path: Path) -> dict:
    """Official checkpoints hold `Generator_Prelayer.state_dict()`: every key starts with `generator.`."""
    stripped = {k.removeprefix(OFFICIAL_PREFIX): v for k, v in state.items()}
    if len(stripped) != len(state):
        raise CheckpointError(f"{path}: holds both prefixed ({OFFICIAL_PREFIX}...) and plain names for one tensor")
    return stripped


def _load_strict(generator: Generator, state: dict, path: Path) -> None:
    expected = generator.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        parts = [f"{label}: {_listed(keys)}" for label, keys in
                 (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong)) if keys]
        raise CheckpointError(f"{path}: does not match the GAP-Diff generator (ngf={generator.ngf}); "
                              + "; ".join(parts))
    _check_dtypes(path, {k: v.dtype for k, v in state.items()})
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    broken = sorted(k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all())
    if broken:
        raise CheckpointError(f"{path}: {len(broken)} tensors hold NaN or infinite values ({_listed(broken)}); "
                              "the generator is broken (a diverged training run?): use an earlier checkpoint")
    generator.load_state_dict(state, strict=True, assign=True)


def _check_dtypes(path: Path, dtypes: dict[str, torch.dtype | str]) -> None:
    """Refuse tensors of a number type the generator cannot run, grouped by type: weights must be one of
    WEIGHT_DTYPES, counters (num_batches_tracked) whole numbers. `dtypes` maps names to torch dtypes, or to the
    header's name of a type torch has no counterpart for here."""
    weights: dict[str, list[str]] = {}
    counters: dict[str, list[str]] = {}
    for key, dtype in sorted(dtypes.items()):
        counter = key.endswith("num_batches_tracked")
        if dtype not in (COUNTER_DTYPES if counter else WEIGHT_DTYPES):
            (counters if counter else weights).setdefault(_dtype_name(dtype), []).append(key)
    parts = []
    if weights:
        parts.append("weights of a number type the generator cannot run: " + _by_type(weights) + "; weights must "
                     f"be floating point: {', '.join(map(_dtype_name, WEIGHT_DTYPES))}")
    if counters:
        parts.append("counters that are not whole numbers: " + _by_type(counters))
    if parts:
        raise CheckpointError(f"{path}: " + "; ".join(parts))


def _by_type(groups: dict[str, list[str]]) -> str:
    return "; ".join(f"{name} ({len(keys)} tensors: {_listed(keys)})" for name, keys in groups.items())


def _dtype_name(dtype: torch.dtype | str) -> str:
    return printable(str(dtype).removeprefix("torch."))


def _listed(keys: list[str]) -> str:
    """At most 8 names, escaped, and how many there are in all."""
    return ", ".join(map(printable, keys[:8])) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")
