"""`gapdiff compress`: JPEG-compress photos the way social networks do (libjpeg through Pillow)."""
from __future__ import annotations

import sys

from . import options
from .batch_log import BatchLog

HELP = "JPEG-compress photos as a platform would (to test robustness)"
DESCRIPTION = """JPEG-compress photos with libjpeg (through Pillow) at a given quality, with 4:2:0 chroma subsampling
as platforms and Pillow's defaults use. This is the transform GAP-Diff protections are built to survive; use it
to check a protection, not to publish (publish the lossless PNG and let the platform compress it).

Writes NAME_EXT_qQ.jpg files into OUTDIR (never over an input), metadata stripped unless --keep-metadata.
Exit code 1 when any input failed (the others are still written)."""


def add_arguments(p) -> None:
    p.add_argument("inputs", nargs="+", metavar="IN", help="image files, folders or glob patterns")
    p.add_argument("-o", "--out", required=True, metavar="OUTDIR", help="output folder (created if missing)")
    p.add_argument("-q", "--quality", type=options.quality, default=70,
                   help="JPEG quality 1-100 (default 70, the paper's)")
    p.add_argument("--subsampling", choices=("4:2:0", "4:2:2", "4:4:4"), default="4:2:0",
                   help="chroma subsampling (default 4:2:0, as platforms do)")
    options.batch_outputs(p)


def run(args) -> int:
    from tqdm import tqdm

    from ..io import (ImageError, InputGuard, iter_image_paths, load_image, output_path_for, prepare_output_folder,
                      save_image)

    try:
        out_dir = prepare_output_folder(args.out)
    except ImageError as exc:
        print(f"gapdiff compress: {exc}", file=sys.stderr)
        return 2
    tag = f"_q{args.quality}"
    paths, failures, root = iter_image_paths(args.inputs, recursive=args.recursive, out_dir=out_dir,
                                             output_ending=tag + ".jpg")
    inputs = InputGuard(paths)
    done = 0
    log = BatchLog(failures)
    for path in tqdm(paths, desc=f"JPEG q{args.quality}", unit="photo", disable=not paths):
        dest = output_path_for(path, out_dir, suffix=".jpg", tag=tag, root=root)
        if args.skip_existing and dest.exists():
            log.skip()
            continue
        try:
            image = load_image(path)
            if image.alpha is not None:
                tqdm.write(f"{path}: transparency dropped (JPEG has none)")
            dest.parent.mkdir(parents=True, exist_ok=True)
            save_image(dest, image.rgb, None, quality=args.quality, jpeg_subsampling=args.subsampling,
                       keep_metadata=args.keep_metadata, metadata=image.metadata, protect_paths=inputs,
                       overwrite=args.overwrite)
            done += 1
        except (ImageError, OSError, ValueError) as exc:
            log.fail(path, exc)
    return log.finish(done, "compressed")
