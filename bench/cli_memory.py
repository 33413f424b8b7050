"""Peak memory of `gapdiff protect`'s per-photo path (decode, protect in 8 bits, write the PNG) for an untrained
generator of the official width (ngf=64) and the tiny test width (ngf=8): per photo pixel, and at the working-size
cap (model/protector.py MAX_WORKING_PIXELS, reached by a 16:1 strip).

Each case runs in a fresh interpreter (fp32, CPU); the peak RSS above the loaded generator is reported. Photos are
mostly flat, so a 25-megapixel PNG is a few hundred KB. Usage: python bench/cli_memory.py [megapixels ...]
(default 1 12 25). Ends with key=value lines.
"""
import subprocess
import sys

CHILD = r"""
import resource, sys, tempfile, time
from pathlib import Path
import numpy as np, torch
from PIL import Image
from gapdiff_core import Generator
from gapdiff_core.commands.protect import _check_working_size
from gapdiff_core.io import load_image, save_image
from gapdiff_core.model.protector import Protector
ngf, w, h = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
tmp = Path(tempfile.mkdtemp())
a = np.zeros((h, w, 3), np.uint8)
a[::7, ::5] = 200
Image.fromarray(a).save(tmp / "p.png")
del a
torch.manual_seed(0)
p = Protector(Generator(ngf=ngf).eval(), device="cpu", precision="fp32", batch_size=1)
p.protect_uint8(np.zeros((64, 64, 3), np.uint8))  # warm-up
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
t = time.perf_counter()
image = load_image(tmp / "p.png", max_pixels=10**9)
_check_working_size(tmp / "p.png", image, p)
save_image(tmp / "o.png", p.protect_uint8(image.rgb))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(f"{(peak - base) / 2**20:.0f} {time.perf_counter() - t:.1f} {(tmp / 'p.png').stat().st_size}")
"""


def measure(ngf: int, w: int, h: int) -> tuple[float, float, int]:
    out = subprocess.run([sys.executable, "-c", CHILD, str(ngf), str(w), str(h)], capture_output=True, text=True,
                         check=True).stdout.split()
    return float(out[0]), float(out[1]), int(out[2])


def main() -> None:
    sizes = [float(a) for a in sys.argv[1:]] or [1, 12, 25]
    results = []
    for ngf in (8, 64):
        for mp in sizes:
            side = int((mp * 1e6) ** 0.5)
            mb, s, size = measure(ngf, side, side)
            print(f"ngf={ngf} {side}x{side} ({size // 1024} KB PNG): +{mb:.0f} MB in {s:.1f} s", flush=True)
            results.append((f"ngf{ngf}_{mp:g}mp", mb, mb * 2**20 / (side * side)))
        mb, s, _ = measure(ngf, 4096, 256)  # 512 x 8192 working pixels: the cap
        print(f"ngf={ngf} 4096x256 strip at the working-size cap: +{mb:.0f} MB in {s:.1f} s", flush=True)
        results.append((f"ngf{ngf}_strip_cap", mb, None))
    for key, mb, per_pixel in results:
        print(f"peak_mb_{key}={mb:.0f}")
        if per_pixel is not None:
            print(f"bytes_per_pixel_{key}={per_pixel:.0f}")


if __name__ == "__main__":
    main()
