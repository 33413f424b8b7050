"""Peak memory of one photo through the app's Protect path (ui.protect_tab.protect_photo: decode, protect in 8 bits,
three PNGs, statistics), per pixel, for the app's --max-megapixels default (ui.settings.BYTES_PER_PIXEL).

Each size runs in a fresh interpreter; the peak RSS above the loaded generator (after one small warm-up photo) is
divided by the photo's pixels. Usage: python bench/app_memory.py [megapixels ...] (default 2 8).
Ends with key=value lines.
"""
import subprocess
import sys

CHILD = r"""
import resource, sys, tempfile
from pathlib import Path
import numpy as np, torch
from PIL import Image
import gapdiff_core as gc
from gapdiff_core.model.checkpoint import GeneratorInfo
from gapdiff_core.ui import generators, protect_tab
mp = float(sys.argv[1])
tmp = Path(tempfile.mkdtemp())
torch.manual_seed(0)
gc.save_generator(gc.Generator(), tmp / "g.safetensors", GeneratorInfo(working_resolution=512))
side = int((mp * 1e6) ** 0.5)
rng = np.random.default_rng(0)
Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(tmp / "p.png", compress_level=1)
Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp / "w.png")
p = generators.get_protector(tmp / "g.safetensors", 8, "working", "cpu", "fp32")
protect_tab.protect_photo(p, str(tmp / "w.png"), tmp, 0, False, max_pixels=10**9)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
protect_tab.protect_photo(p, str(tmp / "p.png"), tmp, 1, False, max_pixels=10**9)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(side * side, base, peak)
"""


def main(argv):
    sizes = [float(a) for a in argv] or [2.0, 8.0]
    rows = []
    for mp in sizes:
        out = subprocess.run([sys.executable, "-c", CHILD, str(mp)], capture_output=True, text=True, check=True)
        pixels, base, peak = map(int, out.stdout.split()[-3:])
        rows.append((pixels, base, peak))
        print(f"app_memory_mp{mp:g}_base_mb={base / 2**20:.0f}")
        print(f"app_memory_mp{mp:g}_peak_above_base_mb={(peak - base) / 2**20:.0f}")
        print(f"app_memory_mp{mp:g}_bytes_per_pixel={(peak - base) / pixels:.0f}")
    if len(rows) >= 2:
        (p0, b0, k0), (p1, b1, k1) = rows[0], rows[-1]
        print(f"app_memory_marginal_bytes_per_pixel={((k1 - b1) - (k0 - b0)) / (p1 - p0):.0f}")


if __name__ == "__main__":
    main(sys.argv[1:])
