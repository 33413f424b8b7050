"""Protection speed and memory: 512x512 latency at batch 1 and 4 (CUDA: 1, 8, 32, 64) for the default function
(per-image statistics) side by side with the folded eval-mode path (running statistics), in the default precision
and fp32, best of interleaved repeats, with the fraction of the matmul peak; each precision's distance from fp32; a
4032x3024 photo end to end in both modes (with peak RSS); and a folder of 64 photos. It names the CPU and the ISA
oneDNN uses (set ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16 to measure without AMX, a stand-in for AMD Zen 4).

Runs a full-width (ngf=64) generator with random weights: speed does not depend on the weights. Memory is
managed as in the `gapdiff` CLI (`gapdiff_core.common.allocator.keep_freed_memory`).
On a CPU it first checks the host (one pinned matmul per core: a loaded shared host shows slow cores).
Usage: python bench/protect.py [--quick] [--latency-only]. Ends with key=value lines.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
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
from gapdiff_core.common.allocator import keep_freed_memory  # noqa: E402
from gapdiff_core.model import native_kernels  # noqa: E402
from gapdiff_core.model.generator import generator_flops  # noqa: E402
from gapdiff_core.model.protector import default_precision, resolve_device  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
#: The clock of the latency table and the matmul peak: wall time, or with --cpu-time this process's CPU time (on a
#: host loaded by others, one thread's CPU time counts the work done, not the waits for a descheduled thread).
clock = time.perf_counter


def matmul_peak(dtype: torch.dtype, device: torch.device, n: int = 2048):
    """A function returning the GFLOP/s of one large square matmul just now: the practical peak for `dtype`.

    This machine's speed swings by 2x from second to second (a shared host), so each timing of the generator is
    paired with a peak measured right after it."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def measure() -> float:
        t = clock()
        a @ b
        sync()
        return 2 * n ** 3 / (clock() - t) / 1e9
    measure()
    return measure


def per_core_gflops() -> list[float]:
    """A one-thread bf16 matmul pinned to each CPU, all at once (Linux): on a shared host a neighbour's load shows
    as cores far slower than the others, which a multi-threaded op must wait for. Empty where unsupported (no
    pinning, no bf16) or on more than 8 CPUs (one process each)."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_setaffinity") else []
    if not 0 < len(cpus) <= 8 or default_precision(torch.device("cpu")) != "bf16":
        return []
    code = """
import os, sys, time, torch
os.sched_setaffinity(0, {int(sys.argv[1])}); torch.set_num_threads(1)
a, b = torch.randn(2048, 2048).bfloat16(), torch.randn(2048, 2048).bfloat16()
a @ b
t = time.perf_counter()
for _ in range(10): a @ b
print(2 * 2048 ** 3 * 10 / (time.perf_counter() - t) / 1e9)
"""
    procs = [subprocess.Popen([sys.executable, "-c", code, str(cpu)], stdout=subprocess.PIPE, text=True)
             for cpu in cpus]
    return [float(p.communicate()[0]) for p in procs]


NORMS = ("running", "image")  # the old folded eval-mode path, then the default
BATCHES = {"cpu": (1, 4), "cuda": (1, 8, 32, 64)}


def onednn_isa() -> str:
    """The instruction set oneDNN runs on here (its verbose line from one small convolution in a fresh process,
    so ONEDNN_MAX_CPU_ISA, e.g. AVX512_CORE_BF16 as a no-AMX stand-in for AMD Zen 4, is honoured as set)."""
    code = ("import torch; torch.nn.functional.conv2d(torch.rand(1, 64, 64, 64).bfloat16(), "
            "torch.rand(64, 64, 3, 3).bfloat16())")  # small fp32 convolutions do not reach oneDNN
    env = dict(os.environ, ONEDNN_VERBOSE="1")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env).stdout
    isa = next((line.split("isa:", 1)[1].strip() for line in out.splitlines() if "isa:" in line), "unknown")
    return f"{isa} (ONEDNN_MAX_CPU_ISA={os.environ.get('ONEDNN_MAX_CPU_ISA', 'unset')})"


def latency(generator, precision: str, device, repeats: int) -> dict:
    """Per norm and batch size: the best of `repeats` seconds per image, and the fraction of the matmul peak
    measured right after that timing. The two paths alternate in every repeat, so a loaded host slows both alike;
    the ratio is taken between the two bests."""
    results = {norm: {} for norm in NORMS}
    flops = generator_flops(512, 512, generator.ngf)
    peak_now = matmul_peak(DTYPES[precision], device)
    for batch in BATCHES.get(device.type, (1, 4)):
        protectors = {norm: Protector(generator, precision=precision, device=str(device), batch_size=batch,
                                      norm=norm) for norm in NORMS}
        x = torch.rand(batch, 3, 512, 512)
        timings = {norm: [] for norm in NORMS}
        for p in protectors.values():
            p(x)  # warm-up
        for _ in range(repeats):
            for norm, p in protectors.items():
                t = clock()
                p(x)
                timings[norm].append(((clock() - t) / batch, peak_now()))
        for norm in NORMS:
            best, peak = min(timings[norm])
            r = {"seconds": best, "median": statistics.median(s for s, _ in timings[norm]), "peak": peak,
                 "fraction": flops / best / 1e9 / peak}
            results[norm][batch] = r
            print(f"  {precision} {norm:7s} batch {batch}: best {best:.3f} s/image (median {r['median']:.3f}), "
                  f"{flops / best / 1e9:.0f} GFLOP/s; matmul peak right after it {peak:.0f} GFLOP/s, "
                  f"{r['fraction']:.0%} of it")
        ratio = results["image"][batch]["seconds"] / results["running"][batch]["seconds"]
        results.setdefault("ratio", {})[batch] = ratio
        print(f"  {precision} batch {batch}: default / folded = {ratio:.2f}x (best of {repeats} interleaved)")
    return results


def distance_from_fp32(generator, device) -> dict:
    """Largest deviation of each precision's default perturbation from fp32, in grey levels at budget 8, on a face
    photo and on noise."""
    face = Image.open(ROOT / "gapdiff_core" / "samples" / "obama.jpg").convert("RGB").resize((512, 512))
    x = torch.cat([torch.from_numpy(np.asarray(face)).permute(2, 0, 1)[None].float() / 255,
                   torch.rand(1, 3, 512, 512)])
    ref = Protector(generator, precision="fp32", device=str(device)).perturbation(x)
    out = {}
    for precision in ("bf16", "fp16"):
        try:
            raw = Protector(generator, precision=precision, device=str(device)).perturbation(x)
        except RuntimeError as exc:  # fp16 convolutions are missing on some CPU builds
            print(f"  {precision}: not run ({exc})")
            continue
        out[precision] = float((raw - ref).abs().max() * 8)
        print(f"  {precision}: largest deviation from fp32 {out[precision]:.3f} grey levels at budget 8")
    return out


def big_photo_run(generator_path: str, photo: str, mode: str, precision: str, out_dir: str) -> dict:
    """Decode, protect, write PNG in a fresh process; its peak RSS is VmHWM (ru_maxrss would carry the parent's
    peak across fork + exec on Linux). The Protector is built before the clock starts (with `auto`, its probe
    time is reported apart)."""
    code = f"""
