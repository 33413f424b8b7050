"""ComfyUI workflow files: node schemas in /object_info form, and UI-format (0.4) -> API-format conversion.

The conversion follows what the frontend's "Export (API)" does for the graphs shipped here: widget values are
matched to the node's widget inputs in declaration order, skipping the UI-only values that follow a seed widget
(`control_after_generate`) and an upload widget (`image_upload`); linked inputs become [source id, output slot];
UI-only nodes (Note, MarkdownNote) and muted nodes are left out.
"""
from __future__ import annotations

import json
from pathlib import Path

UI_ONLY = {"Note", "MarkdownNote"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
CORE_OBJECT_INFO = Path(__file__).with_name("core_object_info.json")


def node_info(cls) -> dict:
    """The /object_info entry of a V1 node class (the fields the conversion and the checks use)."""
    spec = cls.INPUT_TYPES()
    return {"input": spec, "input_order": {k: list(v) for k, v in spec.items()},
            "output": list(cls.RETURN_TYPES),
            "output_name": list(getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)),
            "output_node": bool(getattr(cls, "OUTPUT_NODE", False))}


def object_info(node_classes: dict) -> dict:
    """Schemas of `node_classes` (id -> class) plus the core nodes recorded from a real ComfyUI."""
    core = json.loads(CORE_OBJECT_INFO.read_text(encoding="utf-8"))
    core.pop("_comment", None)
    return {**core, **{k: node_info(c) for k, c in node_classes.items()}}


def input_kind(spec) -> str:
    """'COMBO' for a list of choices (or the newer ('COMBO', {options})), else the type name."""
    return "COMBO" if isinstance(spec[0], list) else spec[0]


def extra_widget_values(name: str, spec) -> int:
    """How many UI-only values the frontend saves after this widget's own value: one after a widget declaring
    `control_after_generate` and after any INT named seed or noise_seed (the frontend adds the control there too),
    one after an upload widget."""
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    control = options.get("control_after_generate") or (input_kind(spec) == "INT" and name in ("seed", "noise_seed"))
    return int(bool(control)) + int(bool(options.get("image_upload")))


def widget_inputs(info: dict) -> list[tuple[str, tuple]]:
    """(name, spec) of the inputs that are widgets, in the order the frontend lays them out (an input declaring
    `forceInput` is a socket only)."""
    out = []
    for section in ("required", "optional"):
        for name, spec in info["input"].get(section, {}).items():
            options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            if input_kind(spec) in WIDGET_TYPES and not options.get("forceInput"):
                out.append((name, spec))
    return out


def widget_values(node: dict, info: dict) -> dict:
    """{input name: value} of a UI node's widgets_values (inputs fed by a link keep their slot in the list). An
    optional widget missing at the end (the node gained it after the workflow was saved) takes its default, as the
    frontend gives it when it loads the workflow."""
    values = list(node.get("widgets_values") or [])
    optional = info["input"].get("optional", {})
    out, i = {}, 0
    for name, spec in widget_inputs(info):
        if i >= len(values) and name in optional:  # added after the workflow was saved: the frontend's default
            out[name] = spec[1]["default"]
            continue
        if i >= len(values):
            raise ValueError(f"node {node['id']} ({node['type']}): no widget value for {name!r}")
        out[name] = values[i]
        i += 1 + extra_widget_values(name, spec)
    if i != len(values):
        raise ValueError(f"node {node['id']} ({node['type']}): {len(values)} widget values, schema takes {i}")
    return out


def to_api(workflow: dict, info: dict) -> dict:
    """A UI-format workflow as the API prompt that POST /prompt accepts."""
    links = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        if node["type"] in UI_ONLY or node.get("mode", 0) in (2, 4):
            continue
        schema = info[node["type"]]
        inputs = widget_values(node, schema)
        for inp in node.get("inputs", []):
            if inp.get("link") is not None:
                _, src, slot, _, _, _ = links[inp["link"]]
                inputs[inp["name"]] = [str(src), slot]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs,
                                   "_meta": {"title": node.get("title", node["type"])}}
    return prompt
