"""The ComfyUI node pack, loaded as ComfyUI loads it (by path, unique module name) with stand-in host modules."""
from __future__ import annotations

import inspect
import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "stubs"))
import comfy_pack  # noqa: E402

from gapdiff_core.common.budget import BUDGET_MAX, BUDGET_MIN, BUDGET_RULE  # noqa: E402
from gapdiff_core.common.visualize import amplified_perturbation  # noqa: E402

sys.path.remove(str(Path(__file__).parent / "stubs"))

# node id -> (inputs in widget order as (name, type), outputs as (name, type)); saved workflows rely on these
INTERFACE = {
    "GAPDiffLoadGenerator": ([("generator_name", "COMBO")], [("generator", "GAPDIFF_GENERATOR"), ("info", "STRING")]),
    "GAPDiffProtectImage": ([("image", "IMAGE"), ("generator", "GAPDIFF_GENERATOR"), ("budget", "INT"),
                             ("mode", "COMBO"), ("precision", "COMBO"), ("norm", "COMBO")],
                            [("protected", "IMAGE"), ("perturbation", "IMAGE")]),
    "GAPDiffJPEGCompress": ([("image", "IMAGE"), ("quality", "INT")], [("image", "IMAGE")]),
    "GAPDiffPreprocess": ([("image", "IMAGE"), ("transform", "COMBO"), ("blur_kernel", "INT"),
                           ("blur_sigma_x", "FLOAT"), ("blur_sigma_y", "FLOAT"), ("noise_std", "FLOAT"),
                           ("seed", "INT"), ("quantize_levels", "INT"), ("resize_short_side", "INT"),
                           ("resize_method", "COMBO")], [("image", "IMAGE")]),
    "GAPDiffLoadSurrogate": ([("model_name", "COMBO")], [("surrogate", "GAPDIFF_SURROGATE"), ("info", "STRING")]),
    "GAPDiffDreamBoothAttack": ([("surrogate", "GAPDIFF_SURROGATE"), ("images", "IMAGE"), ("instance_prompt", "STRING"),
                                 ("class_prompt", "STRING"), ("preset", "COMBO"), ("steps", "INT"),
                                 ("resolution", "INT"), ("seed", "INT"), ("lora_name", "STRING"),
                                 ("overwrite", "BOOLEAN")],
                                [("attacked_model", "GAPDIFF_ATTACKED_MODEL"), ("info", "STRING")]),
    "GAPDiffGenerate": ([("attacked_model", "GAPDIFF_ATTACKED_MODEL"), ("prompts", "STRING"), ("count", "INT"),
                         ("steps", "INT"), ("guidance", "FLOAT"), ("seed", "INT"), ("scheduler", "COMBO")],
                        [("images", "IMAGE")]),
    "GAPDiffEvaluateProtection": ([("generated", "IMAGE"), ("references", "IMAGE"), ("serfiq_passes", "INT"),
                                   ("attacked_model", "GAPDIFF_ATTACKED_MODEL"), ("generator", "GAPDIFF_GENERATOR")],
                                  [("fdfr", "FLOAT"), ("ism", "FLOAT"), ("brisque", "FLOAT"), ("serfiq", "FLOAT"),
                                   ("summary", "STRING")]),
    "GAPDiffIterativeProtect": ([("image", "IMAGE"), ("surrogate", "GAPDIFF_SURROGATE"), ("method", "COMBO"),
                                 ("schedule", "COMBO"), ("budget", "FLOAT"), ("seed", "INT"), ("resolution", "INT"),
                                 ("clean_set", "IMAGE")],
                                [("protected", "IMAGE"), ("info", "STRING")]),
    "GAPDiffTransform": ([("image", "IMAGE"), ("spec", "STRING"), ("seed", "INT"), ("surrogate", "GAPDIFF_SURROGATE")],
                         [("image", "IMAGE")]),
    "GAPDiffLoadPhotos": ([("photos", "STRING")], [("photos", "IMAGE"), ("names", "STRING")]),
    "GAPDiffSaveImages": ([("images", "IMAGE"), ("filename_prefix", "STRING"), ("names", "STRING"),
                           ("generator", "GAPDIFF_GENERATOR"), ("attacked_model", "GAPDIFF_ATTACKED_MODEL")], []),
}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


@pytest.fixture(scope="module")
def comfy(tmp_path_factory):
    """The loaded pack plus its stand-in ComfyUI tree, with an ngf=8 generator and the tiny surrogate in it."""
    from gapdiff_core import Generator, GeneratorInfo, save_generator
    from gapdiff_core.diffusion import Surrogate

    base = tmp_path_factory.mktemp("comfyui")
    pack, folder_paths = comfy_pack.load_pack(base)
    torch.manual_seed(0)
    save_generator(Generator(ngf=8).eval(), Path(folder_paths.models_dir) / "gapdiff" / "tiny.safetensors",
                   GeneratorInfo(ngf=8, demo=True, provenance="test"))
    Surrogate.tiny(seed=0).save_single_file(Path(folder_paths.models_dir) / "checkpoints" / "tiny_sd.safetensors")
    import comfy.model_management
    import comfy.utils
    yield pack, folder_paths, comfy.utils, comfy.model_management
    comfy_pack.unload()


@pytest.fixture(scope="module")
def surrogate(comfy):
    """The tiny surrogate through Load Surrogate, loaded in inference mode as ComfyUI runs nodes."""
    pack, *_ = comfy
    with torch.inference_mode():
        return run(pack, "GAPDiffLoadSurrogate", model_name="tiny_sd.safetensors")


def node(pack, node_id):
    return pack.NODE_CLASS_MAPPINGS[node_id]()


