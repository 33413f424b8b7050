"""The generators the UI offers: the checkpoints of the models folder (their metadata only, demo ones labelled),
the one a request chose, and the loaded Protectors, one per checkpoint file, device and precision, shared by every
budget and mode."""
from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from ..common.budget import BudgetError, check_budget
from ..model.checkpoint import (GENERATOR_SUFFIXES, CheckpointError, GeneratorInfo, load_generator, printable,
                                read_info)
from ..model.protector import MODES, Protector
from .settings import UIError, UISettings
from .uploads import as_list, check_count, file_path

log = logging.getLogger("gapdiff.ui")
DEMO_TAG = "  [DEMO: protects nothing real]"
DEMO_WARNING = ("**DEMO generator**: it protects nothing real (it was made to try the tool, not trained against a "
                "real diffusion model). Use its outputs to see how the tool works, not to protect photos.")


@dataclass
class GeneratorEntry:
    choice: str  # what the dropdown shows (and returns)
    path: Path
    info: GeneratorInfo | None
    error: str = ""

    @property
    def demo(self) -> bool:
        return bool(self.info and self.info.demo)


_INFO_CACHE: dict[tuple, GeneratorInfo | str] = {}


def _info_of(path: Path) -> GeneratorInfo | str:
    """The checkpoint's metadata, read without its weights (checkpoint.read_info), or why it cannot be used: one bad
    file must not stop the listing (or the app). The weights are checked when the generator is loaded."""
    try:
        st = path.stat()
    except OSError as exc:
        return f"{path.name}: cannot be read ({exc.strerror})"
    key = (str(path), st.st_mtime_ns, st.st_size)
    if key not in _INFO_CACHE:
        try:
            _INFO_CACHE[key] = read_info(path)
        except CheckpointError as exc:
            _INFO_CACHE[key] = str(exc)
        except Exception as exc:  # noqa: BLE001 - anything else a broken file can raise is reported the same way
            log.warning("gapdiff: skipped %s (%s: %s)", path, type(exc).__name__, exc)
            _INFO_CACHE[key] = f"{path.name}: not a usable generator checkpoint ({type(exc).__name__}: {exc})"
    return _INFO_CACHE[key]


def list_generators(models_dir: str | os.PathLike | None) -> list[GeneratorEntry]:
    """Generator checkpoints in `models_dir` (not recursive), demo ones labelled in their choice string."""
    if not models_dir or not Path(models_dir).is_dir():
        return []
    entries = []
    for path in sorted(Path(models_dir).iterdir()):
        if path.suffix.lower() not in GENERATOR_SUFFIXES or not path.is_file():
            continue
        info = _info_of(path)
        if isinstance(info, str):
            entries.append(GeneratorEntry(f"{path.name}  [unreadable]", path, None, info))
        else:
            entries.append(GeneratorEntry(path.name + (DEMO_TAG if info.demo else ""), path, info))
    return entries


def generator_choices(models_dir) -> list[str]:
    return [e.choice for e in list_generators(models_dir)]


def describe_generator(info: GeneratorInfo) -> str:
    """What the page says about a generator: the demo warning first when it is one, then its facts."""
    facts = (f"Width ngf={info.ngf}, trained budget {info.budget:g} grey levels, working resolution "
             f"{info.working_resolution}, surrogate {printable(info.surrogate or 'unknown')}; provenance: "
             f"{printable(info.provenance or 'unknown')}.")
    return f"⚠️ {DEMO_WARNING}\n\n{facts}" if info.demo else facts


def describe_choice(choice: str | None, uploaded: str | None, models_dir) -> str:
    """The description under the generator picker: of the uploaded checkpoint (which wins), else of the choice."""
    if uploaded:
        path = Path(file_path(uploaded))
        info = _info_of(path)  # its problem named by the file's name, not by the server's upload folder
        return info.replace(str(path), path.name) if isinstance(info, str) else \
            "Uploaded checkpoint. " + describe_generator(info)
    if not choice:
        return (f"No generator found in the models folder ({models_dir or 'not set'}). Put a checkpoint there "
                "(the authors' G_per16_pretrain.pth, or one trained with `gapdiff train`) and press Refresh, or "
                "upload one. To try the tool first, start it with `gapdiff app --demo`.")
    for e in list_generators(models_dir):
        if e.choice == choice:
            return e.error or describe_generator(e.info)
    return "Press Refresh: the models folder changed."


