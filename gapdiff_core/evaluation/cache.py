"""The stage cache: every stage's outputs in ``<root>/<stage>/<key>/``, finished when its ``stage.json`` is there.

``key`` hashes the stage's own settings and its parent's key, so a rerun loads finished stages, an interrupted run
resumes, and changing one setting recomputes only what it affects. A stage computes in its folder (the attack
resumes there from its own checkpoint); ``stage.json`` is written last and atomically (:mod:`gapdiff_core.io.atomic`).
"""
from __future__ import annotations

import hashlib
import json
import math
import uuid
from pathlib import Path
from typing import Callable, Optional

from ..io.atomic import write_text

CACHE_VERSION = 1


def config_key(obj) -> str:
    """A short stable hash of a JSON-able configuration."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


class StageCache:
    """``root/<stage>/<key>/`` folders; a stage is finished when its ``stage.json`` exists (written last).

    Each finished stage gets a fresh ``run_id`` and records its parent's; a stage whose parent was recomputed
    (say, its cache folder deleted) no longer matches and is recomputed too.
    """

    def __init__(self, root: str | Path, on_compute: Optional[Callable[[str, str], None]] = None):
        self.root = Path(root)
        self.on_compute = on_compute

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
        return rec

    def finish(self, stage: str, key: str, config: dict, info: dict, parent: Optional[dict] = None) -> dict:
        record = {"stage": stage, "key": key, "config": config, "run_id": uuid.uuid4().hex,
                  "parent_run_id": parent.get("run_id") if parent else None, **info}
        write_text(self.folder(stage, key) / "stage.json", json.dumps(jsonable(record), indent=2))
        return record

    def start(self, stage: str, key: str) -> None:
        """Create the stage's folder before computing it."""
        if self.on_compute is not None:
            self.on_compute(stage, key)
        self.folder(stage, key).mkdir(parents=True, exist_ok=True)


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
