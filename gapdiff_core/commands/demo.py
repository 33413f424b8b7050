"""`gapdiff demo`: the pipeline end to end on the embedded default (sample photos, built-in toy model)."""
from __future__ import annotations

HELP = "run the pipeline on the sample photos with the built-in toy model (a demo, not protection)"
DESCRIPTION = """Run gapdiff end to end on the sample face photos that ship with the package, offline, on CPU.

Everything here uses toy models built from configs in code: the results show how the pipeline works and
what it measures, NOT protection. Budgets are in grey levels on the 0-255 scale."""


def add_arguments(p) -> None:
    p.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    p.add_argument("--budget", type=float, default=8.0, help="budget in grey levels (default 8)")
    p.add_argument("--quality", type=int, default=70, help="JPEG quality applied after protection (default 70)")


def run(args) -> int:
    from pathlib import Path

    import torch

    from ..checkpoint import GeneratorInfo
    from ..generator import Generator
    from ..imageio import load_image, save_image, to_uint8
    from ..preprocess import real
    from ..preprocess.fidelity import fidelity_table, format_table, sample_photos
    from ..protect import Protector, protection_stats

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print("gapdiff demo: UNTRAINED generator (random weights) - this shows the mechanics, it is NOT protection.")
    torch.manual_seed(0)
    generator = Generator(ngf=16).eval()
    generator.info = GeneratorInfo(ngf=16, budget=args.budget, demo=True, provenance="untrained, random weights")
    protector = Protector(generator, budget=args.budget)
    for path in sample_photos():
        image = load_image(path)
        x = image.tensor()
        y = protector(x)
        stats = protection_stats(x, y)
        jpeg = real.jpeg(y, args.quality)
        stem = path.stem
        save_image(out / f"{stem}_untrained-demo.png", to_uint8(y), overwrite=True)
        save_image(out / f"{stem}_untrained-demo_q{args.quality}.png", to_uint8(jpeg), overwrite=True)
        print(f"{path.name}: {image.size[0]}x{image.size[1]}, max change {stats.max_change:.0f} grey levels, "
              f"PSNR {stats.psnr:.1f} dB; after JPEG q{args.quality}: "
              f"PSNR {protection_stats(x, jpeg).psnr:.1f} dB vs clean")
    print("\nHow well the training-time simulators match real transforms (PSNR, dB):")
    print(format_table(fidelity_table()))
    print(f"\nwrote {out}/ (demo outputs, not protection)")
    return 0
