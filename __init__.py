"""ComfyUI entry point of the GAP-Diff node pack (the repository root is the pack).

ComfyUI imports this file by path as a package, so only relative imports are used. The nodes live in `nodes/`,
the engine in `gapdiff_core/`. Classic V1 mappings: they load on every ComfyUI 0.3.x and later.

`WEB_DIRECTORY` holds the frontend extension that shows the Evaluate node's summary on the node.

Outside ComfyUI (pytest collecting the repository root as a package, AUTOMATIC1111, plain Python) the host
module `folder_paths` does not exist: then this file exports empty mappings instead of failing.
"""
import importlib.util

if importlib.util.find_spec("folder_paths") is not None:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
else:
    NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = {}, {}

WEB_DIRECTORY = "./web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
