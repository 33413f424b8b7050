"""`gapdiff protect`: protect photos (files, folders, globs) with a trained generator."""
from __future__ import annotations

import sys

from . import options
from .batch_log import BatchLog

HELP = "protect photos with a trained GAP-Diff generator"
DESCRIPTION = """Protect photos with a trained GAP-Diff generator (one forward pass per photo).

Writes one protected copy per input into OUTDIR (never over an input), PNG by default, with EXIF/GPS/XMP
metadata stripped unless --keep-metadata. Photos of any size and aspect ratio are accepted.

Budgets are L-infinity bounds in grey levels on the 0-255 scale: with --budget 8 (the default, the paper's
noise_budget=16 on [-1, 1]) no pixel of the saved 8-bit image differs from the input by more than 8.

A generator is required: the authors' released G_per16_pretrain.pth (see the README), or one you train with
`gapdiff train`. A generator trained against the built-in tiny demo model protects nothing real; its outputs
are labelled as demo outputs.

Memory (bench/cli_memory.py): about 40 bytes per photo pixel besides the loaded generator (a 25-megapixel photo
adds 0.8-0.9 GB), plus the generator's activations at the working size. A photo whose working-resolution copy
exceeds 2048x2048 pixels (an aspect ratio beyond 16:1 at 512) is refused in working mode: crop it or use
--mode native. Photos over 150 megapixels are refused from the header, before decoding.

Exit code 0 when every photo was protected, 1 when any input failed (the others are still written)."""


def add_arguments(p) -> None:
    p.add_argument("inputs", nargs="+", metavar="IN", help="image files, folders or glob patterns")
    p.add_argument("-o", "--out", required=True, metavar="OUTDIR", help="output folder (created if missing)")
    p.add_argument("-g", "--generator", metavar="CKPT",
                   help="generator checkpoint: official .pth or gapdiff .safetensors")
    p.add_argument("--budget", type=options.budget, default=None,
                   help="L-infinity budget in grey levels (1-255 on the 0-255 scale); default: the checkpoint's (8)")
    p.add_argument("--mode", choices=("working", "native"), default="working",
                   help="working: compute at the fine-tuning resolution (512 short side) and resize the "
                        "perturbation to the photo (fast, default); native: full resolution, tiled")
    p.add_argument("--device", type=options.device, default="auto",
                   help="auto | cpu | cuda | cuda:N | mps (default auto)")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                   help="auto picks the fastest precision within 1 grey level of fp32 for the device")
    p.add_argument("--batch-size", type=int, default=4,
                   help="photos read at a time; those of equal size go through the generator together")
    p.add_argument("--format", choices=("png", "webp", "jpg"), default="png",
                   help="output format; png (default) and webp are lossless; jpg weakens the protection")
    p.add_argument("--quality", type=options.quality, default=95,
                   help="JPEG quality 1-100 for --format jpg (the reported change is measured on the saved file)")
    p.add_argument("--keep-metadata", action="store_true", help="keep EXIF/GPS/XMP (stripped by default)")
    existing = p.add_mutually_exclusive_group()
    existing.add_argument("--overwrite", action="store_true",
                          help="replace outputs of an earlier run in OUTDIR (inputs are never replaced)")
    existing.add_argument("--skip-existing", action="store_true",
                          help="leave inputs whose output is already in OUTDIR (continue an interrupted batch)")
    p.add_argument("--recursive", action="store_true",
                   help="descend into sub-folders of folder inputs (mirrored under OUTDIR)")
    p.add_argument("--norm", choices=("image", "running"), default="image",
                   help="image (default): each BatchNorm uses the photo's own statistics, the function the "
                        "generator was trained to compute; running: eval-mode running statistics (not trained)")
    p.add_argument("--official-mode", action="store_true",
                   help="reproduce the authors' generate.py (train mode, dropout on, one photo at a time, seeded)")
    p.add_argument("--seed", type=int, default=0, help="seed for --official-mode (and iterative methods)")
    p.add_argument("--method", default="gap-diff",
                   help="gap-diff (default; needs --generator) or an iterative protection: aspl, fsmg, photoguard, "
                        "mist, ace, metacloak, caat, simac (slow: hundreds of surrogate gradient steps per photo)")
    p.add_argument("--surrogate", default="tiny", metavar="tiny|PATH",
                   help="surrogate for iterative methods: tiny (demo model) or a diffusers folder / SD checkpoint")
    p.add_argument("--schedule", choices=("default", "tiny"), default="default",
                   help="iterative methods: the authors' schedule (default) or a few-step tiny one (demos, tests)")
    p.add_argument("--per-photo", action="store_true",
                   help="iterative methods: protect each photo on its own (default: the photos of one folder form "
                        "one set, optimised together as the methods' code does)")
    p.add_argument("--clean-set", metavar="DIR",
                   help="iterative methods: clean photos of the same person (Anti-DreamBooth's set_A) that ASPL, "
                        "FSMG and SimAC fine-tune their surrogate on; default: the photos being protected")
    p.add_argument("--class-images", metavar="DIR",
                   help="iterative methods with prior preservation: class images ('a photo of person'); default: "
                        "generated by the surrogate once and cached (GAPDIFF_CACHE or ~/.cache/gapdiff)")


