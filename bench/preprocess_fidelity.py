"""PSNR of each differentiable simulator against its real transform on the shipped sample photos.

Prints a table, then one `psnr_<key>=<dB>` line per figure. Usage: python bench/preprocess_fidelity.py [--size 512]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gapdiff_core.preprocess.fidelity import fidelity_table, format_table, sample_photos  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512, help="short side of the photos (centre-cropped square)")
    args = ap.parse_args(argv)
    paths = sample_photos()
    t0 = time.time()
    rows = fidelity_table(paths, args.size)
    print(f"photos: {', '.join(p.name for p in paths)} at {args.size}×{args.size}")
    print(format_table(rows))
    print(f"photos={len(paths)}")
    print(f"seconds={time.time() - t0:.1f}")
    for r in rows:
        print(f"psnr_{r['key']}={r['psnr_sim_vs_real']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
