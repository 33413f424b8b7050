"""`gapdiff convert`: official .pth generator -> .safetensors with metadata."""
from __future__ import annotations

import sys

from . import options

HELP = "convert the authors' .pth generator to a .safetensors file with metadata"
DESCRIPTION = """Convert an official GAP-Diff generator state dict (e.g. G_per16_pretrain.pth) into a .safetensors
file with metadata (architecture, width, budget, working resolution, provenance). The .pth is read with
torch.load(weights_only=True): a file that would run code is refused.

--budget is in grey levels on the 0-255 scale; the official noise_budget=16 on [-1, 1] is 8 (the default)."""


def add_arguments(p) -> None:
    p.add_argument("source", metavar="OFFICIAL.pth", help="the official state dict")
    p.add_argument("dest", metavar="OUT.safetensors", help="where to write (must not exist)")
    p.add_argument("--budget", type=options.budget, default=8.0,
                   help="budget the generator was trained for, grey levels (official 16 on [-1,1] = 8)")
    p.add_argument("--working-resolution", type=int, default=512, help="resolution it was trained at")
    p.add_argument("--provenance", default=None, help="free text recorded in the metadata")
    p.add_argument("--surrogate", default="stable-diffusion-2-1-base",
                   help="surrogate it was trained against (official: SD 2.1-base)")


def run(args) -> int:
    from pathlib import Path

    from ..model.checkpoint import CheckpointError, load_generator, save_generator

    dest = Path(args.dest)
    exists = f"gapdiff convert: {dest} exists; choose another name"
    if dest.exists():  # fail before loading; the write below refuses a file that appears meanwhile
        print(exists, file=sys.stderr)
        return 2
    try:
        generator = load_generator(args.source)
        info = generator.info
        info.budget, info.working_resolution, info.surrogate = args.budget, args.working_resolution, args.surrogate
        info.provenance = args.provenance or f"converted from {Path(args.source).name} (official GAP-Diff format)"
        save_generator(generator, dest, info, overwrite=False)  # atomic create-if-absent: one of two racing wins
    except CheckpointError as exc:
        print(f"gapdiff convert: {exc}", file=sys.stderr)
        return 2
    except FileExistsError:
        print(exists, file=sys.stderr)
        return 2
    print(f"wrote {dest}: {info.describe()}")
    return 0
