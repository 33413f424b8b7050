"""Protection speed and memory: 512x512 latency and throughput against the matmul peak, a 4032x3024 photo end to
end in both modes (with peak RSS), and a folder of 64 photos.

Runs a full-width (ngf=64) generator with random weights: speed does not depend on the weights.
Usage: python bench/protect.py [--quick]. Ends with key=value lines.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gapdiff_core import Generator, GeneratorInfo, Protector, save_generator  # noqa: E402
from gapdiff_core.generator import generator_flops  # noqa: E402
from gapdiff_core.protect import default_precision, resolve_device  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def matmul_peak(dtype: torch.dtype, device: torch.device, n: int = 2048) -> float:
    """GFLOP/s of a large square matmul: the practical peak of this machine for `dtype`."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def run():
        for _ in range(4):
            a @ b
        sync()
    return 4 * 2 * n ** 3 / median_seconds(run, 3) / 1e9


def latency(generator, precision: str, device, repeats: int) -> dict:
    results = {}
    flops = generator_flops(512, 512, generator.ngf)
    for batch in (1, 2, 4, 8):
        protector = Protector(generator, precision=precision, device=str(device), batch_size=batch)
        x = torch.rand(batch, 3, 512, 512)
        seconds = median_seconds(lambda: protector(x), repeats) / batch
        results[batch] = seconds
        print(f"  {precision} batch {batch}: {seconds:.3f} s/image, {flops / seconds / 1e9:.0f} GFLOP/s")
    return results


def big_photo_run(generator_path: str, photo: str, mode: str, out_dir: str) -> dict:
    """Decode, protect, write PNG in a fresh process; its peak RSS is VmHWM (ru_maxrss would carry the parent's
    peak across fork + exec on Linux)."""
    code = f"""
import json, time, sys
sys.path.insert(0, {str(ROOT)!r})
t0 = time.perf_counter()
from gapdiff_core import Protector
from gapdiff_core.imageio import load_image, save_image, to_uint8
p = Protector({generator_path!r}, mode={mode!r})
t = time.perf_counter()
img = load_image({photo!r})
y = p(img.tensor())
save_image({out_dir!r} + "/out_{mode}.png", to_uint8(y), overwrite=True)
hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM")][0].split()[1]
print(json.dumps({{"seconds": time.perf_counter() - t, "startup": t - t0, "rss_mb": int(hwm) / 1024}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repeats, 16 photos instead of 64")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    repeats = 3 if args.quick else 7
    torch.manual_seed(0)
    generator = Generator(ngf=64).eval()
    default = default_precision(device)
    print(f"device {device}, default precision {default}, torch threads {torch.get_num_threads()}")
    flops = generator_flops(512, 512)
    print(f"generator: {flops / 1e9:.1f} GFLOP per 512x512 image")

    kv = {}
    for precision in dict.fromkeys([default, "fp32"]):
        peak = matmul_peak(DTYPES[precision], device)
        per_batch = latency(generator, precision, device, repeats)
        best_batch = min(per_batch, key=per_batch.get)
        achieved = flops / per_batch[best_batch] / 1e9
        print(f"  {precision}: matmul peak {peak:.0f} GFLOP/s, best {achieved:.0f} GFLOP/s "
              f"({achieved / peak:.0%} of peak) at batch {best_batch}")
        kv.update({f"sec_per_image_512_{precision}_batch1": per_batch[1],
                   f"sec_per_image_512_{precision}_best": per_batch[best_batch],
                   f"best_batch_{precision}": best_batch,
                   f"gflops_{precision}": achieved, f"matmul_peak_gflops_{precision}": peak,
                   f"fraction_of_peak_{precision}": achieved / peak})

    with tempfile.TemporaryDirectory() as tmp:
        gpath = os.path.join(tmp, "g.safetensors")
        save_generator(generator, gpath, GeneratorInfo(provenance="random weights (benchmark)"))
        rng = np.random.default_rng(0)
        base = Image.open(ROOT / "gapdiff_core" / "samples" / "obama.jpg").convert("RGB").resize((4032, 3024))
        noisy = np.clip(np.asarray(base, dtype=np.int16) + rng.integers(-6, 7, (3024, 4032, 3)), 0, 255)
        photo = os.path.join(tmp, "phone.jpg")
        Image.fromarray(noisy.astype(np.uint8)).save(photo, quality=92)
        for mode in ("working", "native"):
            r = big_photo_run(gpath, photo, mode, tmp)
            print(f"4032x3024 {mode}: {r['seconds']:.2f} s end to end (decode+protect+PNG), "
                  f"peak RSS {r['rss_mb']:.0f} MB")
            kv[f"sec_4032x3024_{mode}"] = r["seconds"]
            kv[f"peak_rss_mb_4032x3024_{mode}"] = r["rss_mb"]

        count = 16 if args.quick else 64
        folder = Path(tmp) / "folder"
        folder.mkdir()
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, (683, 512, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
        t = time.perf_counter()
        from gapdiff_core.cli import main as cli_main
        code = cli_main(["protect", str(folder), "-o", os.path.join(tmp, "out"), "-g", gpath, "--batch-size", "8"])
        seconds = time.perf_counter() - t
        assert code == 0
        print(f"folder of {count} photos (512x683 PNG) through `gapdiff protect`: {seconds:.1f} s, "
              f"{count / seconds:.2f} photos/s")
        kv["folder_photos"] = count
        kv["folder_photos_per_sec"] = count / seconds

    kv["peak_rss_mb_this_process"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for key, value in kv.items():
        print(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}")


if __name__ == "__main__":
    main()