def models_markdown(models_dir) -> str:
    """Every generator of the models folder in one list (the About tab)."""
    entries = list_generators(models_dir)
    if not entries:
        return f"No generators in the models folder ({models_dir or 'not set'})."
    lines = [f"Generators in {models_dir}:"]
    for e in entries:
        about = e.error or ("DEMO, protects nothing real. " if e.demo else "") + describe_generator(e.info).split(
            "\n\n")[-1]
        lines.append(f"- `{e.path.name}`: {about}")
    return "\n".join(lines)


def initial_choice(choices: list[str], models_dir, preferred: str | None) -> str | None:
    """The generator the page opens with: the preferred file when it is listed, else the first."""
    for e in list_generators(models_dir):
        if preferred and e.path.name == preferred and e.choice in choices:
            return e.choice
    return choices[0] if choices else None


def resolve_generator(choice: str | None, uploaded: str | None, models_dir) -> Path:
    """The checkpoint to use: an uploaded file wins over the dropdown choice."""
    if uploaded:
        return Path(file_path(uploaded))
    if not choice:
        where = f" in {models_dir}" if models_dir else ""
        raise UIError(f"No generator selected. Put a generator checkpoint (.safetensors or the authors' .pth){where} "
                      "and press Refresh, or upload one.")
    for entry in list_generators(models_dir):
        if entry.choice == choice:
            if entry.error:
                raise UIError(entry.error)
            return entry.path
    raise UIError(f"Generator '{choice}' is no longer in {models_dir}; press Refresh.")


def check_protect_request(uploads, choice: str | None, uploaded: str | None, s: UISettings) -> Path:
    """Everything about a Protect request that can be checked without loading anything; the generator's path."""
    if not as_list(uploads):
        raise UIError("Upload one or more photos first.")
    check_count(as_list(uploads), s, "photos")
    return resolve_generator(choice, uploaded, s.models_dir)


_PROTECTORS: "OrderedDict[tuple, Protector]" = OrderedDict()
_PROTECTORS_LOCK = threading.Lock()
_PROTECTORS_MAX = 4


def get_protector(path: Path, budget: float, mode: str, device: str, precision: str) -> Protector:
    """A Protector for this checkpoint at `budget` and `mode`. The generator is loaded (and its `auto` precision
    probed) once per checkpoint file (again when the file changes), device and precision; other budgets and modes
    reuse it (Protector.with_options). A budget above the one the automatic precision was checked at loads it once
    more at that budget, which is kept from then on."""
    if mode not in MODES:
        raise UIError(f"Mode must be one of {', '.join(MODES)}, not {mode!r}.")
    try:
        budget = check_budget(budget, "The budget")
    except BudgetError as exc:
        raise UIError(f"{exc}.") from None
    try:
        st = path.stat()
    except OSError as exc:
        raise UIError(f"{path.name}: cannot read the generator checkpoint ({exc.strerror}).") from exc
    key = (str(path), st.st_mtime_ns, st.st_size, str(device), precision)
    with _PROTECTORS_LOCK:
        loaded = _PROTECTORS.get(key)
        if loaded is not None:
            _PROTECTORS.move_to_end(key)
            try:
                return loaded.with_options(budget=budget, mode=mode)
            except ValueError:  # above the budget its automatic precision was checked at: load it at this one
                pass
        try:
            protector = Protector(load_generator(path), budget=budget, mode=mode, device=device, precision=precision)
        except (CheckpointError, ValueError, RuntimeError) as exc:
            reason = str(exc).replace(str(path), path.name)  # an upload's server-side folder is nobody's business
            raise UIError(f"Could not load the generator {path.name}: {reason}") from exc
        _PROTECTORS[key] = protector
        while len(_PROTECTORS) > _PROTECTORS_MAX:
            _PROTECTORS.popitem(last=False)
        return protector
