"""`gapdiff export`: write a generator's protection function for other runtimes (ONNX)."""
from __future__ import annotations

import sys

HELP = "export the protection function to ONNX (onnxruntime, Triton, TensorRT)"
DESCRIPTION = """Export a generator's protection function to ONNX.

The graph takes `images` (B x 3 x H x W uint8, dynamic batch and size, sides over 256) and `budget` (a
1-element float32 tensor, grey levels on the 0-255 scale) and returns `protected` (B x 3 x H x W uint8): the
generator with per-image normalisation at the photo's own size (the default normalisation of `gapdiff protect`,
in --mode native for photos up to one generator pass), the step rounded to whole grey levels and clipped to the
budget. For the default working mode, resize photos to 512 on the short side first (see docs/serving.md).
With --check, the export is run with onnxruntime on two sizes and compared with the torch path.
Needs the `onnx` extra: pip install 'gapdiff[onnx]'."""


def add_arguments(p) -> None:
    p.add_argument("-g", "--generator", required=True, metavar="CKPT",
                   help="generator checkpoint: official .pth or gapdiff .safetensors")
    p.add_argument("-o", "--out", required=True, metavar="FILE.onnx", help="the ONNX file to write")
    p.add_argument("--format", choices=("onnx",), default="onnx", help="export format (onnx)")
    p.add_argument("--check", action="store_true",
                   help="run the export with onnxruntime (CPU) and compare it with the torch path at budget 8")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")


def run(args) -> int:
    from pathlib import Path

    from ..model.checkpoint import CheckpointError, load_generator

    out = Path(args.out)
    if out.is_dir():  # checked before the export, which takes a while
        print(f"gapdiff export: {out} is a folder; -o takes the file to write, e.g. {out / 'generator.onnx'}",
              file=sys.stderr)
        return 2
    if out.parent.exists() and not out.parent.is_dir():
        print(f"gapdiff export: cannot write {out}: {out.parent} is a file, not a folder", file=sys.stderr)
        return 2
    if out.exists() and not args.overwrite:
        print(f"gapdiff export: {out} already exists; pass --overwrite to replace it", file=sys.stderr)
        return 2
    try:
        from ..model.onnx_export import check_onnx, export_onnx

        generator = load_generator(args.generator)
        export_onnx(generator, out)
    except ImportError as exc:
        print(f"gapdiff export: {exc}; install the 'onnx' extra: pip install 'gapdiff[onnx]'", file=sys.stderr)
        return 2
    except (CheckpointError, ValueError, OSError) as exc:
        print(f"gapdiff export: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({out.stat().st_size / 2 ** 20:.1f} MiB): inputs images (B x 3 x H x W uint8), "
          "budget (float32[1]); output protected (uint8)")
    if generator.info.demo:
        print("WARNING: this is a DEMO generator trained on a toy model: its outputs are NOT protection.")
    if args.check:
        try:
            worst = check_onnx(generator, out)
        except ImportError as exc:
            print(f"gapdiff export: --check needs onnxruntime ({exc})", file=sys.stderr)
            return 2
        print(f"onnxruntime vs torch at budget 8: largest difference {worst} grey level(s)")
        return 0 if worst <= 1 else 1
    return 0
