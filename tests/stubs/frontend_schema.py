"""The ComfyUI frontend's workflow validation, as Python checks (tests only).

The frontend refuses a workflow file with an alert ("Invalid workflow against zod schema") when it does not parse
with `zComfyWorkflow`, the schema of UI format 0.4 in Comfy-Org/ComfyUI_frontend
(src/platform/workflow/validation/schemas/workflowSchema.ts; the same rules in frontend 1.27). `problems` applies
the rules of that schema that a workflow file can break, field by field, and names each failure by its path as zod
does (`groups[0].id`). Extra fields pass, as the schema's `.passthrough()` lets them.
"""
from __future__ import annotations

import re

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _int(v) -> bool:
    return _number(v) and float(v).is_integer()


def _node_id(v) -> bool:  # z.union([z.number().int(), z.string()])
    return _int(v) or isinstance(v, str)


def _slot_index(v) -> bool:  # an int, or a string that parses as one
    return _int(v) or (isinstance(v, str) and re.fullmatch(r"\s*[+-]?\d+.*", v) is not None)


def _data_type(v) -> bool:  # string, list of strings, or number
    return isinstance(v, str) or _number(v) or (isinstance(v, list) and all(isinstance(x, str) for x in v))


def _vector2(v) -> bool:
    if isinstance(v, dict):
        return _number(v.get("0")) and _number(v.get("1"))
    return isinstance(v, list) and len(v) == 2 and all(map(_number, v))


def problems(wf: dict) -> list[str]:
    """Every way `wf` fails the frontend's schema of UI format 0.4; empty when it loads without an alert."""
    out: list[str] = []

    def need(ok: bool, path: str, what: str) -> None:
        if not ok:
            out.append(f"{path}: expected {what}")

    def optional(obj: dict, key: str, test, path: str, what: str, nullable: bool = False) -> None:
        if key in obj and not (nullable and obj[key] is None):
            need(test(obj[key]), f"{path}.{key}" if path else key, what)

    if not isinstance(wf, dict):
        return ["(root): expected an object"]
    optional(wf, "id", lambda v: isinstance(v, str) and UUID.match(v) is not None, "", "a uuid string")
    optional(wf, "revision", _number, "", "a number")
    need(_node_id(wf.get("last_node_id")), "last_node_id", "an integer or a string")
    need(_number(wf.get("last_link_id")), "last_link_id", "a number")
    need(_number(wf.get("version")), "version", "a number")
    need(isinstance(wf.get("nodes"), list), "nodes", "an array")
    need(isinstance(wf.get("links"), list), "links", "an array")
    for i, link in enumerate(wf.get("links") or []):
        p = f"links[{i}]"
        if not (isinstance(link, list) and len(link) == 6):
            out.append(f"{p}: expected [id, source node, source slot, target node, target slot, type]")
            continue
        for j, (test, what) in enumerate(((_number, "a number"), (_node_id, "a node id"), (_slot_index, "a slot"),
                                          (_node_id, "a node id"), (_slot_index, "a slot"),
                                          (_data_type, "a data type"))):
            need(test(link[j]), f"{p}[{j}]", what)
    for i, node in enumerate(wf.get("nodes") or []):
        p = f"nodes[{i}]"
        if not isinstance(node, dict):
            out.append(f"{p}: expected an object")
            continue
        need(_node_id(node.get("id")), f"{p}.id", "an integer or a string")
        need(isinstance(node.get("type"), str), f"{p}.type", "a string")
        need(_vector2(node.get("pos")), f"{p}.pos", "[x, y]")
        need(_vector2(node.get("size")), f"{p}.size", "[width, height]")
        need(isinstance(node.get("flags"), dict), f"{p}.flags", "an object")
        for flag in ("collapsed", "pinned", "allow_interaction", "horizontal", "skip_repeated_outputs"):
            optional(node.get("flags") or {}, flag, lambda v: isinstance(v, bool), f"{p}.flags", "a boolean")
        need(_number(node.get("order")), f"{p}.order", "a number")
        need(_number(node.get("mode")), f"{p}.mode", "a number")
        need(isinstance(node.get("properties"), dict), f"{p}.properties", "an object")
        optional(node.get("properties") or {}, "Node name for S&R", lambda v: isinstance(v, str),
                 f"{p}.properties", "a string")
        optional(node, "widgets_values", lambda v: isinstance(v, (list, dict)), p, "an array or a record")
        optional(node, "color", lambda v: isinstance(v, str), p, "a string")
        optional(node, "bgcolor", lambda v: isinstance(v, str), p, "a string")
        for side, key in (("inputs", "link"), ("outputs", "links")):
            if side not in node:
                continue
            if not isinstance(node[side], list):
                out.append(f"{p}.{side}: expected an array")
                continue
            for j, slot in enumerate(node[side]):
                q = f"{p}.{side}[{j}]"
                need(isinstance(slot, dict) and isinstance(slot.get("name"), str), f"{q}.name", "a string")
                if not isinstance(slot, dict):
                    continue
                need(_data_type(slot.get("type")), f"{q}.type", "a data type")
                links_ok = _number if key == "link" else (lambda v: isinstance(v, list) and all(map(_number, v)))
                optional(slot, key, links_ok, q, "a link id" if key == "link" else "an array of link ids",
                         nullable=True)
                optional(slot, "slot_index", _slot_index, q, "a slot index")
    groups = wf.get("groups", [])
    need(isinstance(groups, list), "groups", "an array")
    for i, group in enumerate(groups if isinstance(groups, list) else []):
        p = f"groups[{i}]"
        if not isinstance(group, dict):
            out.append(f"{p}: expected an object")
            continue
        optional(group, "id", _number, p, "a number (or no id at all; null is refused)")
        need(isinstance(group.get("title"), str), f"{p}.title", "a string")
        need(isinstance(group.get("bounding"), list) and len(group["bounding"]) == 4
             and all(map(_number, group["bounding"])), f"{p}.bounding", "[x, y, width, height]")
        optional(group, "color", lambda v: isinstance(v, str), p, "a string")
        optional(group, "font_size", _number, p, "a number")
        optional(group, "locked", lambda v: isinstance(v, bool), p, "a boolean")
    for key in ("config", "extra"):
        optional(wf, key, lambda v: isinstance(v, dict), "", "an object or null", nullable=True)
    for key in ("links_ontop", "align_to_grid"):
        optional(wf.get("config") or {}, key, lambda v: isinstance(v, bool), "config", "a boolean")
    extra = wf.get("extra") or {}
    if "ds" in extra:
        ds = extra["ds"]
        need(isinstance(ds, dict) and _number(ds.get("scale")) and _vector2(ds.get("offset")), "extra.ds",
             "{scale: number, offset: [x, y]}")
    optional(extra, "frontendVersion", lambda v: isinstance(v, str), "extra", "a string")
    return out