def run(pack, node_id, **inputs):
    """Call a node as ComfyUI does: an INPUT_IS_LIST node gets every input as a list (a list given stays one)."""
    obj = node(pack, node_id)
    if getattr(obj, "INPUT_IS_LIST", False):
        inputs = {k: v if isinstance(v, list) else [v] for k, v in inputs.items()}
    out = getattr(obj, obj.FUNCTION)(**inputs)
    return out["result"] if isinstance(out, dict) else out


def faces(n=2, h=64, w=80):
    g = torch.Generator().manual_seed(1)
    return (torch.randint(0, 256, (n, h, w, 3), generator=g).float() / 255)


def input_type(spec):
    return "COMBO" if isinstance(spec[0], list) else spec[0]


# ---------------------------------------------------------------- loading and declarations
def test_loads_as_v1_pack_under_path_module_name(comfy):
    pack, *_ = comfy
    assert pack.__name__ == str(comfy_pack.ROOT).replace(".", "_x_")
    assert isinstance(pack.NODE_CLASS_MAPPINGS, dict) and not hasattr(pack, "comfy_entrypoint")
    assert set(pack.NODE_DISPLAY_NAME_MAPPINGS) == set(pack.NODE_CLASS_MAPPINGS)
    assert set(pack.NODE_CLASS_MAPPINGS) >= set(INTERFACE)
    assert all(k.startswith("GAPDiff") for k in pack.NODE_CLASS_MAPPINGS)


HOST_MODULES = {"comfy", "comfy_extras", "comfy_execution", "folder_paths", "server", "execution", "nodes",
                "latent_preview", "modules", "launch", "webui"}  # ComfyUI's and AUTOMATIC1111's top-level modules


def _imported_modules(path: Path) -> set[str]:
    """Top-level names of every absolute import in a file, lazy ones inside functions included."""
    import ast

    names = set()
    for n in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(n, ast.Import):
            names |= {a.name.split(".")[0] for a in n.names}
        elif isinstance(n, ast.ImportFrom) and n.level == 0 and n.module:
            names.add(n.module.split(".")[0])
    return names


def test_engine_never_imports_a_host_module():
    """gapdiff_core must work without ComfyUI or AUTOMATIC1111: no file imports a host module, not even lazily,
    and Gradio only in the UI (gapdiff_core/ui). In the node pack every host import lives in
    nodes/host.py: no other nodes/*.py imports comfy, folder_paths or any other host module, lazily or not."""
    offenders = {}
    for path in sorted((comfy_pack.ROOT / "gapdiff_core").rglob("*.py")):
        rel = path.relative_to(comfy_pack.ROOT).as_posix()
        allowed_gradio = rel.startswith("gapdiff_core/ui/")
        bad = _imported_modules(path) & (HOST_MODULES | (set() if allowed_gradio else {"gradio", "gradio_client"}))
        if bad:
            offenders[rel] = sorted(bad)
    nodes = comfy_pack.ROOT / "nodes"
    assert {"comfy", "folder_paths"} <= _imported_modules(nodes / "host.py")  # the check sees host imports
    for path in sorted(nodes.glob("*.py")):
        bad = _imported_modules(path) & HOST_MODULES
        if bad and path.name != "host.py":
            offenders[f"nodes/{path.name}"] = sorted(bad)
    assert offenders == {}


