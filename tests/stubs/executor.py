"""Run an API prompt as ComfyUI 0.3.x's executor runs V1 nodes (its behaviour, not its code; tests only).

Every input reaches a node as a list: a widget value is a list of one, an output is the list of what each call of
its node returned. A node runs once per item (shorter lists repeat their last item); an INPUT_IS_LIST node runs
once with the whole lists. Outputs named in OUTPUT_IS_LIST are joined into one list. VALIDATE_INPUTS is called
the same way with the node's widget values. Every call runs under torch.inference_mode(), as in ComfyUI.
"""
from __future__ import annotations

import inspect
from typing import Callable

import torch


def _calls(fn: Callable, inputs: dict[str, list], whole_lists: bool) -> list:
    if whole_lists:
        return [fn(**inputs)]
    longest = max((len(v) for v in inputs.values()), default=1)
    return [fn(**{k: v[min(i, len(v) - 1)] for k, v in inputs.items()}) for i in range(longest)]


def validate(cls, widgets: dict) -> None:
    """Call `cls.VALIDATE_INPUTS` as ComfyUI does before a run; AssertionError with its message when it refuses."""
    check = getattr(cls, "VALIDATE_INPUTS", None)
    if check is None:
        return
    names = inspect.getfullargspec(check).args
    inputs = {k: [v] for k, v in widgets.items() if k in names}
    for verdict in _calls(check, inputs, getattr(cls, "INPUT_IS_LIST", False)):
        assert verdict is True, f"{cls.__name__}: {verdict}"


def execute(prompt: dict, classes: dict, stand_ins) -> tuple[dict, dict]:
    """Run `prompt` ({id: {class_type, inputs}}) in dependency order with the pack's `classes` and `stand_ins`
    (an object with a method per core node; it gets `node_id`). Returns ({id: outputs, each a list},
    {id: the node's ui dict, its lists joined over the calls})."""
    results: dict[str, list] = {}
    uis: dict[str, dict] = {}
    pending = dict(prompt)
    while pending:
        ready = [k for k, v in pending.items()
                 if all(not isinstance(x, list) or x[0] in results for x in v["inputs"].values())]
        assert ready, f"cycle or dangling link among {sorted(pending)}"
        for key in ready:
            node = pending.pop(key)
            inputs = {k: (results[v[0]][v[1]] if isinstance(v, list) else [v]) for k, v in node["inputs"].items()}
            cls = classes.get(node["class_type"])
            if cls is None:
                fn, whole, is_list = getattr(stand_ins, node["class_type"]), False, ()
                inputs["node_id"] = [key]
            else:
                validate(cls, {k: v for k, v in node["inputs"].items() if not isinstance(v, list)})
                obj = cls()
                fn, whole = getattr(obj, obj.FUNCTION), getattr(cls, "INPUT_IS_LIST", False)
                is_list = getattr(cls, "OUTPUT_IS_LIST", ())
            with torch.inference_mode():
                returns = _calls(fn, inputs, whole)
            outputs = []
            for r in returns:
                if isinstance(r, dict):
                    for name, items in r.get("ui", {}).items():
                        uis.setdefault(key, {}).setdefault(name, []).extend(items)
                    r = r.get("result", ())
                assert isinstance(r, tuple) and len(r) == len(cls.RETURN_TYPES if cls else r), node["class_type"]
                outputs.append(r)
            n_out = len(cls.RETURN_TYPES) if cls else 0
            results[key] = [[x for r in outputs for x in r[i]] if i < len(is_list) and is_list[i] else
                            [r[i] for r in outputs] for i in range(n_out)]
    return results, uis
