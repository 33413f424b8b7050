"""The stage cache: every stage's outputs in ``<root>/<stage>/<key>/``, finished when its ``stage.json`` is there.

``key`` hashes the stage's own settings and its parent's key, so a rerun loads finished stages, an interrupted run
resumes, and changing one setting recomputes only what it affects. A stage computes in its folder (the attack
resumes there from its own checkpoint); ``stage.json`` is written last and atomically (:mod:`gapdiff_core.io.atomic`)
and records a hash of every file the stage wrote. A finished stage whose files no longer match (replaced, truncated,
missing: a shared cache folder is easy to damage) is never trusted: its folder is removed and the stage recomputed.
"""
from __future__ import annotations

import hashlib
import json
import math
import uuid
from pathlib import Path
from typing import Callable, Optional

from ..io.atomic import remove_folder, write_text
from .inputs import file_digest

CACHE_VERSION = 1


def config_key(obj) -> str:
    """A short stable hash of a JSON-able configuration."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


class StageCache:
    """``root/<stage>/<key>/`` folders; a stage is finished when its ``stage.json`` exists (written last).

    Each finished stage gets a fresh ``run_id`` and records its parent's; a stage whose parent was recomputed
    (say, its cache folder deleted) no longer matches and is recomputed too.
    """

    def __init__(self, root: str | Path, on_compute: Optional[Callable[[str, str], None]] = None,
                 log: Callable[[str], None] = print):
        self.root = Path(root)
        self.on_compute = on_compute
        self.log = log

    def lookup(self, stage: str, config: dict, parent: Optional[dict] = None) -> tuple[str, Optional[dict], Path]:
        """(key, the finished record or None, folder) of ``stage`` run with ``config``."""
        key = self.key(stage, config)
        return key, self.load(stage, key, parent), self.folder(stage, key)

    def key(self, stage: str, config: dict) -> str:
        return config_key({"stage": stage, "v": CACHE_VERSION, **config})

    def folder(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def load(self, stage: str, key: str, parent: Optional[dict] = None) -> Optional[dict]:
        f = self.folder(stage, key) / "stage.json"
        if not f.is_file():
            return None
        try:
            rec = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None
        if parent is not None and rec.get("parent_run_id") != parent.get("run_id"):
            return None  # made from an older run of its parent
        problem = _content_problem(f.parent, rec.get("content"))
        if problem:
            self.log(f"note: cached {stage} stage {f.parent} {problem}; computing it again")
            remove_folder(f.parent)
            return None
        return rec

    def finish(self, stage: str, key: str, config: dict, info: dict, parent: Optional[dict] = None) -> dict:
        """Record a computed stage: its settings, run ids, ``info`` and the hash of every file in its folder."""
        record = {"stage": stage, "key": key, "config": config, "run_id": uuid.uuid4().hex,
                  "parent_run_id": parent.get("run_id") if parent else None, **info,
                  "content": _content(self.folder(stage, key))}
        write_text(self.folder(stage, key) / "stage.json", json.dumps(jsonable(record), indent=2))
        return record

    def start(self, stage: str, key: str) -> None:
        """Create the stage's folder before computing it."""
        if self.on_compute is not None:
            self.on_compute(stage, key)
        self.folder(stage, key).mkdir(parents=True, exist_ok=True)


def _content(folder: Path) -> dict[str, str]:
    """{path relative to ``folder``: hash of its bytes} of the stage's files (not stage.json, not hidden
    temporaries)."""
    return {f.relative_to(folder).as_posix(): file_digest(f) for f in sorted(folder.rglob("*"))
            if f.is_file() and f.name != "stage.json" and not any(part.startswith(".")
                                                                  for part in f.relative_to(folder).parts)}


def _content_problem(folder: Path, content) -> str:
    """Why the files in ``folder`` are not the ones ``content`` recorded, or "" if they are."""
    if not isinstance(content, dict):
        return "has no record of its files' content (written by an older gapdiff)"
    for name, digest in content.items():
        path = folder / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            return f"records a file outside its folder ({name!r})"
        if not path.is_file():
            return f"lacks its file {name}"
        if file_digest(path) != digest:
            return f"has a changed or damaged file {name} (its content hash differs from the one recorded)"
    return ""


def jsonable(obj):
    """Plain JSON: non-finite floats become None, tuples lists, paths strings."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:
        return jsonable(obj.item())
    return obj