def test_engine_imports_with_host_modules_and_gradio_unavailable():
    """The engine's modules import in a Python where every host module and Gradio raise ImportError."""
    import subprocess

    blocked = sorted(HOST_MODULES | {"gradio"})
    code = f"""
import importlib, sys
BLOCKED = {blocked!r}
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError("host module " + name)
sys.meta_path.insert(0, Block())
for m in ("gapdiff_core", "gapdiff_core.model.protector", "gapdiff_core.io", "gapdiff_core.model.checkpoint",
          "gapdiff_core.preprocess", "gapdiff_core.metrics", "gapdiff_core.protections", "gapdiff_core.cli"):
    importlib.import_module(m)
print(sorted(n for n in sys.modules if n.split(".")[0] in BLOCKED))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=comfy_pack.ROOT,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("node_id", sorted(INTERFACE))
def test_declared_inputs_and_outputs(comfy, node_id):
    pack, *_ = comfy
    cls = pack.NODE_CLASS_MAPPINGS[node_id]
    spec = cls.INPUT_TYPES()
    assert set(spec) <= {"required", "optional", "hidden"}
    declared = [(name, input_type(s)) for name, s in {**spec["required"], **spec.get("optional", {})}.items()]
    inputs, outputs = INTERFACE[node_id]
    assert declared == inputs
    assert list(zip(cls.RETURN_NAMES, cls.RETURN_TYPES)) == outputs
    assert cls.CATEGORY == "GAP-Diff" and cls.DESCRIPTION
    params = inspect.signature(getattr(cls, cls.FUNCTION)).parameters
    assert [p for p in params if p != "self"] == [name for name, _ in inputs]
    for name, s in spec["required"].items():
        options = s[1] if len(s) > 1 else {}
        if input_type(s) in ("INT", "FLOAT"):
            assert options["min"] <= options["default"] <= options["max"], name
        if input_type(s) == "INT" and name in ("seed", "noise_seed"):
            # the frontend adds its control widget to these names whatever the node declares: declare it, so
            # workflows saved from the UI carry the value the schema expects
            assert options.get("control_after_generate") is True, name
        if input_type(s) == "COMBO" and "default" in options:
            assert options["default"] in s[0], name


def test_generator_folder_registered_idempotently_with_extensions(comfy):
    pack, fp, *_ = comfy
    models = Path(fp.models_dir)
    (models / "gapdiff" / "notes.txt").write_text("not a model")
    (models / "gapdiff" / "official.pth").write_bytes(b"")
    extra = str(models.parent / "elsewhere")
    fp.folder_names_and_paths["gapdiff"][0].append(extra)  # as if extra_model_paths.yaml had added one
    for _ in range(3):
        pack.nodes.host.register_generator_folder()
    paths, extensions = fp.folder_names_and_paths["gapdiff"]
    assert paths == [str(models / "gapdiff"), extra] and {".pth", ".safetensors"} <= extensions
    names = pack.NODE_CLASS_MAPPINGS["GAPDiffLoadGenerator"].INPUT_TYPES()["required"]["generator_name"][0]
    assert names == ["official.pth", "tiny.safetensors"]
    (models / "gapdiff" / "official.pth").unlink()


def test_surrogate_list_has_checkpoints_and_diffusers_folders(comfy):
    pack, fp, *_ = comfy
    folder = Path(fp.models_dir) / "diffusers" / "my-sd15"
    folder.mkdir(parents=True)
    (folder / "model_index.json").write_text("{}")
    names = pack.NODE_CLASS_MAPPINGS["GAPDiffLoadSurrogate"].INPUT_TYPES()["required"]["model_name"][0]
    assert names == ["tiny_sd.safetensors", "[diffusers] my-sd15"]
    assert pack.nodes.host.surrogate_path("[diffusers] my-sd15") == str(folder)
    with pytest.raises(FileNotFoundError, match="models/checkpoints"):
        pack.nodes.host.surrogate_path("missing.safetensors")


def test_surrogate_list_has_every_single_file_load_surrogate_reads(comfy):
    """.pt, .pth and .bin surrogates load (diffusion.loading.SINGLE_FILE_SUFFIXES) and are listed too; the list
    once held only .safetensors and .ckpt. Files of other kinds in models/checkpoints stay hidden."""
    from gapdiff_core.diffusion.loading import SINGLE_FILE_SUFFIXES

    pack, fp, *_ = comfy
    folder = Path(fp.models_dir) / "checkpoints"
    made = [folder / f"sd{suffix}" for suffix in (*SINGLE_FILE_SUFFIXES, ".pkl", ".pt2")]
    for path in made:
        path.write_bytes(b"")
    try:
        names = pack.NODE_CLASS_MAPPINGS["GAPDiffLoadSurrogate"].INPUT_TYPES()["required"]["model_name"][0]
        assert {n for n in names if n.startswith("sd.")} == {f"sd{suffix}" for suffix in SINGLE_FILE_SUFFIXES}
        assert {".pt", ".pth", ".bin", ".ckpt", ".safetensors"} == set(SINGLE_FILE_SUFFIXES)
    finally:
        for path in made:
            path.unlink()


def test_choices_and_budget_range_come_from_the_core_constants(comfy):
    from gapdiff_core.model.checkpoint import GENERATOR_SUFFIXES
    from gapdiff_core.model.protector import MODES, PRECISIONS

    pack, fp, *_ = comfy
    protect = pack.NODE_CLASS_MAPPINGS["GAPDiffProtectImage"].INPUT_TYPES()["required"]
    assert protect["mode"][0] == list(MODES) and protect["precision"][0] == ["auto", *PRECISIONS]
    assert (protect["budget"][1]["min"], protect["budget"][1]["max"]) == (BUDGET_MIN, BUDGET_MAX)
    iterative = pack.NODE_CLASS_MAPPINGS["GAPDiffIterativeProtect"].INPUT_TYPES()["required"]
    assert (iterative["budget"][1]["min"], iterative["budget"][1]["max"]) == (0, BUDGET_MAX)  # 0: the method's own
    assert fp.folder_names_and_paths["gapdiff"][1] >= set(GENERATOR_SUFFIXES)


@pytest.mark.parametrize("budget", [0, 256])
def test_protect_node_checks_the_budget_with_the_one_rule(comfy, budget):
    pack, *_ = comfy
    generator, _ = run(pack, "GAPDiffLoadGenerator", generator_name="tiny.safetensors")
    with pytest.raises(ValueError, match=re.escape(BUDGET_RULE)):  # the pack's own copy of BudgetError
        run(pack, "GAPDiffProtectImage", image=faces(1), generator=generator, budget=budget, mode="working",
            precision="fp32")


@pytest.mark.parametrize("budget", [0.5, 300.0])
def test_iterative_node_refuses_a_budget_outside_the_rule_before_any_work(comfy, surrogate, budget, monkeypatch):
    """Budget 0.5 once reached the method, which floored it to 0 and changed nothing; now the node refuses it, as
    every other budget outside 1-255 (0 still means the method's own default)."""
    import importlib

    pack, *_ = comfy
    node_module = importlib.import_module(pack.__name__ + ".nodes.iterative")
    monkeypatch.setattr(node_module, "get_protection", lambda *a, **k: pytest.fail("the method was built"))
    with pytest.raises(ValueError, match=re.escape(BUDGET_RULE)):  # the pack's own copy of BudgetError
        run(pack, "GAPDiffIterativeProtect", image=faces(1, 64, 64), surrogate=surrogate[0], method="photoguard",
            schedule="tiny", budget=budget, seed=0, resolution=64)


def test_lora_copy_is_atomic_and_never_silently_replaces_another_file(comfy, tmp_path):
    """The copy into models/loras goes through io.atomic; the same content again is no error, a different file of
    the same name is kept (the error names it and both ways on) unless overwrite is set. shutil.copyfile replaced
    it silently."""
    pack, fp, *_ = comfy
    save_lora = pack.nodes.attack.save_lora
    first, second = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    first.write_bytes(b"lora one")
    second.write_bytes(b"lora two")
    target = Path(fp.models_dir) / "loras" / "mine.safetensors"
    assert save_lora(first, "mine.safetensors", overwrite=False) == target and target.read_bytes() == b"lora one"
    assert save_lora(first, "mine.safetensors", overwrite=False) == target  # same content: nothing to refuse
    with pytest.raises(FileExistsError) as err:
        save_lora(second, "mine.safetensors", overwrite=False)
    assert "models/loras/mine.safetensors" in str(err.value) and "overwrite" in str(err.value)
    assert "lora_name" in str(err.value) and str(second) in str(err.value)
    assert target.read_bytes() == b"lora one"
    save_lora(second, "mine.safetensors", overwrite=True)
    assert target.read_bytes() == b"lora two"
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".gapdiff-")]
    target.unlink()


