"""The protocol's stages, each computed once and then loaded from the stage cache (:class:`~.cache.StageCache`):
protect -> transform -> attack -> identity -> generate -> metrics."""
from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, Optional

import torch

from ..common.progress import TqdmProgress
from ..common.seeds import derive_seed
from ..protections import PROTECTIONS, ProtectFn
from .cache import StageCache, config_key
from .components import generation_precision
from .config import ProtocolConfig
from .inputs import Identity, file_digest
from .methods import Method, resolve_method
from .summary import SUMMARY_VERSION, summarize_metrics

TRANSFORM_STREAM = (1_000_039, 7_927, 1)  # seed of a photo's transform: (seed, clean photo digest, spec digest)
STAGES = ("protect", "transform", "attack", "identity", "generate", "metrics")
ONE_PHOTO_METHODS = ("none", "gap-diff", "random-noise")  # methods that protect each photo alone, without a model


def transform_seed(seed: int, photo_digest: str, spec: str) -> int:
    """The seed a transform draws from on one photo: derived from the run's ``seed``, the clean photo's digest
    (:func:`~.inputs.file_digest`: the identity's photo) and the normalised spec, so each (photo, transform) has its
    own stream and the clean and the protected versions of a photo share it."""
    return derive_seed(TRANSFORM_STREAM, seed, int(photo_digest, 16), int(config_key(spec), 16))


def _save_pngs(folder: Path, images: list, names: list[str]) -> list[str]:
    from ..io import save_image, to_uint8

    out = []
    for img, name in zip(images, names):
        save_image(folder / name, to_uint8(img), overwrite=True)
        out.append(name)
    return out


def _load_photos(paths) -> list[torch.Tensor]:
    """1×3×H×W tensors in [0, 1] of image files."""
    from ..io import load_image

    return [load_image(p).tensor() for p in paths]


def _fidelity_of(files, clean_files) -> dict:
    """:func:`gapdiff_core.metrics.fidelity` of the written 8-bit photos against the clean ones, over the pairs
    whose size the transform kept."""
    from ..io import load_image
    from ..metrics import protection_fidelity

    pairs = [(a, b) for a, b in ((load_image(f).rgb, load_image(c).rgb) for f, c in zip(files, clean_files))
             if a.shape == b.shape]
    if not pairs:
        return {"psnr_db": None, "ssim": None, "linf_grey_levels": None, "note": "sizes changed by the transform"}
    f = protection_fidelity([a for a, _ in pairs], [b for _, b in pairs])
    return {k: f[k] for k in ("psnr_db", "ssim", "linf_grey_levels", "per_image_psnr_db", "backend")}


def folder_digest(folder: Path) -> str:
    """A key of a folder's files (relative names and sizes): a model folder, a class-images folder."""
    return config_key(sorted((str(f.relative_to(folder)), f.stat().st_size) for f in folder.rglob("*") if f.is_file()))


