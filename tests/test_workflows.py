"""The shipped ComfyUI workflows: well-formed UI format 0.4, every node known, links type-correct, widget values
valid, and each graph runs node by node (in link order, under inference mode as in ComfyUI) on the demo assets
that `gapdiff comfyui-demo-assets` writes."""
from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent / "stubs"))
import comfy_pack  # noqa: E402
import workflow_api  # noqa: E402

sys.path.remove(str(Path(__file__).parent / "stubs"))

WORKFLOWS = sorted((comfy_pack.ROOT / "workflows").glob("*.json"))
CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}


@pytest.fixture(scope="module")
def comfy(tmp_path_factory):
    """Pack + stand-in ComfyUI tree filled by the demo-assets command (untrained generator: fast)."""
    from gapdiff_core.commands import demo_assets as cmd

    base = tmp_path_factory.mktemp("comfyui")
    pack, folder_paths = comfy_pack.load_pack(base)
    parser = argparse.ArgumentParser()
    cmd.add_arguments(parser)
    assert cmd.run(parser.parse_args([folder_paths.models_dir, "--untrained"])) == 0
    info = workflow_api.object_info(pack.NODE_CLASS_MAPPINGS)
    inputs = sorted(os.listdir(folder_paths.get_input_directory()))
    info["LoadImage"]["input"]["required"]["image"] = [inputs, {"image_upload": True}]
    yield pack, folder_paths, info
    comfy_pack.unload()


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def upstream(wf: dict, node_id: int) -> set[int]:
    """Ids of every node whose output reaches `node_id` through links."""
    feeds: dict[int, set[int]] = {}
    for _, src, _, dst, _, _ in wf["links"]:
        feeds.setdefault(dst, set()).add(src)
    seen, todo = set(), [node_id]
    while todo:
        for src in feeds.get(todo.pop(), ()):
            if src not in seen:
                seen.add(src)
                todo.append(src)
    return seen


def wired(wf: dict, *types: str, end: int | None = None) -> bool:
    """A chain of links runs from a node of types[-1] through the others to a node of types[0] (or node `end`)."""
    kind = {n["id"]: n["type"] for n in wf["nodes"]}
    current = {end} if end is not None else {i for i, t in kind.items() if t == types[0]}
    for t in types[1:] if end is None else types:
        current = {u for i in current for u in upstream(wf, i) if kind[u] == t}
    return bool(current)


def test_shipped_workflows_are_the_documented_pipelines():
    """Each workflow in workflows/ is listed in docs/comfyui.md and wires the pipeline that table describes."""
    import re

    documented = set(re.findall(r"^\| `([a-z_]+\.json)` \|", (comfy_pack.ROOT / "docs" / "comfyui.md").read_text(),
                                re.M))
    assert {p.name for p in WORKFLOWS} == documented == {
        "clean_vs_protected.json", "protect.json", "protect_compress_attack_evaluate.json"}
    wf = {p.name: load(p) for p in WORKFLOWS}
    # Load Image -> Protect Image -> Save Image
    assert wired(wf["protect.json"], "SaveImage", "GAPDiffProtectImage", "LoadImage")
    assert wired(wf["protect.json"], "GAPDiffProtectImage", "GAPDiffLoadGenerator")
    # photos -> Protect -> JPEG -> DreamBooth -> Generate -> Evaluate
    assert wired(wf["protect_compress_attack_evaluate.json"], "GAPDiffEvaluateProtection", "GAPDiffGenerate",
                 "GAPDiffDreamBoothAttack", "GAPDiffJPEGCompress", "GAPDiffProtectImage", "ImageBatch", "LoadImage")
    # the same attack on clean and on protected photos, each evaluated, with identical settings
    both = wf["clean_vs_protected.json"]
    ends = [n["id"] for n in both["nodes"] if n["type"] == "GAPDiffEvaluateProtection"]
    assert len(ends) == 2
    assert sorted(wired(both, "GAPDiffProtectImage", end=e) for e in ends) == [False, True]
    for e in ends:
        assert wired(both, "GAPDiffGenerate", "GAPDiffDreamBoothAttack", "GAPDiffJPEGCompress", "ImageBatch", end=e)
    for node_type in ("GAPDiffJPEGCompress", "GAPDiffDreamBoothAttack", "GAPDiffGenerate", "GAPDiffEvaluateProtection"):
        settings = [n["widgets_values"] for n in both["nodes"] if n["type"] == node_type]
        assert len(settings) == 2 and settings[0] == settings[1], node_type