# ---------------------------------------------------------------- running the nodes
@pytest.mark.slow
def test_load_generator_and_protect(comfy):
    pack, fp, utils, mm = comfy
    generator, info = run(pack, "GAPDiffLoadGenerator", generator_name="tiny.safetensors")
    assert generator.ngf == 8 and "DEMO" in info
    calls = []
    utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: calls.append((value, total)))
    image = faces(3)
    protected, perturbation = run(pack, "GAPDiffProtectImage", image=image, generator=generator, budget=4,
                                  mode="working", precision="fp32")
    utils.set_progress_bar_global_hook(None)
    assert protected.shape == image.shape == perturbation.shape and protected.dtype == torch.float32
    assert protected.device.type == "cpu"
    change = (protected * 255).round() - (image * 255).round()
    assert change.abs().max() <= 4 and change.abs().max() > 0
    assert torch.equal(protected * 255, (protected * 255).round())
    expected, _ = amplified_perturbation((image * 255).round().numpy(), (protected * 255).round().numpy(), 4)
    assert torch.equal((perturbation * 255).round(), torch.from_numpy(expected).float())
    assert calls[-1] == (3, 3) and len(calls) == 3
    running, _ = run(pack, "GAPDiffProtectImage", image=image, generator=generator, budget=4, mode="working",
                     precision="fp32", norm="running")
    assert not torch.equal(running, protected)  # the default is per-image statistics, not eval mode
    assert "per-image statistics" in info
    before = {k: v.clone() for k, v in generator.state_dict().items()}
    run(pack, "GAPDiffProtectImage", image=image[:1], generator=generator, budget=4, mode="working", precision="bf16")
    after = generator.state_dict()  # the loader's cached generator is left as it was
    assert all(after[k].dtype == v.dtype and torch.equal(after[k], v) for k, v in before.items())


def test_protect_stops_when_cancelled(comfy):
    pack, fp, utils, mm = comfy
    generator, _ = run(pack, "GAPDiffLoadGenerator", generator_name="tiny.safetensors")
    mm.interrupt_current_processing(True)
    with pytest.raises(mm.InterruptProcessingException):
        run(pack, "GAPDiffProtectImage", image=faces(2), generator=generator, budget=8, mode="native",
            precision="fp32")
    assert not mm.processing_interrupted()


def test_load_generator_names_the_folder_when_missing(comfy):
    pack, *_ = comfy
    with pytest.raises(FileNotFoundError, match="models/gapdiff"):
        run(pack, "GAPDiffLoadGenerator", generator_name="absent.safetensors")


def test_jpeg_compress_is_real_libjpeg(comfy):
    from gapdiff_core.preprocess import real

    pack, *_ = comfy
    image = faces(2)
    (out,) = run(pack, "GAPDiffJPEGCompress", image=image, quality=50)
    expected = real.jpeg(image.movedim(-1, 1), 50).movedim(1, -1)
    assert out.shape == image.shape and torch.equal(out, expected)
    assert not torch.equal(out, (image * 255).round() / 255)


PREPROCESS_INPUTS = dict(blur_kernel=3, blur_sigma_x=0.1, blur_sigma_y=2.0, noise_std=0.05, seed=0, quantize_levels=8,
                         resize_short_side=32, resize_method="pillow")


@pytest.mark.parametrize("transform,shape", [("gaussian_blur", (2, 64, 80, 3)), ("gaussian_noise", (2, 64, 80, 3)),
                                             ("quantize", (2, 64, 80, 3)), ("resize", (2, 32, 40, 3))])
def test_preprocess(comfy, transform, shape):
    pack, *_ = comfy
    image = faces(2)
    (out,) = run(pack, "GAPDiffPreprocess", image=image, transform=transform, **PREPROCESS_INPUTS)
    assert out.shape == shape and out.dtype == torch.float32 and 0 <= out.min() and out.max() <= 1
    assert torch.equal(out * 255, (out * 255).round())
    if transform == "quantize":
        assert len(torch.unique(out)) <= 9  # floor(x * 8) / 8: 0, 1/8, ..., 1


def _former_path(x, transform, settings):
    """What JPEG Compress and Preprocess computed before they went through the registry (preprocess.real)."""
    from gapdiff_core.preprocess import real

    if transform == "jpeg":
        return real.jpeg(x, quality=settings["quality"])
    if transform == "gaussian_blur":
        k = settings["blur_kernel"]
        return real.gaussian_blur(x, (k, k), sigma_x=settings["blur_sigma_x"], sigma_y=settings["blur_sigma_y"])
    if transform == "gaussian_noise":
        return real.gaussian_noise(x, std=settings["noise_std"], seed=settings["seed"])
    if transform == "quantize":
        return real.quantize(x, levels=settings["quantize_levels"])
    return real.resize(x, settings["resize_short_side"], method=settings["resize_method"])


