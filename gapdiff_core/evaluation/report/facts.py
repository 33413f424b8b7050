"""What ran, as every report states it: the protocol and how this run departs from it (its settings and the
components behind the numbers), the protection function, the detector's floor, the setup and the backends."""
from __future__ import annotations

from ...metrics.directions import format_value
from ..components import COMPONENT_NAMES

DEMO_BANNER = ("DEMO ON A TOY MODEL: the diffusion model is the tiny built-in random model and/or the generator is a "
               "demo generator trained for about a minute against it. These numbers and images show how the "
               "protocol runs; they say NOTHING about protection of real photos.")
PROTOCOL_TITLES = {"paper": "the paper's (GAP-Diff, NDSS 2025: its evaluation scripts and released code)"}
SETTING_NAMES = {
    "attack_preset": "attack preset", "resolution": "resolution (px)", "prompts": "prompts",
    "images_per_prompt": "images per prompt", "generation_steps": "sampling steps", "guidance_scale": "CFG scale",
    "scheduler": "scheduler", "generation_batch_size": "sampling batch", "budgets": "budget (grey levels, 0–255)",
    "transforms": "transforms", "threshold": "face detection threshold", "serfiq_T": "SER-FIQ passes T",
    "attack.mode": "attack: fine-tuning", "attack.train_text_encoder": "attack: text encoder trained",
    "attack.learning_rate": "attack: learning rate", "attack.max_train_steps": "attack: steps",
    "attack.train_batch_size": "attack: batch", "attack.prior_loss_weight": "attack: prior-preservation weight",
    "attack.num_class_images": "attack: class images", "attack.mixed_precision": "attack: mixed precision",
    "published_budgets": "each method at its published budget", "noise_control": "random-noise control row",
    "reference_numerics": "baselines' surrogate numerics (ASPL, SimAC, MetaCloak)",
    "generator_precision": "GAP-Diff precision", **COMPONENT_NAMES}
MARKS = {True: "✓", False: "✗ differs", None: "— not in the paper"}  # a row's mark, by its ``matches``


def _value(v) -> str:
    if isinstance(v, (list, tuple)):
        return "; ".join(f"“{x}”" if isinstance(x, str) and " " in x else (f"{x:g}" if isinstance(x, float) else str(x))
                         for x in v)
    return f"{v:g}" if isinstance(v, float) else str(v)


def _name(setting: str) -> str:
    """A setting's name in reports: "budget.aspl" -> "budget (grey levels): aspl"."""
    if setting.startswith("budget."):
        return f"budget (grey levels): {setting.removeprefix('budget.')}"
    return SETTING_NAMES.get(setting, setting)


def protocol_summary(results: dict) -> tuple[str, str, list[tuple[str, str, str, object]]]:
    """(title, one-line note, [(setting, protocol value, value that ran, matches)]) of the protocol that ran;
    ``matches`` None: a diagnostic the paper has not (listed, not counted). The note counts the rows that differ
    and says "all match" only when none does."""
    proto = results.get("protocol") or {"name": "custom", "settings": []}
    name, settings = proto["name"], proto.get("settings") or []
    if name == "custom" or not settings:
        return ("Protocol: custom settings",
                "Not a named protocol; `gapdiff evaluate --protocol paper` runs the paper's. What ran is under Setup.",
                [])
    rows = [(_name(s["setting"]), _value(s["protocol"]), _value(s["ran"]), s["matches"]) for s in settings]
    off = [r[0] for r in rows if r[3] is False]
    note = (f"Protocol **{name}**: {PROTOCOL_TITLES.get(name, name)}. Every setting and component it fixes, and "
            "what this run used: " + (f"**{len(off)} of {len(rows)} rows differ ({', '.join(off)}), so these are "
                                      "not the protocol's numbers.**" if off else "all match."))
    return f"Protocol: {name}" + (f" ({len(off)} differ)" if off else ""), note, rows


def run_facts(results: dict) -> list[tuple[str, str]]:
    """What every report states up front: the generator's protection function and the detector's floor."""
    from ...model.protector import NORM_DESCRIPTIONS

    c = results["config"]
    norm = "official" if c.get("official_mode") else c.get("norm", "image")
    seed = f", seed {c.get('seed')}" if norm == "official" else ""
    facts = [("protection function (generator methods)", f"{norm}: {NORM_DESCRIPTIONS.get(norm, norm)}{seed}")]
    det = results.get("reference_detection")
    if det and det.get("n_photos"):
        per = det.get("per_identity") or {}
        facts.append(("face detection on the clean reference photos (the detector's floor)",
                      f"{det['n_detected']}/{det['n_photos']} detected (rate {format_value(det['rate'])}; "
                      f"FDFR of clean photos {format_value(1 - det['rate'])})" + ("; " + ", ".join(
                          f"{k} {v['n_detected']}/{v['n_photos']}" for k, v in per.items()) if len(per) > 1 else "")))
    return facts


def setup_items(results: dict) -> list[tuple[str, str]]:
    """(item, what ran): the diffusion model, attack, generation, budgets, methods, transforms and time."""
    c, a, g = results["config"], results["attack_config"], results["generation_config"]
    t = results["timing"]
    base = next((r.get("base_model") for r in results["runs"] if r.get("base_model")), c["model"])
    return [("diffusion model", f"{base}" + (" (toy model, random weights)" if results["is_demo"] else "")),
            ("attack", f"preset {a.get('preset')} ({a['mode']}, {a['max_train_steps']} steps, lr {a['learning_rate']}, "
                       f"resolution {a.get('resolution') or 'model default'}, {a['num_class_images']} class images)"),
            ("generation", f"{g['images_per_prompt']} images per prompt, {g['steps']} {g['scheduler']} steps, "
                           f"guidance {g['guidance_scale']}, seed {g['seed']}"),
            ("budgets", ", ".join(f"{b:g}" for b in c["budgets"]) + " grey levels (0–255 scale)"),
            ("methods", ", ".join(c["methods"])), ("transforms", ", ".join(c["transforms"])),
            ("time", f"this run {t['total_seconds']:.1f} s; stages as computed (some maybe in earlier runs, "
                     "cached since): " + ", ".join(f"{k} {v:.1f} s" for k, v in
                                                   (t.get("stage_seconds") or t["computed_seconds"]).items())
             + f" = {sum((t.get('stage_seconds') or t['computed_seconds']).values()):.1f} s")]


def backends(results: dict) -> dict:
    """Each metric's backend, as the runs recorded it."""
    out = {}
    for r in results["runs"]:
        out.update(r.get("backends") or {})
        fid = r["fidelity"].get("backend")
        if fid:
            out["fidelity"] = fid
    return out