def test_demo_assets_command_writes_labelled_demo_models(comfy):
    from gapdiff_core import load_generator
    from gapdiff_core.cli import build_parser

    _, fp, _ = comfy
    models = Path(fp.models_dir)
    generator = load_generator(models / "gapdiff" / "gapdiff_demo_generator.safetensors")
    assert generator.info.demo and "DEMO" in generator.info.describe()
    assert (models / "checkpoints" / "gapdiff_demo_tiny_sd.safetensors").is_file()
    args = build_parser().parse_args(["comfyui-demo-assets", str(models), "--untrained"])
    assert args.run(args) == 0  # a second run keeps the files


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_is_ui_format_04(path):
    wf = load(path)
    assert wf["version"] == 0.4
    assert {"last_node_id", "last_link_id", "nodes", "links", "groups", "config", "extra"} <= set(wf)
    ids = [n["id"] for n in wf["nodes"]]
    assert len(set(ids)) == len(ids) and max(ids) <= wf["last_node_id"]
    assert max(link[0] for link in wf["links"]) <= wf["last_link_id"]
    for n in wf["nodes"]:
        assert {"id", "type", "pos", "size", "flags", "order", "mode", "properties", "widgets_values"} <= set(n)
    assert sorted(n["order"] for n in wf["nodes"]) == list(range(len(wf["nodes"])))


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_nodes_links_and_widgets_fit_the_schemas(comfy, path):
    pack, fp, info = comfy
    wf = load(path)
    nodes = {n["id"]: n for n in wf["nodes"]}
    for n in nodes.values():
        assert n["type"] in info or n["type"] in workflow_api.UI_ONLY, f"unknown node type {n['type']}"
    for link_id, src, src_slot, dst, dst_slot, typ in wf["links"]:
        s, d = nodes[src], nodes[dst]
        out = s["outputs"][src_slot]
        inp = d["inputs"][dst_slot]
        assert link_id in out["links"] and inp["link"] == link_id
        assert out["type"] == typ == info[s["type"]]["output"][src_slot]
        declared = {**info[d["type"]]["input"]["required"], **info[d["type"]]["input"].get("optional", {})}
        want = workflow_api.input_kind(declared[inp["name"]])
        assert want in (typ, "*"), f"link {link_id}: {typ} into {d['type']}.{inp['name']} ({want})"
        assert inp["type"] == want
    for n in nodes.values():
        if n["type"] in workflow_api.UI_ONLY:
            assert all(isinstance(v, str) for v in n["widgets_values"])
            continue
        schema = info[n["type"]]
        values = workflow_api.widget_values(n, schema)
        linked = {i["name"] for i in n.get("inputs", []) if i["link"] is not None}
        for name, spec in schema["input"]["required"].items():
            assert name in values or name in linked, f"{n['type']}.{name} is neither a widget nor linked"
        for name, spec in workflow_api.widget_inputs(schema):
            check_widget(n, name, spec, values[name])
        raw = n["widgets_values"]
        i = 0
        for name, spec in workflow_api.widget_inputs(schema):  # the UI-only values after a widget
            options = spec[1] if len(spec) > 1 else {}
            i += 1
            if options.get("control_after_generate"):
                assert raw[i] in CONTROL_VALUES
                i += 1
            if options.get("image_upload"):
                assert raw[i] == "image"
                i += 1


def check_widget(node, name, spec, value):
    kind = workflow_api.input_kind(spec)
    options = spec[1] if len(spec) > 1 else {}
    where = f"{node['type']} (node {node['id']}).{name} = {value!r}"
    if kind == "COMBO":
        assert value in spec[0], f"{where} not in {spec[0]}"
    elif kind == "INT":
        assert isinstance(value, int) and not isinstance(value, bool), where
        assert options.get("min", -math.inf) <= value <= options.get("max", math.inf), where
    elif kind == "FLOAT":
        assert isinstance(value, (int, float)), where
        assert options.get("min", -math.inf) <= value <= options.get("max", math.inf), where
    elif kind == "STRING":
        assert isinstance(value, str), where
    elif kind == "BOOLEAN":
        assert isinstance(value, bool), where