@pytest.mark.parametrize("transform,changes", [
    ("jpeg", {"quality": 43}), ("gaussian_blur", {}), ("gaussian_blur", {"blur_kernel": 7, "blur_sigma_x": 1.5}),
    ("gaussian_blur", {"blur_kernel": 5, "blur_sigma_x": 0.0, "blur_sigma_y": 0.0}),
    ("gaussian_noise", {"noise_std": 0.1, "seed": 12345}), ("quantize", {"quantize_levels": 5}),
    ("resize", {"resize_short_side": 56}), ("resize", {"resize_short_side": 40, "resize_method": "opencv"})])
def test_jpeg_and_preprocess_nodes_give_the_former_outputs_through_the_registry(comfy, transform, changes):
    """The nodes now build a registry spec; on a photo (and a batch: noise is drawn for the batch at once, as
    before) the result is byte-identical to the former preprocess.real functions."""
    pack, *_ = comfy
    image = torch.cat([sample_photo("obama.jpg", 96), sample_photo("obama2.jpg", 96)])
    if transform == "jpeg":
        settings = {"quality": 43}
        (out,) = run(pack, "GAPDiffJPEGCompress", image=image, **settings)
    else:
        settings = {**PREPROCESS_INPUTS, **changes}
        (out,) = run(pack, "GAPDiffPreprocess", image=image, transform=transform, **settings)
    expected = _former_path(image.movedim(-1, 1), transform, settings).movedim(1, -1)
    assert out.shape == expected.shape and torch.equal(out, expected)
    assert out.shape != image.shape or not torch.equal(out, image)


def test_preprocess_rejects_even_kernel_before_running(comfy):
    pack, *_ = comfy
    cls = pack.NODE_CLASS_MAPPINGS["GAPDiffPreprocess"]
    assert cls.VALIDATE_INPUTS(blur_kernel=3) is True
    assert "odd" in cls.VALIDATE_INPUTS(blur_kernel=4)
    assert "odd" in cls.VALIDATE_INPUTS(blur_kernel=33)


def test_transform_node_is_registered_with_its_display_name(comfy):
    pack, *_ = comfy
    assert pack.NODE_DISPLAY_NAME_MAPPINGS["GAPDiffTransform"] == "Transform (robustness)"
    spec = pack.NODE_CLASS_MAPPINGS["GAPDiffTransform"].INPUT_TYPES()
    assert spec["required"]["spec"][1]["default"] == "jpeg:75" and "diffpure[:t" in \
        spec["required"]["spec"][1]["tooltip"]
    assert list(spec["optional"]) == ["surrogate"]


def test_transform_node_applies_the_spec_photo_by_photo_with_the_matrix_seeds(comfy):
    from gapdiff_core.common.seeds import derive_seed
    from gapdiff_core.evaluation.robustness_matrix import PHOTO_STREAM
    from gapdiff_core.preprocess import parse, real

    pack, *_ = comfy
    image = torch.cat([sample_photo("obama.jpg", 96), sample_photo("obama2.jpg", 96)])
    (out,) = run(pack, "GAPDiffTransform", image=image, spec="jpeg:75", seed=0)
    assert torch.equal(out, real.jpeg(image.movedim(-1, 1), 75).movedim(1, -1))
    spec = "rescale:0.5|noise:0.05|resize:48"
    (out,) = run(pack, "GAPDiffTransform", image=image, spec=spec, seed=7)
    assert out.shape == (2, 48, 48, 3)
    for i in range(2):
        expected = parse(spec)(image[i:i + 1].movedim(-1, 1), seed=derive_seed(PHOTO_STREAM, 7, i))
        assert torch.equal(out[i:i + 1], expected.movedim(1, -1))
    same = torch.cat([image[:1], image[:1]])
    (noisy,) = run(pack, "GAPDiffTransform", image=same, spec="noise:0.05", seed=7)
    assert not torch.equal(noisy[0], noisy[1])  # each photo draws its own noise
    (again,) = run(pack, "GAPDiffTransform", image=same, spec="noise:0.05", seed=7)
    assert torch.equal(noisy, again)


def test_transform_node_refuses_a_bad_spec_naming_it(comfy):
    pack, *_ = comfy
    cls = pack.NODE_CLASS_MAPPINGS["GAPDiffTransform"]
    assert cls.VALIDATE_INPUTS(spec="platform:instagram|jpeg:60") is True
    assert cls.VALIDATE_INPUTS() is True  # a spec fed by a link is checked when the node runs
    for bad, problem in (("jpg:75", "unknown transform 'jpg'"), ("jpeg:101", "quality must be in"),
                         ("resize:64||jpeg:75", "empty step")):
        message = cls.VALIDATE_INPUTS(spec=bad)
        assert isinstance(message, str) and repr(bad) in message and problem in message
        with pytest.raises(ValueError, match=re.escape(repr(bad))):
            run(pack, "GAPDiffTransform", image=faces(1), spec=bad, seed=0)


def test_transform_node_purification_needs_the_surrogate(comfy, surrogate):
    pack, *_ = comfy
    photo = faces(1, 64, 64)
    with pytest.raises(ValueError, match=r"'diffpure:0\.0,steps=1'.*connect a Load Surrogate node"):
        run(pack, "GAPDiffTransform", image=photo, spec="diffpure:0.0,steps=1", seed=0)
    model, _ = surrogate
    with torch.inference_mode():
        (same,) = run(pack, "GAPDiffTransform", image=photo, spec="diffpure:0.0,steps=1", seed=0, surrogate=model)
        (purified,) = run(pack, "GAPDiffTransform", image=photo, spec="diffpure:0.5,steps=2", seed=0,
                          surrogate=model)
        (impressed,) = run(pack, "GAPDiffTransform", image=photo, spec="impress:steps=2", seed=0, surrogate=model)
    assert same.shape == purified.shape == impressed.shape == photo.shape
    assert (same - photo).abs().max() <= 2 / 255 < (purified - photo).abs().max()
    assert not torch.equal(impressed, photo)  # IMPRESS optimises the photo: it runs under ComfyUI's inference mode


