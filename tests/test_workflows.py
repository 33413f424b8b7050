"""The shipped ComfyUI workflows: well-formed UI format 0.4 that the frontend's own schema accepts, every node known,
links type-correct, widget values valid, and each graph runs as ComfyUI runs it (lists, per-photo calls, inference
mode) on the demo models that `gapdiff demo-assets` writes and on photos of three sizes and aspect ratios,
each saved at its own size."""
from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent / "stubs"))
import comfy_pack  # noqa: E402
import executor  # noqa: E402
import frontend_schema  # noqa: E402
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
    # Photos of One Person -> Protect Image -> Save Images
    assert wired(wf["protect.json"], "GAPDiffSaveImages", "GAPDiffProtectImage", "GAPDiffLoadPhotos")
    assert wired(wf["protect.json"], "GAPDiffProtectImage", "GAPDiffLoadGenerator")
    # photos -> Protect -> JPEG -> DreamBooth -> Generate -> Evaluate
    assert wired(wf["protect_compress_attack_evaluate.json"], "GAPDiffEvaluateProtection", "GAPDiffGenerate",
                 "GAPDiffDreamBoothAttack", "GAPDiffJPEGCompress", "GAPDiffProtectImage", "GAPDiffLoadPhotos")
    # the same attack on clean and on protected photos, each evaluated, with identical settings
    both = wf["clean_vs_protected.json"]
    ends = [n["id"] for n in both["nodes"] if n["type"] == "GAPDiffEvaluateProtection"]
    assert len(ends) == 2
    assert sorted(wired(both, "GAPDiffProtectImage", end=e) for e in ends) == [False, True]
    for e in ends:
        assert wired(both, "GAPDiffGenerate", "GAPDiffDreamBoothAttack", "GAPDiffJPEGCompress", "GAPDiffLoadPhotos",
                     end=e)
    for node_type in ("GAPDiffJPEGCompress", "GAPDiffDreamBoothAttack", "GAPDiffGenerate", "GAPDiffEvaluateProtection"):
        settings = [n["widgets_values"] for n in both["nodes"] if n["type"] == node_type]
        assert len(settings) == 2 and settings[0] == settings[1], node_type


def inputs_linked_from(wf: dict, node: dict) -> dict[str, str]:
    """{input name: type of the node linked into it} of `node`."""
    kind = {n["id"]: n["type"] for n in wf["nodes"]}
    src = {link[0]: link[1] for link in wf["links"]}
    return {i["name"]: kind[src[i["link"]]] for i in node.get("inputs", []) if i.get("link") is not None}


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_alters_photos_only_by_the_protection_and_marks_demo_results(comfy, path):
    """Only the pack's nodes touch a photo (no core ImageBatch, which crops and resizes to the first photo), and
    every result a person sees is connected to what tells a demo: each save and each evaluation gets the generator
    or attacked model that made its images."""
    pack, _, _ = comfy
    wf = load(path)
    types = {n["type"] for n in wf["nodes"]}
    assert types <= set(pack.NODE_CLASS_MAPPINGS) | {"PreviewImage", "PreviewAny", "Note"}, types
    assert "GAPDiffLoadPhotos" in types and "ImageBatch" not in types
    for n in wf["nodes"]:
        linked = inputs_linked_from(wf, n)
        if n["type"] == "GAPDiffSaveImages":
            made_by = linked["images"]
            assert made_by in ("GAPDiffProtectImage", "GAPDiffGenerate"), made_by
            assert linked.get("generator" if made_by == "GAPDiffProtectImage" else "attacked_model"), n["id"]
            if made_by == "GAPDiffProtectImage":
                assert linked["names"] == "GAPDiffLoadPhotos"
        if n["type"] == "GAPDiffEvaluateProtection":
            assert linked["attacked_model"] == "GAPDiffDreamBoothAttack"
            assert linked["references"] == "GAPDiffLoadPhotos"
            assert ("generator" in linked) == wired(wf, "GAPDiffProtectImage", end=n["id"])


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_passes_the_frontend_schema(path):
    assert frontend_schema.problems(load(path)) == []


def test_frontend_schema_refuses_what_the_frontend_refuses():
    """The checks fail where the frontend alerts: a group whose id is null (as clean_vs_protected.json had), a link
    that is not a 6-tuple, a node without a position."""
    wf = load(comfy_pack.ROOT / "workflows" / "clean_vs_protected.json")
    wf["groups"][0]["id"] = None
    assert frontend_schema.problems(wf) == ["groups[0].id: expected a number (or no id at all; null is refused)"]
    del wf["groups"][0]["id"]  # no id at all is allowed
    assert frontend_schema.problems(wf) == []
    wf["links"][0] = wf["links"][0][:5]
    del wf["nodes"][1]["pos"]
    wf["nodes"][2]["widgets_values"] = "x"
    assert [p.split(":")[0] for p in frontend_schema.problems(wf)] == ["links[0]", "nodes[1].pos",
                                                                      "nodes[2].widgets_values"]


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
    """Stand-ins for the ComfyUI core nodes the workflows use (same inputs), recording what they were given."""

    def __init__(self):
        self.previews, self.shown = {}, {}

    def PreviewImage(self, images, node_id):
        self.previews.setdefault(node_id, []).append(images)
        return ()

    def PreviewAny(self, source, node_id):
        self.shown.setdefault(node_id, []).append(source)
        return ()