def run(args) -> int:
    import numpy as np
    from tqdm import tqdm

    from ..checkpoint import CheckpointError, load_generator
    from ..imageio import (ImageError, InputGuard, iter_image_paths, load_image, output_path_for,
                           prepare_output_folder)
    from ..protect import NORM_DESCRIPTIONS, Protector

    if getattr(args, "method", "gap-diff").lower() not in ("gap-diff", "gapdiff"):
        return _run_iterative(args)
    if not args.generator:
        print("gapdiff protect: no generator given (--generator CKPT).\n"
              "  Use the authors' released checkpoint G_per16_pretrain.pth (link in the README), or train one:\n"
              "  `gapdiff train --config train/configs/paper.yaml`. `gapdiff demo` shows the pipeline on a toy "
              "model.", file=sys.stderr)
        return 2
    try:
        generator = load_generator(args.generator)
        protector = Protector(generator, budget=args.budget, mode=args.mode, device=args.device,
                              precision=args.precision, batch_size=args.batch_size,
                              norm=args.norm, official_mode=args.official_mode, seed=args.seed)
        out_dir = prepare_output_folder(args.out)
    except (CheckpointError, ValueError, RuntimeError) as exc:
        print(f"gapdiff protect: {exc}", file=sys.stderr)
        return 2
    info = generator.info
    tag = "_demo-protected" if info.demo else "_protected"
    print(info.describe())
    if info.demo:
        print("WARNING: this is a DEMO generator trained on a toy model: its outputs are NOT protection.")
    if protector.budget > info.budget:
        print(f"note: budget {protector.budget:g} exceeds the {info.budget:g} grey levels it was trained for")
    print(f"budget {protector.budget:g} grey levels, mode {protector.mode}, device {protector.device}, "
          f"precision {protector.precision}{f' ({protector.precision_note})' if protector.precision_note else ''}"
          f"\nnormalisation: {NORM_DESCRIPTIONS[protector.norm]}")

    suffix = "." + args.format
    paths, failures, root = iter_image_paths(args.inputs, recursive=args.recursive, out_dir=out_dir,
                                             output_ending=tag + suffix)
    inputs = InputGuard(paths)
    done = 0
    log = BatchLog(failures)
    bar = tqdm(total=len(paths), desc="protecting", unit="photo", disable=not paths)

    def fail(path, exc):
        log.fail(path, exc)
        bar.update(1)

    for start in range(0, len(paths), protector.batch_size):
        loaded = []
        for path in paths[start:start + protector.batch_size]:
            if args.skip_existing and output_path_for(path, out_dir, suffix=suffix, tag=tag, root=root).exists():
                log.skip()
                bar.update(1)
                continue
            try:
                image = load_image(path)
                protector.check_size(image.rgb.shape[0], image.rgb.shape[1], name=path)
                loaded.append((path, image))
            except (ValueError, OSError) as exc:  # ImageError is a ValueError
                fail(path, exc)
        for group in _same_size_groups(loaded):  # one generator call per group of equal-size photos
            try:
                rgb = np.stack([image.rgb for _, image in group]) if len(group) > 1 else group[0][1].rgb[None]
                out = protector.protect_uint8(rgb)
            except (ValueError, RuntimeError) as exc:
                for path, _ in group:
                    fail(path, exc)
                continue
            for i, (path, image) in enumerate(group):
                try:
                    dest = output_path_for(path, out_dir, suffix=suffix, tag=tag, root=root)
                    tqdm.write(_save_and_describe(path, dest, image, out[i], args, inputs, protector.budget))
                except (ImageError, OSError, ValueError) as exc:
                    fail(path, exc)
                    continue
                done += 1
                bar.update(1)
    bar.close()
    return log.finish(done, "protected", demo=info.demo)


