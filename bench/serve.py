"""Load test of `gapdiff serve` on loopback: throughput, latency percentiles, batch sizes and 429s at 1/4/16/64
concurrent clients sending 683x512 photos (10% bad inputs mixed in), against the offline Protector throughput
measured in the same run. With --ray, the same against Ray Serve (2 replicas), then one replica is killed under
load. Bounded: --requests per level and --level-timeout seconds.

    python bench/serve.py                    # single process, a width-16 random generator (2 shared CPU cores)
    python bench/serve.py --ngf 64 --ray     # the paper's width, and Ray Serve
    python bench/serve.py -g G.safetensors --device cuda --precision fp16   # see bench/gpu_serve.sh

Ends with key=value lines.
"""
from __future__ import annotations

import argparse
import asyncio
import io
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

REPLICA_PROCESS = "ServeReplica:gapdiff:protect"


def photos(count: int, size=(683, 512)) -> list[np.ndarray]:
    """Sample face photos cropped and resized to size (H, W), cycled with small shifts so none repeats."""
    base = []
    for path in sorted((ROOT / "gapdiff_core" / "samples").glob("*.jpg")):
        with Image.open(path) as im:
            base.append(np.asarray(im.convert("RGB").resize((size[1], size[0]), Image.BICUBIC)))
    return [np.roll(base[i % len(base)], i // len(base), axis=1) for i in range(count)]


def png(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def offline_throughput(args, images: list[np.ndarray]) -> float:
    """Photos per second of Protector.protect_uint8 in batches of --max-batch (what `gapdiff protect` runs)."""
    from gapdiff_core.model.protector import Protector

    protector = Protector(args.generator, device=args.device, precision=args.precision, batch_size=args.max_batch)
    batch = np.stack(images[:args.max_batch])
    protector.protect_uint8(batch)  # warm-up
    n, start = 0, time.perf_counter()
    while n < args.offline_photos:
        protector.protect_uint8(batch)
        n += len(batch)
    return n / (time.perf_counter() - start)


def start_server(args, port: int, ray: bool) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "gapdiff_core.cli", "serve", "-g", str(args.generator), "--port", str(port),
           "--device", args.device, "--precision", args.precision, "--max-batch", str(args.max_batch),
           "--max-wait-ms", str(args.max_wait_ms), "--max-queue", str(args.max_queue), "--timeout", "120"]
    if ray:
        cmd += ["--ray", "--replicas", "2", "--num-cpus", "1"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import httpx

    deadline = time.monotonic() + (600 if ray else 120)
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gapdiff serve exited with {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError("gapdiff serve did not become ready")


async def load(url: str, bodies: list[bytes], bad: set[int], concurrency: int, timeout: float,
               during=None) -> dict:
    """Send every body once with `concurrency` clients; latency, status and batch size per request."""
    import httpx

    queue = list(range(len(bodies)))[::-1]
    records = []

    async def client(c: httpx.AsyncClient):
        while queue:
            i = queue.pop()
            start = time.perf_counter()
            try:
                r = await c.post("/v1/protect", content=bodies[i], headers={"Content-Type": "image/png"})
                status, size = r.status_code, int(r.headers.get("x-gapdiff-batch-size", 0))
            except httpx.HTTPError as exc:
                status, size = type(exc).__name__, 0
            records.append((i, status, time.perf_counter() - start, size))

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as c:
        start = time.perf_counter()
        tasks = [asyncio.create_task(client(c)) for _ in range(concurrency)]
        if during is not None:
            await asyncio.sleep(1.0)
            await asyncio.to_thread(during)
        await asyncio.wait_for(asyncio.gather(*tasks), timeout)
        seconds = time.perf_counter() - start
    good = [r for r in records if r[0] not in bad]
    ok = [r for r in good if r[1] == 200]
    latencies = np.array([r[2] for r in ok]) * 1000 if ok else np.array([float("nan")])
    return {"seconds": seconds, "ok": len(ok), "throughput": len(ok) / seconds,
            "p50_ms": float(np.percentile(latencies, 50)), "p95_ms": float(np.percentile(latencies, 95)),
            "p99_ms": float(np.percentile(latencies, 99)),
            "status_429": sum(r[1] == 429 for r in records),
            "good_failed": sum(r[1] not in (200, 429) for r in good),
            "bad_answered_4xx": sum(isinstance(r[1], int) and 400 <= r[1] < 500 and r[1] != 429
                                    for r in records if r[0] in bad), "bad": len(bad),
            "batch_sizes": dict(sorted(Counter(r[3] for r in ok).items())),
            "errors": dict(Counter(str(r[1]) for r in records if r[1] not in (200, 429)))}


def replica_pids() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes().startswith(f"ray::{REPLICA_PROCESS}".encode()):
                    pids.append(int(entry.name))
            except OSError:
                pass
    return sorted(pids)


def bench_service(args, label: str, ray: bool, bodies, bad, offline) -> list[str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    lines = []
    proc = start_server(args, port, ray)
    try:
        n = min(len(bodies), args.requests)
        asyncio.run(load(url, bodies[:8], set(), 2, args.level_timeout))  # warm-up
        for c in args.concurrency:
            r = asyncio.run(load(url, bodies[:n], {i for i in bad if i < n}, c, args.level_timeout))
            print(f"{label} c={c}: {r['throughput']:.2f} photos/s ({100 * r['throughput'] / offline:.0f}% of "
                  f"offline), p50/p95/p99 {r['p50_ms']:.0f}/{r['p95_ms']:.0f}/{r['p99_ms']:.0f} ms, "
                  f"429s {r['status_429']}, good failed {r['good_failed']}, bad answered 4xx "
                  f"{r['bad_answered_4xx']}/{r['bad']}, batch sizes {r['batch_sizes']}, errors {r['errors']}",
                  flush=True)
            lines += [f"{label}_c{c}_{k}={v:.4g}" for k, v in r.items() if isinstance(v, float)]
            lines += [f"{label}_c{c}_{k}={r[k]}" for k in ("status_429", "good_failed", "bad_answered_4xx", "ok")]
            lines.append(f"{label}_c{c}_batch_sizes={','.join(f'{k}:{v}' for k, v in r['batch_sizes'].items())}")
            lines.append(f"{label}_c{c}_relative_to_offline={r['throughput'] / offline:.3f}")
        if ray:
            lines += kill_replica_under_load(args, url, bodies[:n], bad)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
    return lines


def kill_replica_under_load(args, url, bodies, bad) -> list[str]:
    """SIGKILL one replica 1 s into a 16-client load; every request must end (answered or failed), none hang."""
    before = replica_pids()
    killed = []

    def kill():
        if before:
            os.kill(before[0], signal.SIGKILL)
            killed.append(before[0])

    start = time.monotonic()
    r = asyncio.run(load(url, bodies, {i for i in bad if i < len(bodies)}, 16, args.level_timeout, during=kill))
    back = None
    while time.monotonic() - start < 300:
        pids = replica_pids()
        if len(pids) == len(before) and killed and killed[0] not in pids:
            back = time.monotonic() - start
            break
        time.sleep(1)
    print(f"ray kill: replicas {before} -> killed {killed}; {r['ok']} ok, good failed {r['good_failed']} "
          f"{r['errors']}, all {len(bodies)} requests ended in {r['seconds']:.1f} s; replica back after "
          f"{back if back is None else round(back, 1)} s", flush=True)
    return [f"ray_kill_ok={r['ok']}", f"ray_kill_good_failed={r['good_failed']}",
            f"ray_kill_all_ended_s={r['seconds']:.1f}", f"ray_kill_replica_back_s={back if back else 'never'}"]


def main() -> int:
    from gapdiff_core.model.protector import PRECISION_CHOICES

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-g", "--generator", help="checkpoint (default: a random generator of width --ngf)")
    p.add_argument("--ngf", type=int, default=16, help="width of the random generator (paper: 64; default 16)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="auto", choices=PRECISION_CHOICES)
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--max-wait-ms", type=float, default=10)
    p.add_argument("--max-queue", type=int, default=48)
    p.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4, 16, 64])
    p.add_argument("--requests", type=int, default=96, help="requests per concurrency level")
    p.add_argument("--offline-photos", type=int, default=48)
    p.add_argument("--bad-fraction", type=float, default=0.1)
    p.add_argument("--level-timeout", type=float, default=300)
    p.add_argument("--ray", action="store_true", help="also Ray Serve with 2 replicas, and a replica kill")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        if not args.generator:
            import torch

            from gapdiff_core import Generator, GeneratorInfo, save_generator

            torch.manual_seed(0)
            args.generator = str(Path(tmp) / f"random-ngf{args.ngf}.safetensors")
            save_generator(Generator(ngf=args.ngf).eval(), args.generator,
                           GeneratorInfo(ngf=args.ngf, demo=True, provenance="bench/serve.py, random weights"))
        images = photos(args.requests)
        rng = np.random.default_rng(0)
        bad = set(rng.choice(len(images), int(round(args.bad_fraction * len(images))), replace=False).tolist())
        bodies = [b"this is not an image" if i in bad else png(im) for i, im in enumerate(images)]
        offline = offline_throughput(args, images)
        print(f"offline Protector: {offline:.2f} photos/s (683x512, batch {args.max_batch}, generator width "
              f"{args.ngf if 'random' in str(args.generator) else 'from checkpoint'})", flush=True)
        lines = [f"offline_photos_per_s={offline:.4g}", f"generator={Path(args.generator).name}",
                 f"requests_per_level={args.requests}", f"bad_requests={len(bad)}"]
        lines += bench_service(args, "single", False, bodies, bad, offline)
        if args.ray:
            lines += bench_service(args, "ray", True, bodies, bad, offline)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