# ---------------------------------------------------------------- running the graphs
class CoreNodes:
    """Minimal stand-ins for the ComfyUI core nodes the workflows use (same inputs and outputs)."""

    def __init__(self, folder_paths):
        self.fp, self.saved, self.shown = folder_paths, {}, {}

    def LoadImage(self, image):
        with Image.open(self.fp.get_annotated_filepath(image)) as im:
            a = np.asarray(im.convert("RGB"), dtype=np.float32) / 255
        x = torch.from_numpy(a)[None]
        return x, torch.zeros(1, *x.shape[1:3])

    def ImageBatch(self, image1, image2):  # ComfyUI rescales image2 to image1's size
        if image1.shape[1:] != image2.shape[1:]:
            image2 = torch.nn.functional.interpolate(image2.movedim(-1, 1), size=image1.shape[1:3],
                                                     mode="bilinear").movedim(1, -1)
        return (torch.cat([image1, image2]),)

    def SaveImage(self, images, filename_prefix, node_id):
        self.saved[node_id] = (filename_prefix, images)
        return ()

    def PreviewImage(self, images, node_id):
        self.saved[node_id] = ("preview", images)
        return ()

    def PreviewAny(self, source, node_id):
        self.shown[node_id] = source
        return ()


def execute(prompt: dict, pack, core: CoreNodes) -> dict:
    """Run an API prompt node by node in dependency order; returns {node id: outputs}."""
    results, pending = {}, dict(prompt)
    while pending:
        ready = [k for k, v in pending.items()
                 if all(not isinstance(x, list) or x[0] in results for x in v["inputs"].values())]
        assert ready, f"cycle or dangling link among {sorted(pending)}"
        for key in ready:
            node = pending.pop(key)
            kwargs = {k: (results[v[0]][v[1]] if isinstance(v, list) else v) for k, v in node["inputs"].items()}
            cls = pack.NODE_CLASS_MAPPINGS.get(node["class_type"])
            with torch.inference_mode():  # as ComfyUI's executor
                if cls is None:
                    fn = getattr(core, node["class_type"])
                    if "node_id" in fn.__code__.co_varnames:
                        kwargs["node_id"] = key
                    out = fn(**kwargs)
                else:
                    obj = cls()
                    out = getattr(obj, obj.FUNCTION)(**kwargs)
            out = out["result"] if isinstance(out, dict) else out
            assert isinstance(out, tuple) and len(out) == len(cls.RETURN_TYPES if cls else out)
            results[key] = out
    return results


FAST = {  # widget values that keep the test quick on a CPU; everything else runs as shipped
    "GAPDiffDreamBoothAttack": {"steps": 2, "resolution": 64},
    "GAPDiffGenerate": {"steps": 2, "count": 1},
    "GAPDiffEvaluateProtection": {"serfiq_passes": 4},
}


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_runs_on_demo_assets(comfy, path, monkeypatch):
    pack, fp, info = comfy
    presets = importlib.import_module(pack.__name__ + ".gapdiff_core.attack.presets").PRESETS
    monkeypatch.setitem(presets, "tiny-lora", {**presets["tiny-lora"], "num_class_images": 1, "class_steps": 2})
    prompt = workflow_api.to_api(load(path), info)
    for node in prompt.values():
        node["inputs"].update(FAST.get(node["class_type"], {}))
    core = CoreNodes(fp)
    results = execute(prompt, pack, core)
    photos = [k for k, v in prompt.items() if v["class_type"] == "LoadImage"]
    assert photos and core.saved
    for key, (prefix, images) in core.saved.items():
        assert images.dim() == 4 and images.shape[-1] == 3 and images.dtype == torch.float32, prefix
        assert 0 <= images.min() and images.max() <= 1
    for key, node in prompt.items():
        if node["class_type"] == "GAPDiffProtectImage":
            src = node["inputs"]["image"]
            clean, protected = results[src[0]][src[1]], results[key][0]
            change = ((protected - clean) * 255).round().abs().max()
            assert protected.shape == clean.shape and 0 < change <= node["inputs"]["budget"]
        if node["class_type"] == "GAPDiffEvaluateProtection":
            fdfr, ism, brisque, serfiq, summary = results[key]
            assert 0 <= fdfr <= 1 and math.isfinite(brisque) and summary.startswith("GAP-Diff evaluation")
    assert all(isinstance(v, str) for v in core.shown.values())
    if path.name == "clean_vs_protected.json":
        summaries = [v for v in core.shown.values() if v.startswith("GAP-Diff evaluation")]
        assert len(summaries) == 2