def test_transform_node_stops_between_photos_when_cancelled(comfy):
    pack, fp, utils, mm = comfy
    mm.interrupt_current_processing(True)
    with pytest.raises(mm.InterruptProcessingException):
        run(pack, "GAPDiffTransform", image=faces(3), spec="jpeg:75", seed=0)
    assert not mm.processing_interrupted()


def test_load_surrogate_is_labelled_demo(surrogate):
    surrogate, info = surrogate
    assert not any(p.is_inference() for p in surrogate.unet.parameters())  # trainable by the attack node
    assert surrogate.is_demo and info.startswith("DEMO surrogate")
    assert surrogate.device.type == "cpu"


def sample_photo(name="obama.jpg", size=256):
    from PIL import Image

    import gapdiff_core

    image = Image.open(Path(gapdiff_core.__file__).parent / "samples" / name).convert("RGB").resize((size, size))
    return torch.from_numpy(np.asarray(image).copy()).float().div(255)[None]


def test_evaluate_protection(comfy):
    pack, *_ = comfy
    obj = node(pack, "GAPDiffEvaluateProtection")
    reference = sample_photo("obama.jpg")
    generated = torch.cat([sample_photo("obama2.jpg"), faces(1, 256, 256)])
    out = obj.evaluate(generated=[generated], references=[reference], serfiq_passes=[4])
    fdfr, ism, brisque, serfiq, summary = out["result"]
    assert out["ui"]["text"] == [summary] and summary.startswith("GAP-Diff evaluation")  # no DEMO model given
    assert fdfr == 0.5  # the photo holds a face, random pixels do not
    assert 0.3 < ism <= 1 and math.isfinite(brisque) and 0 <= serfiq <= 1
    assert "FDFR    0.500" in summary and "faces found in 1/2" in summary and "higher = stronger" in summary
    from gapdiff_core.metrics.directions import METRICS, PROTOCOL_METRICS

    for key in PROTOCOL_METRICS:  # each metric's line and the node's description say its direction from one home
        line = next(ln for ln in summary.splitlines() if ln.startswith(METRICS[key].label + " "))
        assert METRICS[key].direction in line
        assert f"{METRICS[key].label} ({METRICS[key].direction})" in obj.DESCRIPTION


def test_evaluate_explains_missing_faces(comfy):
    pack, *_ = comfy
    fdfr, ism, brisque, serfiq, summary = run(pack, "GAPDiffEvaluateProtection", generated=faces(2),
                                              references=sample_photo(), serfiq_passes=4)
    assert fdfr == 1.0 and math.isnan(ism) and "ISM     n/a" in summary


def test_evaluate_takes_photos_of_any_sizes_and_says_demo(comfy, surrogate):
    """References as a list of photos of different sizes (as Photos of One Person gives them) are each measured
    at their own size; a demo generator or an attack on the demo model puts the DEMO line first."""
    from types import SimpleNamespace

    pack, *_ = comfy
    surrogate, _ = surrogate
    refs = [sample_photo("obama.jpg", 200), sample_photo("obama2.jpg", 160)[:, :, :120], sample_photo("obama3.jpg")]
    demo_attack = SimpleNamespace(surrogate=surrogate)
    with torch.inference_mode():
        (generator, _) = run(pack, "GAPDiffLoadGenerator", generator_name="tiny.safetensors")
    for attacked, gen, demo in ((None, None, False), (demo_attack, None, True), (None, generator, True)):
        inputs = {k: v for k, v in (("attacked_model", attacked), ("generator", gen)) if v is not None}
        *_, summary = run(pack, "GAPDiffEvaluateProtection", generated=faces(1), references=refs, serfiq_passes=2,
                          **inputs)
        assert summary.startswith("DEMO on a toy model") == demo
        assert "faces found in 3/3 clean reference photo(s)" in summary


@pytest.fixture
def fast_presets(comfy, monkeypatch):
    """The tiny presets with one 2-step class image (the attack itself runs for real)."""
    import importlib

    pack, *_ = comfy
    presets = importlib.import_module(pack.__name__ + ".gapdiff_core.attack.presets").PRESETS
    for name in ("tiny-lora", "tiny-full"):
        monkeypatch.setitem(presets, name, {**presets[name], "num_class_images": 1, "class_steps": 2})
    return presets


def test_attack_presets_are_the_cores(comfy):
    from gapdiff_core.attack import PRESETS

    pack, *_ = comfy
    options = pack.NODE_CLASS_MAPPINGS["GAPDiffDreamBoothAttack"].INPUT_TYPES()["required"]["preset"][0]
    assert set(options) == set(PRESETS)
    schedulers = pack.NODE_CLASS_MAPPINGS["GAPDiffGenerate"].INPUT_TYPES()["required"]["scheduler"][0]
    from gapdiff_core.attack.generation import SCHEDULERS
    assert tuple(schedulers) == SCHEDULERS


