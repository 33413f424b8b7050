"""Training runs and their checkpoints, without pickles.

A checkpoint is a folder ``OUTPUT_DIR/checkpoints/step-NNNNNNNN`` holding tensors in ``state.safetensors`` and
everything else in ``state.json``; it is written atomically (:mod:`gapdiff_core.io.atomic`) and carries the run id and
the config hash of the run that wrote it. ``OUTPUT_DIR/run.json`` names the run that owns the folder. A new run never
takes over a folder holding another run's files, and a resume never continues a different run or config.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ..io import atomic
from .lock import LOCK_FILE

log = logging.getLogger("gapdiff.train")
TENSORS, META, RUN_FILE, CHECKPOINTS = "state.safetensors", "state.json", "run.json", "checkpoints"
LOG_FILES = ("log.csv", "val.csv")
# what --overwrite removes, plus the export (run.json first: a kill half-way leaves no folder claiming the old run)
ARTIFACTS = (RUN_FILE, CHECKPOINTS, "grids", "tensorboard", "config.json") + LOG_FILES
# settings that change where and how often a run reports, not what it computes: they may differ on resume
OPERATIONAL = frozenset({"output_dir", "progress", "tensorboard", "log_every", "checkpoint_every", "keep_checkpoints",
                         "val_every", "val_jpeg_quality", "val_timesteps", "num_workers", "export_name"})
STEP_FOLDER = re.compile(r"(step-\d{8,})(?:\.old)?")


class ResumeError(ValueError):
    """A run folder or checkpoint that cannot be used as asked; the message names it and says what to do."""


def prefixed(prefix: str, state_dict: dict) -> dict:
    return {f"{prefix}/{k}": v.detach().contiguous().cpu() for k, v in state_dict.items()}


def unprefixed(prefix: str, tensors: dict) -> dict:
    n = len(prefix) + 1
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix + "/")}


def write_checkpoint(folder: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Write atomically: into a hidden folder beside ``folder``, fsync, rename (an existing ``folder`` is replaced
    only once the new one is complete)."""
    folder = Path(folder)
    with atomic.folder_beside(folder) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / TENSORS))
        (tmp / META).write_text(json.dumps(meta, indent=1), encoding="utf-8")
    return folder


def read_meta(folder: Path) -> dict[str, Any]:
    """``state.json`` of a checkpoint, after checking that its tensor file is complete (header and size)."""
    folder = Path(folder)
    if not folder.exists():
        raise ResumeError(f"{folder}: no such checkpoint folder")
    if not folder.is_dir():
        raise ResumeError(f"{folder}: not a folder; a checkpoint is a folder such as checkpoints/step-00001000")
    if not (folder / TENSORS).is_file() or not (folder / META).is_file():
        hint = ("; it holds checkpoints: pass one of its step-* folders, or --resume auto"
                if list_checkpoints(folder) else "")
        raise ResumeError(f"{folder}: not a training checkpoint (needs {TENSORS} and {META}){hint}")
    try:
        meta = json.loads((folder / META).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ResumeError(f"{folder / META}: unreadable ({exc}); the checkpoint is damaged") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("step"), int) or not isinstance(meta.get("config"), dict):
        raise ResumeError(f"{folder / META}: not a gapdiff training state (needs an integer step and a config)")
    try:
        with safe_open(str(folder / TENSORS), framework="pt") as f:
            f.keys()
    except (SafetensorError, OSError, ValueError) as exc:
        raise ResumeError(f"{folder / TENSORS}: unreadable ({exc}); the checkpoint is damaged") from None
    return meta


def read_checkpoint(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    meta = read_meta(folder)
    try:
        return load_file(str(Path(folder) / TENSORS)), meta
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ResumeError(f"{Path(folder) / TENSORS}: unreadable ({exc}); the checkpoint is damaged") from None


def list_checkpoints(root: Path) -> list[Path]:
    """Checkpoint folders under ``root`` (``step-NNNNNNNN``), oldest first. Temporaries are never listed; a
    ``step-NNNNNNNN.old`` (a kill while that step was being rewritten) stands in for its missing original."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = {}
    for p in root.iterdir():
        m = STEP_FOLDER.fullmatch(p.name)
        if m and p.is_dir() and (p / META).is_file() and (m.group(1) not in found or not p.name.endswith(".old")):
            found[m.group(1)] = p
    return [found[k] for k in sorted(found)]


def prune_checkpoints(root: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints (each vanishes at once; see :func:`atomic.remove_folder`)."""
    for old in list_checkpoints(root)[:-keep] if keep > 0 else []:
        atomic.remove_folder(old)


def save_checkpoint(out: Path, step: int, tensors: dict, meta: dict, keep: int) -> Path:
    """Write ``checkpoints/step-NNNNNNNN``, record it in ``run.json``, then prune: the previous checkpoint is
    deleted only after the new one is complete and in place."""
    out = Path(out)
    (out / CHECKPOINTS).mkdir(parents=True, exist_ok=True)
    folder = write_checkpoint(out / CHECKPOINTS / f"step-{step:08d}", tensors, meta)
    record = read_run(out) or {"run_id": meta.get("run_id"), "config_hash": meta.get("config_hash")}
    record["checkpoint_step"] = step
    atomic.write_text(out / RUN_FILE, json.dumps(record, indent=1))
    prune_checkpoints(out / CHECKPOINTS, keep)
    return folder


# ---------------------------------------------------------------- runs
def config_hash(config: dict) -> str:
    """Hash of the settings that shape the training trajectory (everything but :data:`OPERATIONAL`)."""
    relevant = {k: v for k, v in config.items() if k not in OPERATIONAL}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:16]


