"""The protocol runner: every identity × method × transform through the stages (:mod:`.stages`), and the results
every report is written from."""
from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Callable, Optional

import torch

from ..attack.identity import relative_gain
from ..io.atomic import write_text
from ..metrics.directions import METRICS
from .cache import StageCache, jsonable
from .config import ProtocolConfig, protocol_settings
from .inputs import Identity, find_identities, scan_inputs
from .methods import Method, method_budgets, resolve_method
from .report.rows import statistics_table
from .stages import STAGES, StageRunner
from .summary import combine_metrics


class ProtocolRunner(StageRunner):
    """Runs :class:`ProtocolConfig` on the photos under ``data``; results and reports go to ``out_dir``.

    ``on_compute(stage, key)`` is called whenever a stage is actually computed (not loaded from the cache).
    """

    def __init__(self, data: str | Path, out_dir: str | Path, config: Optional[ProtocolConfig] = None, *,
                 cache_dir: str | Path | None = None, on_compute=None, progress: bool = True,
                 log: Callable[[str], None] = print):
        self.data, self.out_dir = Path(data), Path(out_dir)
        cache = StageCache(Path(cache_dir) if cache_dir else self.out_dir / "cache", on_compute, log)
        super().__init__(config or ProtocolConfig(), cache, progress, log)

    def methods(self) -> list[Method]:
        """Every method at its budgets: each of ``budgets``, or with ``published_budgets`` the budget its authors
        published (``budgets`` where none is); with ``noise_control`` a random-noise row at each budget used."""
        c = self.config
        methods = [resolve_method(spec, b) for spec in c.methods
                   for b in method_budgets(spec, c.budgets, c.published_budgets)]
        if self.config.noise_control:
            used = {m.budget for m in methods if m.kind not in ("none", "random-noise")}
            have = {m.budget for m in methods if m.kind == "random-noise"}
            methods += [resolve_method("random-noise", b) for b in sorted(used - have)]
        return methods

    def rows(self) -> list[tuple[Identity, Method, str]]:
        idents, methods = find_identities(self.data), self.methods()
        return [(i, m, t) for i in idents for m in methods for t in self.config.transforms]

    def run(self) -> dict:
        """Run (or resume) every identity × method × transform; write ``results.json``; return the results."""
        from tqdm import tqdm

        t_start = time.perf_counter()
        rows = self.rows()
        warnings = scan_inputs(self.data).warnings
        for warning in warnings:
            self.log(f"warning: {warning}")
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
        clean = {(name, t): self.clean_attack_identity(i, t)["gain"] for name, i in idents.items()
                 for t in self.config.transforms}
        for run in runs:
            run["identity_gain"]["clean_gain"] = c = clean[(run["identity"], run["transform"])]
            run["identity_gain"]["relative"] = relative_gain(run["identity_gain"]["gain"], c)
        detection = {name: self.reference_detection(i) for name, i in idents.items()}
        methods = list({r[1].label: r[1] for r in rows}.values())
        results = jsonable({**self._results(runs, detection, methods, time.perf_counter() - t_start),
                            "warnings": warnings})
        results["statistics"] = jsonable(statistics_table(results))
        self.out_dir.mkdir(parents=True, exist_ok=True)
        write_text(self.out_dir / "results.json", json.dumps(results, indent=2))
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
            # the attacked model's identity gain on set_C; relative: over that of the clean attack at this transform
            "identity_gain": {k: idr[k] for k in ("gain", "instance_error", "class_error", "per_photo_gain")},
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

    def _results(self, runs: list, detection: dict, methods: list, seconds: float) -> dict:
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
            "directions": {k: m.direction for k, m in METRICS.items()},
            "protocol": {"name": self.config.protocol,
                         "settings": protocol_settings(self.config, acfg, lambda: self.base, methods)},
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


def environment() -> dict:
    """Package versions and platform, for the report."""
    from importlib import metadata

    versions = {}
    for pkg in ("gapdiff", "torch", "diffusers", "transformers", "peft", "numpy", "opencv-python-headless",
                "brisque", "onnxruntime", "kornia", "pillow"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {"python": platform.python_version(), "platform": platform.platform(), "packages": versions,
            "torch_threads": torch.get_num_threads()}


def run_protocol(data: str | Path, out_dir: str | Path, config: Optional[ProtocolConfig] = None, **kwargs) -> dict:
    """Shortcut for ``ProtocolRunner(data, out_dir, config, **kwargs).run()``."""
    return ProtocolRunner(data, out_dir, config, **kwargs).run()