@pytest.mark.slow
def test_dreambooth_attack_saves_lora_and_generates(comfy, surrogate, fast_presets):
    pack, fp, utils, mm = comfy
    surrogate, _ = surrogate
    calls = []
    utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: calls.append((value, total)))
    with torch.inference_mode():  # ComfyUI runs every node in inference mode
        attacked, info = run(pack, "GAPDiffDreamBoothAttack", surrogate=surrogate, images=faces(2, 80, 64),
                             instance_prompt="a photo of sks person", class_prompt="a photo of person",
                             preset="tiny-lora", steps=3, resolution=64, seed=0, lora_name="victim")
        (images,) = run(pack, "GAPDiffGenerate", attacked_model=attacked, prompts="a photo of sks person\n\n"
                        "a dslr portrait of sks person", count=2, steps=2, guidance=7.5, seed=0, scheduler="ddim")
    utils.set_progress_bar_global_hook(None)
    assert attacked.steps_done == 3 and attacked.completed
    assert info.startswith("DEMO model") and "64 px" in info and "models/loras/victim.safetensors" in info
    assert (Path(fp.models_dir) / "loras" / "victim.safetensors").stat().st_size > 0
    assert attacked.out_dir.parent == Path(fp.get_temp_directory()) / "gapdiff_attack"  # ComfyUI's temp folder
    assert (3, 3) in calls and calls[-1] == (4, 4)  # attack steps, then 2 prompts x 2 images
    assert images.shape == (4, 64, 64, 3) and images.dtype == torch.float32 and images.device.type == "cpu"
    assert not any(p.requires_grad for p in surrogate.unet.parameters())


def test_dreambooth_attack_checks_its_inputs(comfy, surrogate, fast_presets):
    pack, *_ = comfy
    surrogate, _ = surrogate
    cls = pack.NODE_CLASS_MAPPINGS["GAPDiffDreamBoothAttack"]
    # INPUT_IS_LIST: ComfyUI validates with lists too
    assert cls.VALIDATE_INPUTS(lora_name=[""]) is True and cls.VALIDATE_INPUTS(lora_name=["me"]) is True
    assert "plain file name" in cls.VALIDATE_INPUTS(lora_name=["../escape"])
    common = dict(surrogate=surrogate, images=faces(1), instance_prompt="a photo of sks person",
                  class_prompt="a photo of person", steps=1, seed=0)
    with pytest.raises(ValueError, match="only LoRA presets"):
        run(pack, "GAPDiffDreamBoothAttack", preset="tiny-full", resolution=64, lora_name="x", **common)
    with pytest.raises(ValueError, match="multiple of 8"):
        run(pack, "GAPDiffDreamBoothAttack", preset="tiny-lora", resolution=100, lora_name="", **common)


def test_dreambooth_attack_stops_when_cancelled(comfy, surrogate, fast_presets):
    pack, fp, utils, mm = comfy
    surrogate, _ = surrogate
    mm.interrupt_current_processing(True)
    with pytest.raises(mm.InterruptProcessingException):
        run(pack, "GAPDiffDreamBoothAttack", surrogate=surrogate, images=faces(1), instance_prompt="a photo of sks",
            class_prompt="a photo of person", preset="tiny-lora", steps=50, resolution=64, seed=0, lora_name="")
    assert not mm.processing_interrupted()


def test_image_conversion_rejects_wrong_layout(comfy):
    pack, *_ = comfy
    with pytest.raises(ValueError, match="B x H x W x 3"):
        pack.nodes.host.image_to_core(torch.zeros(3, 64, 64))
    x = pack.nodes.host.image_to_core(torch.rand(1, 8, 8, 4))
    assert x.shape == (1, 3, 8, 8)


def test_requirements_txt_matches_pyproject_without_torch():
    import re
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    def name(req):
        return re.split(r"[<>=!~ ;\[]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")

    root = comfy_pack.ROOT
    lines = [ln.strip() for ln in (root / "requirements.txt").read_text().splitlines()]
    reqs = {name(ln) for ln in lines if ln and not ln.startswith("#")}
    project = tomllib.loads((root / "pyproject.toml").read_text())
    declared = {name(r) for r in project["project"]["dependencies"]}
    for extra in ("diffusion", "metrics"):
        declared |= {name(r) for r in project["project"]["optional-dependencies"][extra]}
    assert not reqs & {"torch", "torchvision", "torchaudio"}
    assert reqs == declared - {"torch"}
    assert project["tool"]["comfy"]["PublisherId"] and project["tool"]["comfy"]["DisplayName"]


def test_iterative_protection_node_respects_the_budget(comfy, surrogate):
    pack, *_ = comfy
    surrogate, _ = surrogate
    photos = faces(1, 80, 64)
    with torch.inference_mode():  # ComfyUI runs every node in inference mode
        protected, info = run(pack, "GAPDiffIterativeProtect", image=photos, surrogate=surrogate,
                              method="photoguard", schedule="tiny", budget=5.0, seed=0, resolution=64)
    change = ((protected - photos) * 255).round().abs()
    assert protected.shape == photos.shape and 1 <= change.max() <= 5
    assert "photoguard" in info and "DEMO" in info


def test_iterative_protection_node_protects_the_batch_as_one_set_with_its_clean_set(comfy, surrogate):
    pack, *_ = comfy
    surrogate, _ = surrogate
    photos, clean = faces(2, 64, 64), faces(3, 72, 72)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: more threads only oversubscribe a shared CPU
    try:
        with torch.inference_mode():
            protected, info = run(pack, "GAPDiffIterativeProtect", image=photos, surrogate=surrogate, method="aspl",
                                  schedule="tiny", budget=6.0, seed=0, resolution=64, clean_set=clean)
    finally:
        torch.set_num_threads(threads)
    change = ((protected - photos) * 255).round().abs()
    assert protected.shape == photos.shape and change.max() <= 6
    assert "2 photo(s) protected as one set" in info and "clean set: 3 photo(s)" in info


