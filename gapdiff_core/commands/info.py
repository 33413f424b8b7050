"""`gapdiff info`: what a generator checkpoint is."""
from __future__ import annotations

import sys

HELP = "describe a generator checkpoint"
DESCRIPTION = """Print what a generator checkpoint holds: width, parameters, the budget it was trained for (grey
levels, 0-255 scale), working resolution, surrogate, provenance, and whether it is a demo generator."""


def add_arguments(p) -> None:
    p.add_argument("checkpoint", metavar="CKPT", help=".pth (official) or .safetensors (gapdiff)")


def run(args) -> int:
    import json

    from ..model.checkpoint import CheckpointError, load_generator
    from ..model.protector import NORM_DESCRIPTIONS

    try:
        generator = load_generator(args.checkpoint)
    except CheckpointError as exc:
        print(f"gapdiff info: {exc}", file=sys.stderr)
        return 2
    info = generator.info
    params = sum(p.numel() for p in generator.parameters())
    print(f"{args.checkpoint}\n  {info.describe()}\n  parameters: {params:,}\n"
          f"  protection computes: {NORM_DESCRIPTIONS['image']} (options: --norm running, --official-mode)")
    if info.training_config:
        print("  training config: " + json.dumps(info.training_config, sort_keys=True))
    return 0