def _run_iterative(args) -> int:
    """An iterative protection (gapdiff_core.protections). The photos of one folder form one set, optimised
    together as the methods' released code does (``--per-photo``: each photo alone); ``--clean-set`` is the
    identity's clean set_A and ``--class-images`` its prior-preservation images, for the methods whose code uses
    them. Each set is computed at the surrogate's resolution and only the perturbation is resized back to each
    photo (see protections/base.py)."""
    import torch
    from tqdm import tqdm

    from ..progress import TqdmProgress
    from ..imageio import (ImageError, InputGuard, iter_image_paths, load_image, output_path_for,
                           prepare_output_folder, to_uint8)
    from ..protect import resolve_device
    from ..protections import get_protection
    from ..protections.base import ProtectionCancelled, resize

    overrides = {"seed": args.seed} if args.seed else {}
    if args.budget is not None:
        overrides["budget"] = args.budget
    try:
        method = get_protection(args.method, surrogate=args.surrogate, schedule=args.schedule, **overrides)
        method.surrogate.to(resolve_device(args.device))
        clean_set = _load_folder(args.clean_set, "--clean-set") if args.clean_set else None
        if args.class_images:
            if "num_class_images" not in method.settings:
                raise ValueError(f"{method.name} uses no class images (--class-images)")
            res = (method.resolution, method.resolution)
            method.class_images = torch.cat([resize(x, res) for x in _load_folder(args.class_images,
                                                                                  "--class-images")])
        out_dir = prepare_output_folder(args.out)
    except (ValueError, RuntimeError, OSError, ImportError, ImageError) as exc:
        print(f"gapdiff protect: {exc}", file=sys.stderr)
        return 2
    demo = bool(getattr(method.surrogate, "is_demo", False))
    tag = f"_{method.name}-demo-protected" if demo else f"_{method.name}-protected"
    print(method.describe())
    if demo:
        print("WARNING: the surrogate is a DEMO model with random weights: these outputs are NOT protection.")
    suffix = "." + args.format
    paths, failures, root = iter_image_paths(args.inputs, recursive=args.recursive, out_dir=out_dir,
                                             output_ending=tag + suffix)
    inputs = InputGuard(paths)
    done = 0
    log = BatchLog(failures)
    sets: dict = {}
    for path in paths:
        sets.setdefault(path if args.per_photo else path.resolve().parent, []).append(path)
    for members in sets.values():
        dests = {path: output_path_for(path, out_dir, suffix=suffix, tag=tag, root=root) for path in members}
        if args.skip_existing and all(dest.exists() for dest in dests.values()):
            for _ in members:  # a set is skipped whole: its photos are optimised together
                log.skip()
            continue
        loaded = []
        for path in members:
            try:
                loaded.append((path, load_image(path)))
            except (ImageError, OSError) as exc:
                log.fail(path, exc)
        if not loaded:
            continue
        label = loaded[0][0].name if len(loaded) == 1 else f"{loaded[0][0].parent.name}/ ({len(loaded)} photos)"
        try:
            with TqdmProgress(f"{method.name} {label}") as bar:
                method.progress = bar
                out = method.protect([image.tensor() for _, image in loaded], reference=clean_set)
        except (ValueError, RuntimeError, OSError, ProtectionCancelled) as exc:
            for path, _ in loaded:
                log.fail(path, exc)
            continue
        for (path, image), y in zip(loaded, out):
            if args.skip_existing and dests[path].exists():  # the rest of a partly written set
                log.skip()
                continue
            try:
                tqdm.write(_save_and_describe(path, dests[path], image, to_uint8(y), args, inputs, method.budget))
            except (ImageError, ValueError, OSError) as exc:
                log.fail(path, exc)
                continue
            done += 1
    return log.finish(done, "protected", demo=demo)


def _load_folder(folder, option: str) -> list:
    """The photos of a folder as 1×3×H×W tensors in [0, 1]; an error names the folder when it holds none."""
    from ..imageio import iter_image_paths, load_image

    paths, problems, _ = iter_image_paths([folder])
    if problems or not paths:
        raise ValueError(f"{option} {folder}: " + ("; ".join(problems) if problems else "no photos in it"))
    return [load_image(p).tensor() for p in paths]


def _save_and_describe(path, dest, image, protected, args, inputs, budget: float) -> str:
    """Write one protected photo; the line that reports it, with the change measured on the file as saved (JPEG
    changes more than the protection did)."""
    from ..imageio import load_image, save_image
    from ..protect import protection_stats

    dest.parent.mkdir(parents=True, exist_ok=True)
    lossy = args.format == "jpg"
    save_image(dest, protected, None if lossy else image.alpha, quality=args.quality,
               keep_metadata=args.keep_metadata, metadata=image.metadata, protect_paths=inputs,
               overwrite=args.overwrite)
    saved = load_image(dest).rgb if lossy else protected  # png and webp are written losslessly
    stats = protection_stats(image.rgb, saved)
    notes = list(image.notes)
    if stats.max_change > budget:
        notes.append(f"JPEG quality {args.quality} moved pixels beyond the {budget:g}-level budget; "
                     "save as png for the exact protection")
    extra = f" ({'; '.join(notes)})" if notes else ""
    return f"{path} -> {dest}: max change {stats.max_change:.0f} grey levels, PSNR {stats.psnr:.1f} dB{extra}"


def _same_size_groups(loaded):
    groups: dict = {}
    for path, image in loaded:
        groups.setdefault(image.rgb.shape, []).append((path, image))
    return list(groups.values())
