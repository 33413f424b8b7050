"""`gapdiff train`: train a GAP-Diff generator from a config file plus key=value overrides."""
from __future__ import annotations

HELP = "train a protection generator against a surrogate diffusion model"
DESCRIPTION = """Train a GAP-Diff generator (GAP-Diff objective, JPEG/blur preprocessing simulation, optional
alternating DreamBooth fine-tuning of the surrogate) and export it as .safetensors with metadata.

Examples:
  gapdiff train train/configs/tiny-cpu.yaml --set max_steps=50
  gapdiff train train/configs/paper.yaml --set train_dir=data/FFHQ512 surrogate=models/sd21-base
  gapdiff train train/configs/paper.yaml --resume auto
  gapdiff train train/configs/tiny-cpu.yaml --overwrite      (discard the earlier run in its output_dir)
  torchrun --nproc_per_node 2 train/train.py train/configs/tiny-cpu.yaml      (several processes, via accelerate)

Budgets are grey levels on the 0-255 scale (8 = the official noise_budget 16 on [-1, 1]). A generator trained
against the tiny built-in surrogate is a DEMO: it protects nothing real and is labelled so in its metadata.

A run owns its output_dir (run.json: run id and config hash, also in every checkpoint). A new run refuses a folder
that is not empty; --resume continues only the same run with the same config; --overwrite discards the earlier run.
One trainer at a time: a second one on the same output_dir is refused, naming the first (pid, host, start time)."""


def add_arguments(parser) -> None:
    parser.add_argument("config", nargs="?", help="YAML/TOML/JSON config (train/configs/*.yaml); default: all defaults")
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="override config keys, e.g. --set max_steps=100 lr=5e-4 weighting=min_snr")
    parser.add_argument("--resume", metavar="auto|DIR", help="resume from a checkpoint folder, or the latest one "
                        "under OUTPUT_DIR/checkpoints with 'auto' (a new run if OUTPUT_DIR is empty); only the run "
                        "that wrote it, with the same config")
    parser.add_argument("--overwrite", action="store_true", help="start a new run even if OUTPUT_DIR holds an "
                        "earlier one (its checkpoints, logs and export are deleted)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def run(args) -> int:
    import json
    import logging
    import sys

    from ..training import Trainer, load_config
    from ..training.lock import RunLockedError, check_run_unlocked
    from ..training.state import ResumeError, plan_run

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.config, args.overrides)
        if args.print_config:
            print(json.dumps(cfg.to_dict(), indent=1))
            return 0
        check_run_unlocked(cfg.output_dir)  # fail before loading any model
        plan_run(cfg.output_dir, cfg.to_dict(), args.resume, args.overwrite)
        trainer = Trainer(cfg)
    except (ValueError, OSError) as exc:
        print(f"gapdiff train: {exc}", file=sys.stderr)
        return 2
    try:
        summary = trainer.run(resume=args.resume, overwrite=args.overwrite)
    except (ResumeError, RunLockedError, OSError) as exc:
        print(f"gapdiff train: {exc}", file=sys.stderr)
        return 2
    trainer_ok = summary.get("finished") and summary.get("in_sync", True)
    if summary.get("export"):
        print(f"exported {summary['export']}")
    if summary.get("validation"):
        print("validation: " + " ".join(f"{k}={v:.4g}" for k, v in summary["validation"].items()
                                        if isinstance(v, float)))
    return 0 if trainer_ok else 1