# ---------------------------------------------------------------- photos of any sizes in and out
def test_photos_node_loads_each_photo_at_its_size_or_names_the_problem(comfy):
    from PIL import Image

    pack, fp, *_ = comfy
    cls = pack.NODE_CLASS_MAPPINGS["GAPDiffLoadPhotos"]
    folder = Path(fp.get_input_directory()) / "alice"
    folder.mkdir()
    rng = np.random.default_rng(0)
    pixels = {"a.png": rng.integers(0, 256, (50, 30, 3), dtype=np.uint8),
              "b.png": rng.integers(0, 256, (20, 70, 3), dtype=np.uint8)}
    for name, a in pixels.items():
        Image.fromarray(a).save(folder / name)
    photos, names = cls().load("alice")
    assert names == ["a", "b"] and cls.OUTPUT_IS_LIST == (True, True)
    for photo, a in zip(photos, pixels.values()):  # exact pixels, own size, ComfyUI's 1 x H x W x 3 layout
        assert photo.shape == (1, *a.shape) and torch.equal((photo[0] * 255).round().byte(), torch.from_numpy(a))
    assert cls().load("alice/b.*\n\nalice/a.png")[1] == ["b", "a"]  # one entry per line, in the order given
    before = cls.IS_CHANGED(photos="alice")
    Image.fromarray(pixels["a.png"][:40]).save(folder / "a.png")
    assert cls.IS_CHANGED(photos="alice") != before  # a rewritten photo is loaded again
    for photos_text, message in (("  \n", "photos is empty"), ("../secret", "inside ComfyUI's input folder"),
                                 ("/etc/*.jpg", "inside ComfyUI's input folder"),
                                 ("bob/*.jpg", "no image file matches")):
        assert message in cls.VALIDATE_INPUTS(photos=photos_text), photos_text
        with pytest.raises(ValueError, match=re.escape(message)):
            cls().load(photos_text)
    (folder / "c.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match="c.jpg"):
        cls().load("alice")


def test_save_images_node_keeps_sizes_marks_demo_and_never_overwrites(comfy):
    from types import SimpleNamespace

    from PIL import Image

    pack, fp, *_ = comfy
    cls = pack.NODE_CLASS_MAPPINGS["GAPDiffSaveImages"]
    with torch.inference_mode():
        (generator, _) = run(pack, "GAPDiffLoadGenerator", generator_name="tiny.safetensors")
    photo = faces(1, 48, 80)
    out = cls().save(photo, "gapdiff/protected", names="me.jpg", generator=generator)["ui"]["images"]
    again = cls().save(photo, "gapdiff/protected", names="me.jpg", generator=generator)["ui"]["images"]
    assert [f["filename"] for f in out + again] == ["protected_me_jpg_DEMO_00001.png",
                                                    "protected_me_jpg_DEMO_00002.png"]
    assert out[0]["subfolder"] == "gapdiff" and out[0]["type"] == "output"
    saved = np.asarray(Image.open(Path(fp.get_output_directory()) / "gapdiff" / out[0]["filename"]))
    assert saved.shape == (48, 80, 3) and np.array_equal(saved, (photo[0].numpy() * 255).round().astype(np.uint8))
    real = SimpleNamespace(info=SimpleNamespace(demo=False))
    plain = cls().save(faces(2, 16, 16), "plain", generator=real)["ui"]["images"]
    assert [f["filename"] for f in plain] == ["plain_00001.png", "plain_00002.png"] and plain[0]["subfolder"] == ""
    assert cls.VALIDATE_INPUTS(filename_prefix="gapdiff/x") is True
    for bad in ("../x", "/tmp/x", " "):
        assert "inside the output folder" in cls.VALIDATE_INPUTS(filename_prefix=bad)


def test_dreambooth_attack_takes_photos_of_different_sizes(comfy, surrogate, fast_presets):
    """A list of photos of any sizes (from Photos of One Person) is what the attack trains on, each photo resized
    and centre-cropped on its own exactly as a batch of them would be."""
    from gapdiff_core.attack.data import load_photos

    pack, *_ = comfy
    surrogate, _ = surrogate
    tall, wide = faces(1, 96, 64), faces(1, 64, 120)
    both = load_photos([host_core(tall), host_core(wide)], 64)
    assert torch.equal(both, torch.cat([load_photos(host_core(tall), 64), load_photos(host_core(wide), 64)]))
    with torch.inference_mode():
        attacked, info = run(pack, "GAPDiffDreamBoothAttack", surrogate=surrogate, images=[tall, wide],
                             instance_prompt="a photo of sks person", class_prompt="a photo of person",
                             preset="tiny-lora", steps=1, resolution=64, seed=0, lora_name="")
    assert attacked.steps_done == 1 and info.startswith("DEMO model")


def host_core(image):
    return image.movedim(-1, 1).contiguous()


def test_evaluate_summary_is_shown_on_the_node_by_the_packs_web_extension(comfy):
    """The pack declares WEB_DIRECTORY, and its script renders the Evaluate node's ui.text in a text box that is
    not saved into workflows (the shipped workflows' widget values stay as the schema expects)."""
    pack, *_ = comfy
    web = comfy_pack.ROOT / pack.WEB_DIRECTORY
    (script,) = web.glob("*.js")
    text = script.read_text(encoding="utf-8")
    assert '"GAPDiffEvaluateProtection"' in text and "message.text" in text and "serialize = false" in text
    assert 'from "../../scripts/app.js"' in text  # served at /extensions/<pack>/<file>