import json, time, sys
sys.path.insert(0, {str(ROOT)!r})
t0 = time.perf_counter()
from gapdiff_core.common.allocator import keep_freed_memory
keep_freed_memory()
from gapdiff_core import Protector
from gapdiff_core.io import load_image, save_image
p = Protector({generator_path!r}, mode={mode!r}, precision={precision!r})
t = time.perf_counter()
img = load_image({photo!r})
save_image({out_dir!r} + "/out_{mode}.png", p.protect_uint8(img.rgb), overwrite=True)  # as `gapdiff protect`
hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM")][0].split()[1]
print(json.dumps({{"seconds": time.perf_counter() - t, "startup": t - t0, "rss_mb": int(hwm) / 1024,
                  "probe": p.probe_seconds, "precision": p.precision}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def authors_forward_seconds(generator: Generator, repeats: int) -> float:
    """Best seconds of one 512x512 fp32 forward of the authors' module as their generate.py runs it (train mode,
    batch 1, channels-first), on the same weights."""
    model = copy.deepcopy(generator).train().float()
    x = torch.rand(1, 3, 512, 512) * 2 - 1
    with torch.no_grad():
        model(x)  # warm-up
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t)
    return min(times)


def marginal_cli_seconds(gpath: str, precision: str, tmp: str, counts=(8, 24)) -> float:
    """Seconds per extra 512x512 photo of `gapdiff protect` (decode, protect, PNG encode; start-up and model
    loading cancel out): two runs on `counts` photos, the difference in time over the difference in photos."""
    from gapdiff_core.cli import main as cli_main

    rng = np.random.default_rng(1)
    seconds = []
    for count in counts:
        folder = Path(tmp) / f"marginal{count}"
        folder.mkdir()
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
        with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
            t = time.perf_counter()
            code = cli_main(["protect", str(folder), "-o", str(folder / "out"), "-g", gpath, "--precision", precision])
            seconds.append(time.perf_counter() - t)
        assert code == 0
    return (seconds[1] - seconds[0]) / (counts[1] - counts[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repeats, 16 photos instead of 64")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--latency-only", action="store_true",
                        help="only the 512x512 table and the distances from fp32 (e.g. to rerun them with "
                             "ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16, oneDNN without AMX, as on AMD Zen 4)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's, one per core)")
    parser.add_argument("--cpu-time", action="store_true",
                        help="time the latency table in CPU time (use with --threads 1 on a host loaded by others)")
    args = parser.parse_args()
    global clock
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cpu_time:
        clock = time.process_time
    keep_freed_memory()
    device = resolve_device(args.device)
    repeats = 5 if args.quick else 11
    torch.manual_seed(0)
    generator = Generator(ngf=64).eval()
    default = default_precision(device)
    print(f"device {device}, default precision {default}, torch threads {torch.get_num_threads()}, latency clock: "
          + ("CPU time" if args.cpu_time else "wall"))
    if device.type == "cpu":
        print(f"CPU: {cpu_name()}; ATen kernels {torch.backends.cpu.get_cpu_capability()}; oneDNN {onednn_isa()}")
        lib = native_kernels.kernels()
        print("per-image normalisation: " + (f"compiled kernels ({lib._name})" if lib else
                                             "PyTorch ops (the kernels could not be built here, or are turned off)"))
    flops = generator_flops(512, 512)
    print(f"generator: {flops / 1e9:.1f} GFLOP per 512x512 image")

    kv = {}
    cores = per_core_gflops() if device.type == "cpu" else []
    if cores:
        print("host check, one-thread bf16 matmul per CPU at once: "
              + ", ".join(f"{g:.0f}" for g in cores) + " GFLOP/s (a slow core means a loaded shared host)")
        kv.update(core_gflops_min=min(cores), core_gflops_max=max(cores))
    for precision in dict.fromkeys([default, "fp32"]):
        results = latency(generator, precision, device, repeats)
        for norm in NORMS:
            for batch, r in results[norm].items():
                tag = f"{precision}_{norm}_batch{batch}"
                kv.update({f"sec_per_image_512_{tag}": r["seconds"], f"photos_per_sec_512_{tag}": 1 / r["seconds"],
                           f"fraction_of_peak_{tag}": r["fraction"]})
        for batch, ratio in results["ratio"].items():
            kv[f"ratio_default_over_folded_{precision}_batch{batch}"] = ratio
    for precision, grey in distance_from_fp32(generator, device).items():
        kv[f"max_grey_vs_fp32_{precision}"] = grey
    if args.latency_only:
        return print_kv(kv)

    with tempfile.TemporaryDirectory() as tmp:
        gpath = os.path.join(tmp, "g.safetensors")
        save_generator(generator, gpath, GeneratorInfo(provenance="random weights (benchmark)"))
        rng = np.random.default_rng(0)
        base = Image.open(ROOT / "gapdiff_core" / "samples" / "obama.jpg").convert("RGB").resize((4032, 3024))
        noisy = np.clip(np.asarray(base, dtype=np.int16) + rng.integers(-6, 7, (3024, 4032, 3)), 0, 255)
        photo = os.path.join(tmp, "phone.jpg")
        Image.fromarray(noisy.astype(np.uint8)).save(photo, quality=92)
        # working: as `gapdiff protect` runs by default (auto precision, its probe included in the RSS);
        # native: in the device's fast precision, the goal (auto keeps fp32 for random weights)
        for mode, precision in (("working", "auto"), ("native", default)):
            r = big_photo_run(gpath, photo, mode, precision, tmp)
            probe = f", auto's probe {r['probe']:.2f} s (before the clock)" if r["probe"] is not None else ""
            print(f"4032x3024 {mode} ({precision} -> {r['precision']}): {r['seconds']:.2f} s end to end "
                  f"(decode+protect+PNG), peak RSS {r['rss_mb']:.0f} MB{probe}")
            kv[f"sec_4032x3024_{mode}"] = r["seconds"]
            kv[f"peak_rss_mb_4032x3024_{mode}"] = r["rss_mb"]
            if r["probe"] is not None:
                kv["auto_probe_sec"] = r["probe"]

        count = 16 if args.quick else 64
        folder = Path(tmp) / "folder"
        folder.mkdir()
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, (683, 512, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
        t = time.perf_counter()
        from gapdiff_core.cli import main as cli_main
        code = cli_main(["protect", str(folder), "-o", os.path.join(tmp, "out"), "-g", gpath, "--batch-size", "8",
                         "--precision", default])
        seconds = time.perf_counter() - t
        assert code == 0
        print(f"folder of {count} photos (512x683 PNG) through `gapdiff protect --precision {default}`: "
              f"{seconds:.1f} s, {count / seconds:.2f} photos/s")
        kv["folder_photos"] = count
        kv["folder_photos_per_sec"] = count / seconds

        if device.type == "cpu":
            authors = authors_forward_seconds(generator, repeats)
            marginal = marginal_cli_seconds(gpath, default, tmp)
            print(f"`gapdiff protect --precision {default}`, per extra 512x512 photo: {marginal:.3f} s; the authors' "
                  f"module, fp32 forward alone: {authors:.3f} s; ratio {marginal / authors:.2f}")
            kv.update(marginal_cli_sec_512=marginal, authors_fp32_forward_sec_512=authors,
                      ratio_marginal_cli_over_authors_forward=marginal / authors)

    kv["peak_rss_mb_this_process"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print_kv(kv)


def print_kv(kv: dict) -> None:
    for key, value in kv.items():
        print(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}")


def cpu_name() -> str:
    """The CPU's model name (Linux), else the platform's processor string."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        import platform
        return platform.processor() or "unknown"


if __name__ == "__main__":
    main()
