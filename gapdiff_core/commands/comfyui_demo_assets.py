"""`gapdiff comfyui-demo-assets`: demo models (and sample photos) that make the shipped ComfyUI workflows run."""
from __future__ import annotations

HELP = "write the demo generator and tiny surrogate into a ComfyUI models folder (demo models, not protection)"
DESCRIPTION = """Write the files the workflows in workflows/ expect into a ComfyUI installation, so that every
shipped workflow runs on a CPU-only ComfyUI without real weights:

  MODELS/gapdiff/gapdiff_demo_generator.safetensors      demo GAP-Diff generator, trained for a minute against
                                                         the tiny model on the sample faces (metadata: demo=true)
  MODELS/checkpoints/gapdiff_demo_tiny_sd.safetensors    tiny random Stable-Diffusion-architecture model
  INPUT/gapdiff_sample_face_1.jpg ... _3.jpg             public-domain sample face photos

Both models are DEMO models: they show how the graph works and protect nothing real. For real use put the
authors' G_per16_pretrain.pth (or a trained .safetensors) in models/gapdiff and pick your own SD 1.5 checkpoint."""

GENERATOR_FILE = "gapdiff_demo_generator.safetensors"
SURROGATE_FILE = "gapdiff_demo_tiny_sd.safetensors"
SAMPLE_PHOTOS = {"gapdiff_sample_face_1.jpg": "obama.jpg", "gapdiff_sample_face_2.jpg": "obama2.jpg",
                 "gapdiff_sample_face_3.jpg": "obama3.jpg"}


def add_arguments(p) -> None:
    p.add_argument("models_dir", metavar="COMFYUI_MODELS_DIR", help="ComfyUI's models folder (ComfyUI/models)")
    p.add_argument("--input-dir", default=None,
                   help="ComfyUI's input folder for the sample photos (default: input/ beside the models folder, "
                        "when it exists)")
    p.add_argument("--train-minutes", type=float, default=1.0,
                   help="CPU minutes for training the demo generator on the sample faces (default 1)")
    p.add_argument("--untrained", action="store_true",
                   help="write an untrained random generator instead (instant; shows only the mechanics)")
    p.add_argument("--force", action="store_true", help="overwrite files that already exist")


def untrained_generator(ngf: int = 16):
    """A seeded random generator labelled as a demo (for `--untrained`: instant, shows only the mechanics)."""
    import torch

    from ..model.checkpoint import GeneratorInfo
    from ..model.generator import Generator

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        generator = Generator(ngf=ngf).eval()
    info = GeneratorInfo(ngf=ngf, budget=8.0, demo=True, surrogate="none",
                         provenance="DEMO: untrained, random weights (seed 0) written by `gapdiff "
                                    "comfyui-demo-assets --untrained`; shows the mechanics, protects nothing")
    return generator, info


def run(args) -> int:
    import sys
    from pathlib import Path

    from ..diffusion import Surrogate
    from ..io.atomic import write_bytes
    from ..model.checkpoint import save_generator
    from ..samples import SAMPLES_DIR

    models = Path(args.models_dir)
    if not models.is_dir():
        print(f"{models}: no such folder (give ComfyUI's models folder, e.g. ComfyUI/models)", file=sys.stderr)
        return 2
    written, kept = [], []

    target = models / "gapdiff" / GENERATOR_FILE
    if target.exists() and not args.force:
        kept.append(target)
    else:
        if args.untrained:
            generator, info = untrained_generator()
            written.append(save_generator(generator, target, info))
        else:
            from ..training import train_demo_generator

            print(f"training the demo generator for up to {args.train_minutes:g} min ...", file=sys.stderr)
            written.append(train_demo_generator(target, minutes=args.train_minutes))

    target = models / "checkpoints" / SURROGATE_FILE
    if target.exists() and not args.force:
        kept.append(target)
    else:
        written.append(Surrogate.tiny(seed=0).save_single_file(target))

    input_dir = Path(args.input_dir) if args.input_dir else models.parent / "input"
    if args.input_dir or input_dir.is_dir():
        input_dir.mkdir(parents=True, exist_ok=True)
        for name, source in SAMPLE_PHOTOS.items():
            target = input_dir / name
            if target.exists() and not args.force:
                kept.append(target)
            else:
                written.append(write_bytes(target, (SAMPLES_DIR / source).read_bytes()))
    else:
        print(f"note: {input_dir} does not exist; sample photos not copied (use --input-dir)", file=sys.stderr)

    for p in written:
        print(f"wrote {p}")
    for p in kept:
        print(f"kept  {p} (exists; --force overwrites)")
    print("These are DEMO models: the workflows run with them, but nothing is protected.")
    return 0
