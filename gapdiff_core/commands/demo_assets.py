"""`gapdiff demo-assets` (earlier name `comfyui-demo-assets`): the demo generator, the tiny surrogate and sample
photos that make the app, the shipped ComfyUI workflows and the webui tab run without real weights."""
from __future__ import annotations

from pathlib import Path

from ..ui.settings import SURROGATES_FOLDER

HELP = "write the demo generator and tiny surrogate into a models folder (demo models, not protection)"
DESCRIPTION = """Write demo models (and sample photos) into a models folder laid out as ComfyUI's and the app's, so
that `gapdiff app`, every shipped ComfyUI workflow and the webui tab run on a CPU without real weights:

  MODELS/gapdiff/gapdiff_demo_generator.safetensors      demo GAP-Diff generator, trained for a minute against
                                                         the tiny model on the sample faces (metadata: demo=true)
  MODELS/checkpoints/gapdiff_demo_tiny_sd.safetensors    tiny random Stable-Diffusion-architecture model
  INPUT/gapdiff_sample_face_1.jpg ... _3.jpg             public-domain sample face photos

MODELS is created when it does not exist. Files already there are kept (--force replaces them). Both models are
DEMO models: they show how the tools work and protect nothing real. For real use put the authors'
G_per16_pretrain.pth (or a trained .safetensors) in MODELS/gapdiff and pick your own SD 1.5 checkpoint.
`gapdiff app --demo` does the same for the app and opens it."""

GENERATOR_FILE = "gapdiff_demo_generator.safetensors"
SURROGATE_FILE = "gapdiff_demo_tiny_sd.safetensors"
GENERATORS_FOLDER = "gapdiff"  # in the models folder, as in ComfyUI (surrogates: ui.settings.SURROGATES_FOLDER)
SAMPLE_PHOTOS = {"gapdiff_sample_face_1.jpg": "obama.jpg", "gapdiff_sample_face_2.jpg": "obama2.jpg",
                 "gapdiff_sample_face_3.jpg": "obama3.jpg"}


def add_arguments(p) -> None:
    p.add_argument("models_dir", metavar="MODELS_DIR",
                   help="the models folder (ComfyUI/models, or models/ for the app); created if missing")
    p.add_argument("--input-dir", default=None,
                   help="folder for the sample photos (default: input/ beside the models folder, when it exists, "
                        "as in ComfyUI)")
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
                         provenance="DEMO: untrained, random weights (seed 0) written by `gapdiff demo-assets "
                                    "--untrained`; shows the mechanics, protects nothing")
    return generator, info


def write_demo_models(generator_dir: Path, surrogate_dir: Path, *, untrained: bool = False,
                      train_minutes: float = 1.0, force: bool = False) -> tuple[list[Path], list[Path]]:
    """The demo generator in `generator_dir` and the tiny surrogate in `surrogate_dir` (folders created), each
    made only when missing or with `force`; returns the files written and the files kept."""
    import sys

    from ..diffusion import Surrogate
    from ..model.checkpoint import save_generator

    written, kept = [], []
    target = Path(generator_dir) / GENERATOR_FILE
    if target.exists() and not force:
        kept.append(target)
    elif untrained:
        generator, info = untrained_generator()
        target.parent.mkdir(parents=True, exist_ok=True)
        written.append(save_generator(generator, target, info))
    else:
        from ..training import train_demo_generator

        print(f"training the demo generator: up to {train_minutes:g} min of training steps, after a set-up that "
              "takes a few minutes on a busy CPU ...", file=sys.stderr)
        written.append(train_demo_generator(target, minutes=train_minutes))
    target = Path(surrogate_dir) / SURROGATE_FILE
    if target.exists() and not force:
        kept.append(target)
    else:
        written.append(Surrogate.tiny(seed=0).save_single_file(target))
    return written, kept


def run(args) -> int:
    import sys

    from ..io.atomic import write_bytes
    from ..samples import SAMPLES_DIR

    models = Path(args.models_dir)
    if models.exists() and not models.is_dir():
        print(f"{models}: not a folder (give a models folder, e.g. ComfyUI/models)", file=sys.stderr)
        return 2
    written, kept = write_demo_models(models / GENERATORS_FOLDER, models / SURROGATES_FOLDER,
                                      untrained=args.untrained, train_minutes=args.train_minutes, force=args.force)
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
    print("These are DEMO models: the tools run with them, but nothing is protected.")
    return 0