FAST = {  # widget values that keep the test quick on a CPU; everything else runs as shipped
    "GAPDiffDreamBoothAttack": {"steps": 2, "resolution": 64},
    "GAPDiffGenerate": {"steps": 2, "count": 1},
    "GAPDiffEvaluateProtection": {"serfiq_passes": 4},
}
SIZES = {"portrait": (96, 160), "landscape": (200, 112), "square": (128, 128)}  # name: (width, height)


@pytest.fixture(scope="module")
def sized_photos(comfy):
    """Three photos of different sizes and aspect ratios (JPEG and PNG) in input/sizes/: name -> path."""
    _, fp, _ = comfy
    from gapdiff_core.samples import SAMPLES_DIR

    folder = Path(fp.get_input_directory()) / "sizes"
    folder.mkdir()
    out = {}
    with Image.open(SAMPLES_DIR / "obama.jpg") as im:
        for (name, size), suffix in zip(SIZES.items(), (".jpg", ".png", ".png")):
            out[name] = folder / (name + suffix)
            im.convert("RGB").resize(size).save(out[name])
    return out


def test_photos_node_default_finds_the_demo_photos(comfy):
    pack, fp, _ = comfy
    cls = pack.NODE_CLASS_MAPPINGS["GAPDiffLoadPhotos"]
    default = cls.INPUT_TYPES()["required"]["photos"][1]["default"]
    assert cls.VALIDATE_INPUTS(photos=default) is True
    photos, names = cls().load(default)
    assert names == ["gapdiff_sample_face_1", "gapdiff_sample_face_2", "gapdiff_sample_face_3"]
    assert len({p.shape for p in photos}) == 3  # the demo photos differ in size, and keep it


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_keeps_each_photo_its_size_and_marks_demo_results(comfy, sized_photos, path, monkeypatch):
    """Each workflow as ComfyUI runs it, on photos of three sizes and aspect ratios: every saved protected photo
    has its input's size and differs from it by at most the budget (and somewhere), its name carries the photo's
    name and DEMO; every evaluation summary starts with DEMO and is shown on the node."""
    from gapdiff_core.io import load_image

    pack, fp, info = comfy
    presets = importlib.import_module(pack.__name__ + ".gapdiff_core.attack.presets").PRESETS
    monkeypatch.setitem(presets, "tiny-lora", {**presets["tiny-lora"], "num_class_images": 1, "class_steps": 2})
    prompt = workflow_api.to_api(load(path), info)
    for node in prompt.values():
        node["inputs"].update(FAST.get(node["class_type"], {}))
        if node["class_type"] == "GAPDiffLoadPhotos":
            node["inputs"]["photos"] = "sizes"
    core = CoreNodes()
    results, uis = executor.execute(prompt, pack.NODE_CLASS_MAPPINGS, core)

    budgets = {k: v["inputs"]["budget"] for k, v in prompt.items() if v["class_type"] == "GAPDiffProtectImage"}
    checked = 0
    for key, node in prompt.items():
        if node["class_type"] != "GAPDiffSaveImages":
            continue
        files = [Path(fp.get_output_directory()) / f["subfolder"] / f["filename"] for f in uis[key]["images"]]
        assert files and all(f.is_file() and "DEMO" in f.name for f in files)
        source = node["inputs"]["images"][0]
        if source not in budgets:
            continue  # generated images: the attack's resolution, not a photo's
        assert len(files) == len(SIZES)
        for name, photo in sized_photos.items():
            (saved,) = [f for f in files if f.name.startswith(f"protected_{name}_DEMO_")]
            original, protected = load_image(photo).rgb.astype(int), load_image(saved).rgb.astype(int)
            assert protected.shape == original.shape == (SIZES[name][1], SIZES[name][0], 3), saved.name
            change = np.abs(protected - original).max()
            assert 0 < change <= budgets[source], (saved.name, change)
            checked += 1
    assert checked == len(SIZES)  # every workflow saves the protected photos

    summaries = []
    for key, node in prompt.items():
        if node["class_type"] == "GAPDiffEvaluateProtection":
            (fdfr,), (ism,), (brisque,), (serfiq,), (summary,) = results[key]
            assert uis[key]["text"] == [summary]  # what the node shows
            assert summary.startswith("DEMO on a toy model") and "GAP-Diff evaluation of 1 generated" in summary
            assert "faces found in 3/3 clean reference photo(s)" in summary  # all three photos, at their sizes
            summaries.append((fdfr, summary))
    assert len(summaries) == {"protect.json": 0, "protect_compress_attack_evaluate.json": 1,
                              "clean_vs_protected.json": 2}[path.name]
    # the note of clean_vs_protected: on the demo models both summaries find no face to compare
    assert all(fdfr == 1.0 and "ISM     n/a" in summary for fdfr, summary in summaries)
    for previews in core.previews.values():  # the amplified perturbation, one per photo at its size
        assert sorted(tuple(p.shape[1:3]) for p in previews) == sorted((h, w) for w, h in SIZES.values())
