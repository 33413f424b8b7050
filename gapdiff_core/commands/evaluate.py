"""`gapdiff evaluate`: the Anti-DreamBooth protocol (protect -> transform -> attack -> generate -> metrics)."""
from __future__ import annotations

HELP = "run the protection protocol (DreamBooth attack + FDFR/ISM/BRISQUE/SER-FIQ) and write reports"
DESCRIPTION = """Evaluate protections with the Anti-DreamBooth protocol.

DATA is either the Anti-DreamBooth layout (<identity>/set_B, set_C; or one identity's folder holding set_B, set_C)
or a plain folder of photos of one person: sorted by name, the first half is protected and attacked, the rest are
the clean references.

For every method x budget x transform: protect set_B, apply the transform (e.g. jpeg:70), DreamBooth-attack the
model, generate the paper's four prompts, and score FDFR (higher = stronger protection), ISM (lower), BRISQUE
(higher) and SER-FIQ (lower) per prompt against set_C; plus PSNR/SSIM/L-infinity of protected vs clean.
Every stage is cached under OUT/cache by its settings: rerunning resumes and skips what is done.
Writes OUT/results.json and OUT/report.{json,md,html}. With the tiny built-in model everything is a toy demo.

Example (real SD 2.1-base folder, LoRA attacker):
  gapdiff evaluate data/ --out eval_out --method none --method G.safetensors --transform none --transform jpeg:70 \\
      --model sd21-base/ --preset lora --images-per-prompt 30 --steps 100 --scheduler pndm"""


def add_arguments(p) -> None:
    p.add_argument("data", help="photos: <identity>/set_B, set_C (Anti-DreamBooth layout) or a plain folder")
    p.add_argument("--out", default="eval_out", help="output folder (default eval_out)")
    p.add_argument("--cache", default=None, help="stage cache folder (default OUT/cache)")
    p.add_argument("--method", action="append", dest="methods", default=None,
                   help="protection: none, a generator checkpoint, or an iterative method run against --model "
                        "(aspl, fsmg, photoguard, mist, ace, metacloak, caat, simac; NAME:tiny for its short "
                        "schedule) (repeatable; default: none)")
    p.add_argument("--transform", action="append", dest="transforms", default=None,
                   help="transform after protection: none, jpeg:Q, blur, noise:S, quantize:L, resize:N "
                        "(repeatable; default: none)")
    p.add_argument("--budget", action="append", dest="budgets", type=float, default=None,
                   help="budget in grey levels on the 0-255 scale (repeatable; default 8)")
    p.add_argument("--model", default="tiny", help="surrogate to attack: tiny, a diffusers folder or a checkpoint")
    p.add_argument("--preset", default=None, help="attack preset (default tiny-lora for tiny, else lora)")
    p.add_argument("--attack-steps", type=int, default=None, help="override the preset's training steps")
    p.add_argument("--resolution", type=int, default=None, help="attack/generation resolution (default: model's)")
    p.add_argument("--images-per-prompt", type=int, default=4)
    p.add_argument("--steps", type=int, default=30, help="sampling steps per image (default 30)")
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--scheduler", default="ddim")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--serfiq-passes", type=int, default=100, help="SER-FIQ dropout passes T (default 100)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, mps (default cpu)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args) -> int:
    import sys

    from ..evaluation import ProtocolConfig, ProtocolRunner
    from ..report import markdown_report, write_reports

    tiny = str(args.model).startswith("tiny")
    overrides = {"max_train_steps": args.attack_steps} if args.attack_steps else {}
    try:
        config = ProtocolConfig(
            methods=args.methods or ["none"], transforms=args.transforms or ["none"], budgets=args.budgets or [8.0],
            model=args.model, attack_preset=args.preset or ("tiny-lora" if tiny else "lora"),
            attack_overrides=overrides, resolution=args.resolution, images_per_prompt=args.images_per_prompt,
            generation_steps=args.steps, guidance_scale=args.guidance, scheduler=args.scheduler, seed=args.seed,
            serfiq_T=args.serfiq_passes, device=args.device)
        runner = ProtocolRunner(args.data, args.out, config, cache_dir=args.cache, progress=not args.no_progress)
        results = runner.run()
    except (ValueError, FileNotFoundError, RuntimeError, ImportError) as e:
        print(f"gapdiff evaluate: {e}", file=sys.stderr)
        return 2
    paths = write_reports(results, args.out)
    print(markdown_report(results).split("## Visibility")[0].rstrip())
    print("\nwrote " + ", ".join(str(p) for p in paths.values()))
    return 0
