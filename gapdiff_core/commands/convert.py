"""`gapdiff convert`: a generator checkpoint (the authors' .pth, or a gapdiff .safetensors) -> .safetensors with
metadata."""
from __future__ import annotations

import sys

from . import options

HELP = "convert the authors' .pth generator to a .safetensors file with metadata"
#: What an official .pth (which holds no metadata) is recorded with unless a flag says otherwise.
OFFICIAL_DEFAULTS = {"budget": 8.0, "working_resolution": 512, "surrogate": "stable-diffusion-2-1-base"}
DESCRIPTION = """Convert an official GAP-Diff generator state dict (e.g. G_per16_pretrain.pth) into a .safetensors
file with metadata (architecture, width, budget, working resolution, provenance). The .pth is read with
torch.load(weights_only=True): a file that would run code is refused. A gapdiff .safetensors file keeps its own
metadata (budget, working resolution, surrogate, provenance, demo label, training config) except the fields a flag
sets.

--budget is in grey levels on the 0-255 scale; the official noise_budget=16 on [-1, 1] is 8 (the default for a
.pth)."""


def add_arguments(p) -> None:
    p.add_argument("source", metavar="CHECKPOINT", help="the official state dict (.pth), or a gapdiff .safetensors")
    p.add_argument("dest", metavar="OUT.safetensors", help="where to write (must not exist)")
    p.add_argument("--budget", type=options.budget, default=None,
                   help="budget the generator was trained for, grey levels (a .pth: default 8, the official 16 on "
                        "[-1,1]; a .safetensors: its own)")
    p.add_argument("--working-resolution", type=int, default=None,
                   help="resolution it was trained at (a .pth: default 512; a .safetensors: its own)")
    p.add_argument("--provenance", default=None, help="free text recorded in the metadata")
    p.add_argument("--surrogate", default=None,
                   help="surrogate it was trained against (a .pth: default stable-diffusion-2-1-base, the official "
                        "one; a .safetensors: its own)")


def run(args) -> int:
    from pathlib import Path

    from ..model.checkpoint import CheckpointError, load_generator, save_generator

    source, dest = Path(args.source), Path(args.dest)
    exists = f"gapdiff convert: {dest} exists; choose another name"
    if dest.exists():  # fail before loading; the write below refuses a file that appears meanwhile
        print(exists, file=sys.stderr)
        return 2
    flags = {"budget": args.budget, "working_resolution": args.working_resolution, "surrogate": args.surrogate,
             "provenance": args.provenance}
    try:
        generator = load_generator(source)
        info = generator.info
        official = source.suffix.lower() != ".safetensors"
        if official:
            flags = {**OFFICIAL_DEFAULTS, **{k: v for k, v in flags.items() if v is not None}}
            flags["provenance"] = flags.get("provenance") or f"converted from {source.name} (official GAP-Diff format)"
        for key, value in flags.items():
            if value is not None:
                setattr(info, key, value)
        save_generator(generator, dest, info, overwrite=False)  # atomic create-if-absent: one of two racing wins
    except CheckpointError as exc:
        print(f"gapdiff convert: {exc}", file=sys.stderr)
        return 2
    except FileExistsError:
        print(exists, file=sys.stderr)
        return 2
    if not official:
        changed = [k.replace("_", "-") for k, v in flags.items() if v is not None]
        print(f"kept the metadata of {source}" + (f" except --{', --'.join(changed)}" if changed else ""))
    print(f"wrote {dest}: {info.describe()}")
    return 0
