"""Load the repository root as a ComfyUI node pack the way ComfyUI's `nodes.load_custom_node` does (tests only).

The pack's `__init__.py` is imported by file path under the folder path with "." replaced by "_x_", with these
stand-ins for ComfyUI's host modules first on sys.path. `unload()` removes the pack and the stand-ins again so
other test files see a clean interpreter.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

STUBS = Path(__file__).resolve().parent
ROOT = STUBS.parent.parent
HOST_MODULES = ("folder_paths", "comfy")


def _drop(prefixes) -> None:
    for name in list(sys.modules):
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            del sys.modules[name]


def load_pack(base: str | os.PathLike, root: Path = ROOT):
    """Import the pack with a fresh stand-in ComfyUI tree at `base`; returns (pack module, folder_paths)."""
    _drop(HOST_MODULES)
    sys.path.insert(0, str(STUBS))
    import folder_paths

    folder_paths.reset(str(base))
    name = str(root).replace(".", "_x_")
    _drop([name])
    spec = importlib.util.spec_from_file_location(name, os.path.join(root, "__init__.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module, folder_paths


def unload(root: Path = ROOT) -> None:
    _drop([str(root).replace(".", "_x_"), *HOST_MODULES])
    while str(STUBS) in sys.path:
        sys.path.remove(str(STUBS))