def config_diff(saved: dict, current: dict) -> str:
    keys = sorted(k for k in set(saved) | set(current) if k not in OPERATIONAL and saved.get(k) != current.get(k))
    return ", ".join(f"{k} ({saved.get(k)!r} -> {current.get(k)!r})" for k in keys) or "unknown settings"


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


def read_run(out: Path) -> Optional[dict]:
    path = Path(out) / RUN_FILE
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ResumeError(f"{path}: unreadable ({exc}); move the folder aside or pass --overwrite") from None
    if not isinstance(record, dict) or not isinstance(record.get("run_id"), str):
        raise ResumeError(f"{path}: not a gapdiff run record; move the folder aside or pass --overwrite")
    return record


@dataclass
class RunPlan:
    """What :func:`plan_run` decided: the run's id, the checkpoint to resume from (None: start at step 0)."""

    run_id: str
    checkpoint: Optional[Path] = None
    clear: bool = False        # --overwrite: remove the earlier run's files first
    note: str = ""             # what happened, for the log


def _describe(out: Path, record: Optional[dict], entries: list[str]) -> str:
    if record is not None:
        step = record.get("checkpoint_step")
        return f"training run {record['run_id']}" + (f" (checkpoint at step {step})" if step else "")
    shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
    return f"other files ({shown})"


def _check_owner(folder: Path, meta: dict, config: dict, run_id: Optional[str]) -> None:
    saved = meta["config"]
    if config_hash(saved) != config_hash(config):
        raise ResumeError(f"{folder}: was written with a different training config; differs in "
                          f"{config_diff(saved, config)}. Resume with the run's own config, or start a new run "
                          "in another output_dir (or pass --overwrite to discard this one)")
    if run_id is not None and meta.get("run_id") not in (None, run_id):
        raise ResumeError(f"{folder}: belongs to run {meta.get('run_id')}, not to run {run_id} that owns this "
                          "output folder; refusing to mix runs. Resume it in its own output_dir")


