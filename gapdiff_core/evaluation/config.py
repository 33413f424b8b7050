"""What a protocol run is: :class:`ProtocolConfig`, and the named protocols (:data:`PROTOCOLS`) it can start from."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional

from ..common.budget import DEFAULT_BUDGET, check_budget
from ..common.prompts import PAPER_PROMPTS
from ..metrics.faces import DEFAULT_DETECTOR, DETECTORS, EMBEDDERS


@dataclass
class ProtocolConfig:
    """What to run. ``methods``: ``"none"``, a generator checkpoint path, or a registered protection
    (``name`` or ``name:arg``, :data:`gapdiff_core.protections.PROTECTIONS`); every method except ``none`` runs at each
    of ``budgets`` (grey levels, 1-255: :func:`gapdiff_core.common.budget.check_budget`). ``transforms``: specs of
    the transform registry (:func:`gapdiff_core.preprocess.parse`: ``none``, ``jpeg:70``,
    ``resize:1080,side=long|jpeg:75``, ``platform:instagram``, ``diffpure:0.1``, ...), stored normalised.
    ``attack_preset``: a name of :data:`gapdiff_core.attack.PRESETS`. ``protocol``: the named protocol these
    settings started from (:data:`PROTOCOLS`, see :func:`protocol_config`), or "custom".
    ``norm``, ``official_mode`` (seeded by ``seed``): the generator's protection function (:class:`Protector`).
    ``identity_samples``: (noise, timestep) draws per reference photo for the identity-learning gap.
    ``detector``, ``embedder``: registered face backends (:mod:`gapdiff_core.metrics.faces`); ``face_models``: the
    folder of the user-supplied weights some of them need; ``detect_upscale``: detect on photos upscaled to this
    short side (the paper's detector: 1024), None to detect at the photos' size."""

    protocol: str = "custom"
    methods: list = field(default_factory=lambda: ["none"])
    transforms: list = field(default_factory=lambda: ["none"])
    budgets: list = field(default_factory=lambda: [DEFAULT_BUDGET])
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
    detector: str = DEFAULT_DETECTOR
    embedder: str = "sface"
    threshold: float = 0.9
    face_models: Optional[str] = None
    detect_upscale: Optional[int] = None
    serfiq_T: int = 100
    norm: str = "image"
    official_mode: bool = False
    identity_samples: int = 8
    device: str = "cpu"

    def __post_init__(self):
        from ..attack import PRESETS

        self.methods = [str(m) for m in self.methods] or ["none"]
        from ..preprocess import parse

        # each spec checked (TransformSpecError names it) and normalised by the registry, before any model loads;
        # case is the registry's business (an upscaler=FOLDER path keeps its own), a repeated transform runs once
        self.transforms = list(dict.fromkeys(parse(str(t)).spec for t in self.transforms)) or ["none"]
        protected = [m for m in self.methods if m.strip().lower() != "none"]
        what = "the budget" + (f" of method {', '.join(repr(m) for m in protected)}" if protected else "")
        self.budgets = [check_budget(b, what) for b in self.budgets] or [DEFAULT_BUDGET]
        self.prompts = tuple(self.prompts) or PAPER_PROMPTS
        if self.attack_preset not in PRESETS:
            raise ValueError(f"unknown attack preset {self.attack_preset!r}; choose one of {', '.join(PRESETS)}")
        from ..model.protector import NORMS

        if self.norm not in NORMS:
            raise ValueError(f"unknown norm {self.norm!r}; choose one of {', '.join(NORMS)}")
        if self.protocol != "custom" and self.protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {self.protocol!r}; choose one of {', '.join(PROTOCOLS)}")
        for kind, name, names in (("detector", self.detector, DETECTORS), ("embedder", self.embedder, EMBEDDERS)):
            if name not in names:
                raise ValueError(f"unknown face {kind} {name!r}; choose one of {', '.join(sorted(names))}")
        if self.detect_upscale is not None and self.detect_upscale < 1:
            raise ValueError(f"detect_upscale must be a short side in pixels (e.g. 1024), got {self.detect_upscale}")
        if self.identity_samples < 1:
            raise ValueError(f"identity_samples must be >= 1, got {self.identity_samples}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["prompts"] = list(self.prompts)
        return d


# What the paper fixes (the authors' scripts/db_infer.sh, infer.py and metric scripts): the paper-full
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
    from ..attack import preset

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