class StageRunner:
    """The stages of :class:`ProtocolConfig`, each keyed in ``cache`` by its settings and its parent's key; the
    models they share (the protocol's diffusion model, the protection methods, the reference embeddings) are built
    once, on first use."""

    def __init__(self, config: ProtocolConfig, cache: StageCache, progress: bool, log: Callable[[str], None]):
        self.config, self.cache = config, cache
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
            from ..diffusion import load_surrogate

            self._base = load_surrogate(self.config.model, device=self.config.device, seed=self.config.model_seed)
        return self._base

    def attack_config(self):
        from ..attack import preset

        overrides = dict(self.config.attack_overrides)
        if self.config.resolution:
            overrides["resolution"] = self.config.resolution
        overrides.setdefault("seed", self.config.seed)
        if self.config.class_images:
            overrides.setdefault("class_data_dir", self.config.class_images)
        cfg = preset(self.config.attack_preset, **overrides)
        if cfg.mode == "lora" and "save_model" not in overrides:
            cfg = cfg.replace(save_model=False)  # lora.safetensors is enough to rebuild the attacked model
        return cfg

    def _model_key(self) -> dict:
        spec = self.config.model
        if Path(spec).exists():
            p = Path(spec)
            return {"model": file_digest(p) if p.is_file() else folder_digest(p)}
        return {"model": spec, "model_seed": self.config.model_seed}

    def _bar(self, desc: str, unit: str = "step"):
        """A tqdm progress callback for a stage, or none without progress bars."""
        return TqdmProgress(desc, unit=unit) if self.progress else nullcontext()

    # ------------------------------------------------------------ stages
    def _compute(self, stage: str, key: str, cfg: dict, parent: Optional[dict], work: Callable[[], dict]) -> dict:
        """Compute a stage the cache lacks, in its folder: ``work()`` returns the record's fields; the stage is
        timed and its record written last."""
        t0 = time.perf_counter()
        self.cache.start(stage, key)
        info = work()
        seconds = time.perf_counter() - t0
        self.timings[stage] += seconds
        self.computed[stage] += 1
        return self.cache.finish(stage, key, cfg, {**info, "seconds": seconds}, parent)

    def stage_protect(self, ident: Identity, method: Method) -> tuple[dict, Path]:
        cfg = {"photos": [file_digest(p) for p in ident.attacked], "method": method.kind,
               "arg_fingerprint": method.fingerprint, "budget": method.budget,
               "model": None if method.kind in ONE_PHOTO_METHODS else
               [self.config.model, self.config.model_seed, self.config.resolution]}
        if method.kind not in ONE_PHOTO_METHODS:  # a set protection: its clean set_A and seed matter too
            cfg.update(clean_set=[file_digest(p) for p in ident.clean_set], seed=self.config.seed)
        if method.kind == "gap-diff":  # the protection function (protect.Protector)
            cfg["norm"] = self.config.norm
            if self.config.official_mode:
                cfg["official_mode_seed"] = self.config.seed
            if self.config.generator_precision != "auto":
                cfg["precision"] = self.config.generator_precision
        if method.kind not in ONE_PHOTO_METHODS:  # settings of the set protections, when not their defaults
            if self.config.reference_numerics != "corrected":
                cfg["reference_numerics"] = self.config.reference_numerics
            if self.config.class_images:
                cfg["class_images"] = folder_digest(Path(self.config.class_images))
        key, rec, folder = self.cache.lookup("protect", cfg)
        if rec is None:
            def work() -> dict:
                fn = self._protector(method)
                clean = _load_photos(ident.attacked)
                protected = [x.clamp(0, 1) for x in fn(clean, _load_photos(ident.clean_set))]
                names = _save_pngs(folder, protected,
                                   [f"{i:02d}_{p.stem}.png" for i, p in enumerate(ident.attacked)])
                return {"files": names, "clean": [str(p) for p in ident.attacked], "method": method.label,
                        "clean_set": [str(p) for p in ident.clean_set] if method.kind not in ONE_PHOTO_METHODS else [],
                        "is_demo": method.is_demo,
                        "fidelity": _fidelity_of([folder / n for n in names], ident.attacked)}  # what was written
            rec = self._compute("protect", key, cfg, None, work)
        return rec, folder

    def _protector(self, method: Method) -> ProtectFn:
        k = (method.kind, method.arg, method.budget)
        if k not in self._protectors:
            factory = PROTECTIONS[method.kind].factory
            self._protectors[k] = factory(method.arg, method.budget, self.config, lambda: self.base, self.cache.root)
        return self._protectors[k]

    def stage_transform(self, protect: tuple[dict, Path], spec: str) -> tuple[dict, Path]:
        """The protected photos through the registry transform ``spec``: photo i with the seed of
        :func:`transform_seed` (its clean photo, the spec, the run's seed: the same for every method), a
        purification through the protocol's model. Keyed by the normalised spec (and that model, if it uses it)."""
        from ..preprocess import parse

        prec, pfolder = protect
        transform = parse(spec)
        cfg = {"parent": prec["key"], "transform": transform.spec, "seed": self.config.seed,
               **(self._model_key() if transform.needs_surrogate else {})}
        key, rec, folder = self.cache.lookup("transform", cfg, prec)
        if rec is None:
            def work() -> dict:
                surrogate = self.base if transform.needs_surrogate else None
                images = []
                for name, photo, x in zip(prec["files"], prec["config"]["photos"],
                                          _load_photos(pfolder / n for n in prec["files"])):
                    try:
                        images.append(transform(x, seed=transform_seed(self.config.seed, photo, transform.spec),
                                                surrogate=surrogate).clamp(0, 1))
                    except (ValueError, RuntimeError) as e:
                        raise RuntimeError(f"transform {transform.spec!r} failed on {pfolder / name}: {e}") from e
                names = _save_pngs(folder, images, prec["files"])
                return {"files": names, "transform": transform.spec,
                        "fidelity": _fidelity_of([folder / n for n in names], prec["clean"])}
            rec = self._compute("transform", key, cfg, prec, work)
        return rec, folder

    def stage_attack(self, transformed: tuple[dict, Path]) -> tuple[dict, Path, object]:
        trec, tfolder = transformed
        acfg = self.attack_config()
        cfg = {"parent": trec["key"], **self._model_key(), "attack": acfg.to_dict()}
        if acfg.class_data_dir:
            cfg["class_images"] = folder_digest(Path(acfg.class_data_dir))
        key, rec, folder = self.cache.lookup("attack", cfg, trec)
        model = None
        if rec is None:
            def work() -> dict:
                nonlocal model
                from ..attack import DreamBoothAttack

                photos = [str(tfolder / n) for n in trec["files"]]
                with self._bar(f"attack {acfg.preset or acfg.mode}") as bar:
                    result = DreamBoothAttack(self.base, acfg, cache_dir=self.cache.root / "class_images").run(
                        photos, folder, progress=bar)
                if not result.completed:
                    raise RuntimeError(f"DreamBooth attack in {folder} stopped early")
                model = result.surrogate
                return {"mode": acfg.mode, "steps": result.steps_done,
                        "final_loss": result.losses[-1] if result.losses else None,
                        "lora": result.lora_path.name if result.lora_path else None,
                        "model_dir": result.model_dir.name if result.model_dir else None,
                        "base_model": self.base.name, "is_demo": bool(self.base.is_demo)}
            rec = self._compute("attack", key, cfg, trec, work)
        return rec, folder, model

    def _reload_attacked(self, rec: dict, folder: Path):
        """The attacked model of a cached attack stage: base + merged LoRA, or the saved diffusers folder."""
        import copy

        from ..attack import load_kohya_lora, merge_kohya_lora
        from ..diffusion import load_surrogate

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
        """The attacked model's identity gain on the identity's clean reference photos (set_C):
        :func:`gapdiff_core.attack.identity_gain`, ``identity_samples`` seeded noise/timestep draws per photo, the
        same for both prompts and every model. Returns the record and ``attacked`` with its model (reloaded when it
        had to be)."""
        arec, afolder, model = attacked
        c = self.config
        cfg = {"parent": arec["key"], "references": [file_digest(p) for p in ident.references],
               "samples": c.identity_samples, "seed": c.seed, "measure": "identity gain"}
        key, rec, _ = self.cache.lookup("identity", cfg, arec)
        if rec is None:
            def work() -> dict:
                nonlocal model
                from ..attack import identity_gain

                if model is None:
                    model = self._reload_attacked(arec, afolder)
                acfg = self.attack_config()
                return identity_gain(model, [str(p) for p in ident.references], instance_prompt=acfg.instance_prompt,
                                     class_prompt=acfg.class_prompt, resolution=acfg.resolution,
                                     samples=c.identity_samples, seed=c.seed)
            rec = self._compute("identity", key, cfg, arec, work)
        return rec, (arec, afolder, model)

    def clean_attack_identity(self, ident: Identity, spec: str) -> dict:
        """The identity stage of the model attacked with the identity's clean photos through transform ``spec``
        (method ``none``): the reference the identity gain is normalised by. Cached like every stage."""
        prot = self.stage_protect(ident, resolve_method("none", None))
        att = self.stage_attack(self.stage_transform(prot, spec))
        return self.stage_identity(ident, att)[0]

    def generation_config(self):
        from ..attack import GenerationConfig

        c = self.config
        precision = generation_precision(c)
        return GenerationConfig(prompts=c.prompts, images_per_prompt=c.images_per_prompt, steps=c.generation_steps,
                                guidance_scale=c.guidance_scale, scheduler=c.scheduler, seed=c.seed,
                                batch_size=c.generation_batch_size, resolution=self.attack_config().resolution,
                                autocast="no" if precision == "fp32" else precision)

    def stage_generate(self, attacked: tuple[dict, Path, object]) -> tuple[dict, Path]:
        arec, afolder, model = attacked
        gcfg = self.generation_config()
        cfg = {"parent": arec["key"], "generation": gcfg.to_dict()}
        key, rec, folder = self.cache.lookup("generate", cfg, arec)
        if rec is None:
            def work() -> dict:
                from ..attack import generate
                from ..attack.generation import prompt_folder_name

                attacked_model = self._reload_attacked(arec, afolder) if model is None else model
                with self._bar("generate", unit="img") as bar:
                    out = generate(attacked_model, gcfg, progress=bar)
                out.save(folder)
                files = {p: [] for p in gcfg.prompts}
                for p, s in zip(out.prompts, out.seeds):
                    files[p].append(f"{prompt_folder_name(p)}/{s:06d}.png")
                return {"files": files}
            rec = self._compute("generate", key, cfg, arec, work)
        return rec, folder

    def reference_detection(self, ident: Identity) -> dict:
        """Faces the detector finds on the identity's clean reference photos: its floor (the FDFR of clean faces)."""
        from ..metrics.identity import reference_detection_rate

        r = reference_detection_rate([x[0] for x in _load_photos(ident.references)],
                                     backend=self.config.detector, threshold=self.config.threshold,
                                     **self._face_options())
        return {"n_photos": r.n_images, "n_detected": r.n_detected, "rate": r.value,
                "missed": [ident.references[i].name for i in r.missed]}

    def reference_embedding(self, ident: Identity):
        k = tuple(str(p) for p in ident.references)
        if k not in self._references:
            from ..metrics import reference_embedding

            photos = [x[0] for x in _load_photos(ident.references)]
            try:
                self._references[k] = reference_embedding(photos, backend=self.config.embedder,
                                                          detector=self.config.detector,
                                                          threshold=self.config.threshold, **self._face_options())
            except ValueError as e:  # no face in any reference photo
                self.log(f"warning: {ident.name}: no reference embedding ({e}); ISM is left out")
                self._references[k] = None
        return self._references[k]

    def _face_options(self) -> dict:
        """The face backends' folder of user-supplied weights and detection upscale, where set."""
        c = self.config
        return {k: v for k, v in (("models_dir", c.face_models), ("upscale_short_side", c.detect_upscale))
                if v is not None}

    def stage_metrics(self, ident: Identity, generated: tuple[dict, Path]) -> dict:
        grec, gfolder = generated
        c = self.config
        cfg = {"parent": grec["key"], "references": [file_digest(p) for p in ident.references],
               "detector": c.detector, "embedder": c.embedder, "threshold": c.threshold, "serfiq_T": c.serfiq_T,
               "seed": c.seed, "summary": SUMMARY_VERSION, **self._face_options()}  # unset: the keys of before
        key, rec, _ = self.cache.lookup("metrics", cfg, grec)
        if rec is None:
            def work() -> dict:
                from ..metrics import evaluate_images

                ref = self.reference_embedding(ident)
                per_prompt, backends = {}, {}
                for prompt, names in grec["files"].items():
                    images = torch.cat(_load_photos(gfolder / n for n in names))
                    m = evaluate_images(images, ref, detector=c.detector, embedder=c.embedder, threshold=c.threshold,
                                        serfiq_T=c.serfiq_T, seed=c.seed, **self._face_options())
                    backends = m["backends"]
                    per_prompt[prompt] = summarize_metrics(m)
                return {"per_prompt": per_prompt, "backends": backends}
            rec = self._compute("metrics", key, cfg, grec, work)
        return rec