def plan_run(out: Path, config: dict, resume: Optional[str] = None, overwrite: bool = False) -> RunPlan:
    """Decide how a run starts in ``out`` without writing anything (every process may call it).

    No ``resume``: ``out`` must be empty or absent, unless ``overwrite``. ``resume="auto"``: the newest usable
    checkpoint of the run that owns ``out`` (a new run if ``out`` is empty); an error if checkpoints were written
    but none is usable. ``resume=DIR``: that checkpoint, which must belong to ``out``'s run and config.
    Raises :class:`ResumeError` with the folder and the options."""
    out = Path(out)
    if resume and overwrite:
        raise ResumeError("--resume and --overwrite exclude each other: resume continues the run in "
                          f"{out}, overwrite discards it")
    if out.exists() and not out.is_dir():
        raise ResumeError(f"{out}: the output_dir is a file; choose a folder")
    entries = sorted(p.name for p in out.iterdir() if p.name != LOCK_FILE) if out.is_dir() else []
    if not resume:
        if entries and not overwrite:
            record = read_run(out) if (out / RUN_FILE).is_file() else None
            raise ResumeError(f"{out}: the output folder already holds {_describe(out, record, entries)}. Pass "
                              "--resume auto to continue that run, or --overwrite to discard it and start a new run "
                              "(or choose another output_dir)")
        return RunPlan(new_run_id(), clear=bool(entries))
    record = read_run(out)
    owner = record["run_id"] if record else None
    if owner and record.get("config_hash") not in (None, config_hash(config)):
        saved = _saved_config(out)
        raise ResumeError(f"{out}: run {owner} here used a different training config; differs in "
                          f"{config_diff(saved, config) if saved else 'its settings'}. Resume with the run's own "
                          "config, or start a new run in another output_dir (or pass --overwrite to discard it)")
    if resume != "auto":
        folder = Path(resume)
        meta = read_meta(folder)
        if owner is None and entries and folder.resolve().parent.parent != out.resolve():
            raise ResumeError(f"{out}: the output folder holds {_describe(out, None, entries)} and no run; resume "
                              "into an empty output_dir, or pass --overwrite (without --resume) to start afresh")
        _check_owner(folder, meta, config, owner)
        return RunPlan(meta.get("run_id") or owner or new_run_id(), folder,
                       note=f"resuming run {meta.get('run_id') or owner} from {folder} at step {meta['step']}")
    if not entries:
        return RunPlan(new_run_id(), note=f"nothing to resume in {out}; starting a new run")
    found = list_checkpoints(out / CHECKPOINTS)
    if owner is None and not found:
        raise ResumeError(f"{out}: no training run to resume here (no {RUN_FILE}, no checkpoints) but the folder "
                          f"holds {_describe(out, None, entries)}. Choose another output_dir, or pass --overwrite "
                          "(without --resume) to start a new run here")
    problems = []
    for folder in reversed(found):
        try:
            meta = read_meta(folder)
        except ResumeError as exc:
            problems.append(str(exc))
            log.warning("skipping unusable checkpoint: %s", exc)
            continue
        _check_owner(folder, meta, config, owner)
        note = f"resuming run {meta.get('run_id') or owner} from {folder} at step {meta['step']}"
        if problems:
            note += f" (newer checkpoints unusable: {'; '.join(problems)})"
        return RunPlan(meta.get("run_id") or owner or new_run_id(), folder, note=note)
    expected = (record or {}).get("checkpoint_step")
    if expected or problems:
        raise ResumeError(f"{out}: run {owner or '(unknown)'} wrote checkpoints"
                          + (f" (the last at step {expected})" if expected else "")
                          + f" but none is usable{': ' + '; '.join(problems) if problems else ' (they are missing)'}. "
                          "Nothing was resumed. Pass --overwrite (without --resume) to start again from step 0")
    return RunPlan(owner, note=f"run {owner} in {out} stopped before its first checkpoint; starting it again "
                                "from step 0")


def _saved_config(out: Path) -> Optional[dict]:
    try:
        saved = json.loads((Path(out) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return saved if isinstance(saved, dict) else None


def start_run(out: Path, plan: RunPlan, config: dict) -> None:
    """Main process only, after :func:`plan_run`: clear an overwritten run, finish interrupted checkpoint writes,
    drop log rows past the resume step, and record the run in ``run.json`` and ``config.json``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if plan.clear:
        saved = _saved_config(out) or {}
        exports = {str(saved.get("export_name", "")), str(config.get("export_name", ""))}
        for name in ARTIFACTS + tuple(n for n in exports if n and Path(n).name == n):  # plain names only
            path = out / name
            if path.is_dir():
                atomic.remove_folder(path)
            elif path.exists():
                path.unlink()
    atomic.recover(out / CHECKPOINTS)
    step = 0
    if plan.checkpoint is not None:
        step = int(read_meta(plan.checkpoint)["step"])
    for name in LOG_FILES:
        truncate_log(out / name, step)
    record = read_run(out) if not plan.clear else None
    if record is None or record.get("run_id") != plan.run_id:
        record = {"run_id": plan.run_id, "config_hash": config_hash(config), "started": time.strftime(
            "%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        if plan.checkpoint is not None:
            record["checkpoint_step"] = step
    atomic.write_text(out / RUN_FILE, json.dumps(record, indent=1))
    atomic.write_text(out / "config.json", json.dumps(config, indent=1))
    if plan.note:
        log.info("%s", plan.note)


def truncate_log(path: Path, step: int) -> None:
    """Keep only the rows of a CSV log up to ``step`` (a resumed run logs the later steps again)."""
    path = Path(path)
    if not path.is_file():
        return
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows or "step" not in rows[0]:
        return
    col = rows[0].index("step")
    kept = [rows[0]] + [r for r in rows[1:] if len(r) > col and r[col].isdigit() and int(r[col]) <= step]
    if len(kept) == len(rows):
        return
    buf = io.StringIO()
    csv.writer(buf).writerows(kept)
    atomic.write_text(path, buf.getvalue())


def append_log(path: Path, row: dict) -> None:
    """Append ``row`` to a CSV log under the file's own header, so a resumed run's rows line up with its columns
    (the first row sets them; keys missing from a row are left empty)."""
    path = Path(path)
    fields = None
    if path.is_file():
        with path.open(newline="", encoding="utf-8") as f:
            fields = next(csv.reader(f), None)
    with path.open("a", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fields or list(row), extrasaction="ignore")
        if not fields:
            writer.writeheader()
        writer.writerow(row)
