"""`gapdiff demo`: the whole protocol on the embedded default (sample photos, tiny built-in model, demo generator)."""
from __future__ import annotations

from pathlib import Path

from . import options

HELP = "run protect -> JPEG -> LoRA DreamBooth -> generate -> metrics on a toy model (a demo, not protection)"
DESCRIPTION = """Run the evaluation protocol end to end on the sample face photos that ship with the package,
offline, on CPU, in a few minutes:

  demo generator (trained against the tiny model, cached) -> protect the photos -> JPEG -> LoRA DreamBooth attack
  of the tiny built-in model -> generate the paper's four prompts -> FDFR / ISM / BRISQUE / SER-FIQ
  -> OUT/report.html (+ report.json, report.md)

comparing the clean photos (method 'none') with the demo generator. Everything here is a DEMO ON A TOY MODEL:
the diffusion model has random weights and the generator was trained for about a minute against it. The results
show how the pipeline works and what it measures, NOT protection. Budgets are in grey levels (0-255 scale)."""

DEMO = "[demo, toy model]"
IDENTITY = {"set_B": ("obama.jpg", "obama2.jpg"), "set_C": ("obama3.jpg",)}


def add_arguments(p) -> None:
    p.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    p.add_argument("--budget", type=options.budget, default=8.0, help="budget in grey levels, 1-255 (default 8)")
    p.add_argument("--quality", type=int, action="append", default=None,
                   help="JPEG quality applied after protection (repeatable; default 70, 50 and 30)")
    p.add_argument("--resolution", type=int, default=128, help="attack/generation resolution (default 128)")
    p.add_argument("--images-per-prompt", type=int, default=4, help="generated images per prompt (default 4)")
    p.add_argument("--steps", type=int, default=20, help="sampling steps (default 20)")
    p.add_argument("--attack-steps", type=int, default=None, help="LoRA training steps (default: the tiny-lora preset's)")
    p.add_argument("--train-minutes", type=float, default=1.5,
                   help="time limit for training the demo generator when it is not cached (default 1.5)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: the tiny model's small ops gain nothing from more, and a "
                        "busy machine makes extra threads much slower)")


def prepare_photos(root) -> Path:
    """Copy the sample photos of one identity into the Anti-DreamBooth layout (set_B attacked, set_C reference)."""
    from ..io.atomic import write_bytes
    from ..samples import SAMPLES_DIR

    root = Path(root)
    for sub, names in IDENTITY.items():
        (root / sub).mkdir(parents=True, exist_ok=True)
        for n in names:
            if not (root / sub / n).is_file():
                write_bytes(root / sub / n, (Path(SAMPLES_DIR) / n).read_bytes())
    return root


def demo_generator(cache, minutes: float, log=print) -> Path:
    """The cached demo generator, trained now (``minutes`` at most) when missing."""
    import time

    path = Path(cache) / "demo_generator.safetensors"
    if not path.is_file():
        from ..training import train_demo_generator

        log(f"{DEMO} training the demo generator against the tiny model (at most {minutes:g} min, cached) ...")
        t0 = time.perf_counter()
        train_demo_generator(path, minutes=minutes, progress=True)
        log(f"{DEMO} demo generator trained in {time.perf_counter() - t0:.0f} s -> {path}")
    return path


def run(args) -> int:
    import time

    import torch

    from ..evaluation import ProtocolConfig, ProtocolRunner
    from ..preprocess.fidelity import fidelity_table, format_table
    from ..evaluation.report import write_reports

    torch.set_num_threads(max(1, args.threads))
    out = Path(args.out)
    cache = out / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    print(f"{DEMO} gapdiff demo: the tiny built-in diffusion model has RANDOM weights and the generator is a demo "
          "generator: this shows how the protocol runs, it is NOT protection.")
    t_setup = time.perf_counter()
    generator = demo_generator(cache, args.train_minutes)
    data = prepare_photos(cache / "photos" / "obama")
    setup_s = time.perf_counter() - t_setup
    qualities = args.quality or [70, 50, 30]
    config = ProtocolConfig(
        methods=["none", str(generator)], transforms=["none"] + [f"jpeg:{q}" for q in qualities],
        budgets=[args.budget], model="tiny", attack_preset="tiny-lora", resolution=args.resolution,
        attack_overrides={"max_train_steps": args.attack_steps} if args.attack_steps else {},
        images_per_prompt=args.images_per_prompt, generation_steps=args.steps, generation_batch_size=8)
    t0 = time.perf_counter()
    try:
        results = ProtocolRunner(data, out, config, cache_dir=cache, progress=True).run()
    except (ImportError, RuntimeError) as e:  # e.g. metrics backends not installed
        print(f"{DEMO} gapdiff demo failed: {e}\n{DEMO} `make setup` installs everything the demo needs "
              f"(.[diffusion,metrics] and the face-model weights); finished stages stay cached in {cache}.")
        return 1
    results["demo_timing"] = {"setup_seconds": setup_s, "protocol_seconds": time.perf_counter() - t0}
    paths = write_reports(results, out)
    print()
    for line in summary_lines(results):
        print(f"{DEMO} {line}")
    t = results["timing"]
    print(f"\n{DEMO} setup {setup_s:.1f} s; protocol {results['demo_timing']['protocol_seconds']:.1f} s (computed: "
          + ", ".join(f"{k} {v:.1f} s" for k, v in t["computed_seconds"].items()) + ")"
          + ("" if any(t["computed_stages"].values()) else f"; every stage came from {cache} (delete it to recompute)"))
    print(f"{DEMO} wrote {paths['html']} (open it in a browser), {paths['md']}, {paths['json']}")
    print(f"\n{DEMO} How well the training-time simulators match real transforms (PSNR, dB):")
    for line in format_table(fidelity_table()).splitlines():
        print(f"{DEMO} {line}")
    return 0


def summary_lines(results: dict) -> list[str]:
    """One line per method × transform: the metrics' means over prompts, the identity gain and the photos'
    PSNR vs clean; then the detector's floor on the clean reference photos."""
    from ..evaluation.report import aggregate, no_face_note, run_facts
    from ..evaluation.report.rows import gain_text
    from ..metrics.directions import METRICS, PROTOCOL_METRICS, format_value

    rows = aggregate(results)
    width = max(len(r["method"]) for r in rows)
    shown = (*PROTOCOL_METRICS, "qualityface", "face_brisque")
    gain = METRICS["identity_gain"]
    out = [f"mean over prompts ({' '.join(METRICS[k].heading for k in shown)}: arrows point to stronger protection; "
           f"{gain.heading}: the identity the attacked model learnt, over that of the clean-photo attack)"]
    for r in rows:
        means = " ".join(f"{METRICS[k].label} {format_value(r['mean'][k], 2 if 'brisque' in k else 3)}" for k in shown)
        out.append(f"{r['method']:<{width}} | {r['transform']:<8} | {means} | {gain.label} "
                   f"{gain_text(r, results)} | PSNR of photos vs clean "
                   f"{format_value(r['psnr_after_transform_db'], 2)} dB")
    note = no_face_note(rows)
    facts = [f"{k}: {v}" for k, v in run_facts(results)]
    return out + ([note] if note else []) + facts
