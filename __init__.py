"""ComfyUI entry point of the GAP-Diff node pack (the repository root is the pack).

ComfyUI imports this file by path as a package, so only relative imports are used. The nodes live in `nodes/`,
the engine in `gapdiff_core/`. Classic V1 mappings: they load on every ComfyUI 0.3.x and later.
"""
from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
