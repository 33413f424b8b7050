"""Load tests of `gapdiff serve` on loopback (127.0.0.1 only).

Default: throughput, latency percentiles, batch sizes and 429s at 1/4/16/64 concurrent clients sending 683x512
photos (10% bad inputs mixed in), against the offline Protector throughput measured in the same run. With --ray,
the same against Ray Serve (2 replicas), then one replica is killed under load. Bounded: --requests per level and
--level-timeout seconds.

--hostile: /healthz latency (p50/p99/max, polled every 20 ms from a process of its own) while a 40 MP photo is
protected and hostile multipart bodies arrive (47 MB bodies of one-byte form fields, 400,000 tiny file parts);
goal p99 <= 50 ms.
Bounded: --hostile-bodies bodies, --level-timeout seconds. Needs quiet cores for its numbers.

--memory: the burst of issue 23 (a 16-image batch of flat --side x --side PNGs, then 4 concurrent single
requests of the same file) against a server with its default limits or those given after --serve; prints the
peak RSS against serving.memory's formula and whether the next request succeeds.

    python bench/serve.py                    # single process, a width-16 random generator (2 shared CPU cores)
    python bench/serve.py --ngf 64 --ray     # the paper's width, and Ray Serve
    python bench/serve.py -g G.safetensors --device cuda --precision fp16   # see bench/gpu_serve.sh
    python bench/serve.py --ngf 64 --hostile
    python bench/serve.py --ngf 64 --memory --side 6000 [--serve --max-request-pixels 600000000 ...]

Ends with key=value lines.
"""
from __future__ import annotations

import argparse
import asyncio
import io
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
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


def start_server(args, port: int, ray: bool, flags: list[str] | None = None) -> subprocess.Popen:
    """`gapdiff serve` on 127.0.0.1:port with the throughput run's settings, or with `flags` (and the defaults)."""
    cmd = [sys.executable, "-m", "gapdiff_core.cli", "serve", "-g", str(args.generator), "--port", str(port),
           "--host", "127.0.0.1", "--device", args.device, "--precision", args.precision]
    cmd += flags if flags is not None else ["--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms),
                                            "--max-queue", str(args.max_queue), "--timeout", "120",
                                            "--limit-concurrency", str(2 * max(args.concurrency))]  # no 503 at 64
    if ray:
        cmd += ["--ray", "--replicas", "2", "--num-cpus", "1"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open("/tmp/serve.err", "w"))
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
        stop_server(proc)
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


def hostile_bodies(count: int) -> list[tuple[str, bytes, str]]:
    """(path, body, content type) of `count` hostile multipart bodies: 47 MB of one-byte form fields (to the batch
    endpoint and to /v1/protect), and 400,000 tiny file parts."""
    boundary = "hostile"
    fields = b"".join(f'--{boundary}\r\nContent-Disposition: form-data; name="f{i}"\r\n\r\nx\r\n'.encode()
                      for i in range(10_000))
    fields = fields * (47_000_000 // len(fields)) + f"--{boundary}--\r\n".encode()
    parts = (f'--{boundary}\r\nContent-Disposition: form-data; name="images"; filename="x.png"\r\n\r\nx\r\n'
             .encode() * 400_000) + f"--{boundary}--\r\n".encode()
    kind = f"multipart/form-data; boundary={boundary}"
    cycle = [("/v1/protect/batch", fields, kind), ("/v1/protect", fields, kind), ("/v1/protect/batch", parts, kind)]
    return [cycle[i % len(cycle)] for i in range(count)]


def forty_megapixel_photo() -> bytes:
    """A sample face photo upscaled to 7300 x 5475 (39.97 MP), as a quality-90 JPEG."""
    with Image.open(sorted((ROOT / "gapdiff_core" / "samples").glob("*.jpg"))[0]) as im:
        big = im.convert("RGB").resize((5475, 7300), Image.BICUBIC)
    buffer = io.BytesIO()
    big.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def poll_healthz(url: str, stop, out) -> None:
    """GET /healthz every 20 ms until `stop` is set; put the (sent at, seconds) of every poll on `out`. Runs in its
    own process: polled from the process that sends the hostile bodies, the client's own event loop (writing
    47 MB bodies) delayed the polls as well as the server."""
    import httpx

    polls = []
    with httpx.Client(base_url=url, timeout=30) as c:
        while not stop.is_set():
            start = time.monotonic()
            c.get("/healthz")
            polls.append((start, time.monotonic() - start))
            time.sleep(0.02)
    out.put(polls)


async def hostile(url: str, photo: bytes, bodies: list, timeout: float) -> dict:
    """Poll /healthz every 20 ms from another process (5 s of the idle service first, for reference) while the
    photo is protected and the hostile bodies are sent, two at a time."""
    import multiprocessing

    import httpx

    statuses, hostile_statuses = {}, Counter()

    async def protect(c):
        start = time.perf_counter()
        r = await c.post("/v1/protect", content=photo, headers={"Content-Type": "image/jpeg"})
        statuses.update(status=r.status_code, seconds=time.perf_counter() - start, max_change=r.headers.get(
            "x-gapdiff-max-change"), error=r.text[:200] if r.status_code != 200 else None)

    async def attack(c, queue):
        while queue:
            path, body, kind = queue.pop()
            try:
                r = await c.post(path, content=body, headers={"Content-Type": kind})
                hostile_statuses[f"{r.status_code} {r.json()['error']['kind']}"] += 1
            except httpx.HTTPError as exc:
                hostile_statuses[type(exc).__name__] += 1

    context = multiprocessing.get_context("spawn")
    stop, results = context.Event(), context.Queue()
    poller = context.Process(target=poll_healthz, args=(url, stop, results), daemon=True)
    poller.start()
    await asyncio.sleep(5)
    attack_start = time.monotonic()
    async with httpx.AsyncClient(base_url=url, timeout=timeout) as c:
        tasks = [asyncio.create_task(protect(c))]
        queue = list(bodies)
        tasks += [asyncio.create_task(attack(c, queue)) for _ in range(2)]
        _, unfinished = await asyncio.wait(tasks, timeout=timeout)
        for task in unfinished:  # past --level-timeout: what was measured is reported
            task.cancel()
        await asyncio.gather(*unfinished, return_exceptions=True)
    attack_end = time.monotonic()
    stop.set()
    polls = results.get(timeout=60)
    poller.join(10)
    idle = np.array([t for start, t in polls if start < attack_start]) * 1000
    ms = np.array([t for start, t in polls if attack_start <= start < attack_end]) * 1000
    return {"idle_p50_ms": float(np.percentile(idle, 50)), "idle_p99_ms": float(np.percentile(idle, 99)),
            "polls": len(ms), "healthz_p50_ms": float(np.percentile(ms, 50)),
            "healthz_p99_ms": float(np.percentile(ms, 99)), "healthz_max_ms": float(ms.max()),
            "protect_status": statuses.get("status", "unfinished"),
            "protect_seconds": statuses.get("seconds", math.nan), "protect_error": statuses.get("error"),
            "hostile_unanswered": len(bodies) - sum(hostile_statuses.values()),
            "hostile_answers": dict(hostile_statuses)}


def bench_hostile(args) -> list[str]:
    port = free_port()
    photo = forty_megapixel_photo()
    bodies = hostile_bodies(args.hostile_bodies)
    proc = start_server(args, port, False, args.serve)
    try:
        r = asyncio.run(hostile(f"http://127.0.0.1:{port}", photo, bodies, args.level_timeout))
    finally:
        stop_server(proc)
    print(f"hostile: /healthz p50/p99/max {r['healthz_p50_ms']:.1f}/{r['healthz_p99_ms']:.1f}/"
          f"{r['healthz_max_ms']:.1f} ms over {r['polls']} polls (idle beforehand: p50/p99 {r['idle_p50_ms']:.1f}/"
          f"{r['idle_p99_ms']:.1f} ms); the 40 MP photo: {r['protect_status']} in "
          f"{r['protect_seconds']:.1f} s {r['protect_error'] or ''}; hostile bodies: {r['hostile_answers']}, "
          f"{r['hostile_unanswered']} unanswered; "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    return [f"hostile_{k}={v:.4g}" if isinstance(v, float) else f"hostile_{k}={v}" for k, v in r.items()
            if k != "hostile_answers"] + [f"hostile_load_average={os.getloadavg()[0]:.1f}"]


def bench_memory(args) -> list[str]:
    """The issue's burst against a server process; its peak RSS (VmHWM) against serving.memory's formula."""
    import httpx

    from gapdiff_core.serving.memory import generator_working_memory, peak_memory_bound, process_memory
    from gapdiff_core.serving.settings import load_settings

    given = {"generator": args.generator, "device": args.device, "precision": args.precision}
    flags = iter(args.serve or [])
    given.update((flag.lstrip("-").replace("-", "_"), value) for flag, value in zip(flags, flags))
    settings, server = load_settings(given, environ={})
    generator = generator_working_memory(settings)
    buffer = io.BytesIO()
    Image.new("RGB", (args.side, args.side), (120, 130, 140)).save(buffer, "PNG")
    image = buffer.getvalue()
    port = free_port()
    proc = start_server(args, port, False, args.serve or [])
    try:
        ready = process_memory(proc.pid, "VmRSS")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=args.level_timeout) as c, \
                ThreadPoolExecutor(5) as pool:
            start = time.perf_counter()
            batch = pool.submit(c.post, "/v1/protect/batch",
                                files=[("images", (f"{i}.png", image, "image/png")) for i in range(16)])
            time.sleep(0.5)
            singles = list(pool.map(lambda _: c.post("/v1/protect", content=image), range(4)))
            batch = batch.result()
            seconds = time.perf_counter() - start
            peak = process_memory(proc.pid, "VmHWM")
            after = c.post("/v1/protect", content=image)
            rss_after = process_memory(proc.pid, "VmRSS")
    finally:
        stop_server(proc)
    bound = peak_memory_bound(settings, server, ready, generator)
    protected = batch.json().get("protected") if batch.status_code == 200 else batch.json()["error"]["kind"]
    print(f"memory: {args.side}x{args.side} flat PNG ({len(image):,} bytes); batch of 16: {batch.status_code} "
          f"({protected}), singles {[r.status_code for r in singles]}, in {seconds:.1f} s; ready {ready / 2**30:.2f} "
          f"GiB, generator {generator / 2**30:.2f} GiB, peak {peak / 2**30:.2f} GiB, formula {bound / 2**30:.2f} "
          f"GiB; after: RSS {rss_after / 2**30:.2f} GiB, next request {after.status_code}", flush=True)
    return [f"memory_side={args.side}", f"memory_batch_status={batch.status_code}",
            f"memory_batch_protected={protected}",
            f"memory_singles={','.join(str(r.status_code) for r in singles)}", f"memory_ready_gib={ready / 2**30:.3f}",
            f"memory_generator_gib={generator / 2**30:.3f}", f"memory_peak_gib={peak / 2**30:.3f}",
            f"memory_bound_gib={bound / 2**30:.3f}", f"memory_under_bound={peak <= bound}",
            f"memory_rss_after_gib={rss_after / 2**30:.3f}", f"memory_next_request={after.status_code}"]


def stop_server(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(120)
    except subprocess.TimeoutExpired:
        proc.kill()


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
    p.add_argument("--hostile", action="store_true", help="/healthz latency under hostile multipart load instead")
    p.add_argument("--hostile-bodies", type=int, default=12, help="--hostile: hostile bodies sent in all")
    p.add_argument("--memory", action="store_true", help="peak memory of the issue's burst instead")
    p.add_argument("--side", type=int, default=6000, help="--memory: side of the flat PNGs (default 6000: 36 MP)")
    p.add_argument("--serve", nargs=argparse.REMAINDER,
                   help="--hostile, --memory: the rest of the line are `gapdiff serve` flags (default: its defaults)")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        if not args.generator:
            import torch

            from gapdiff_core import Generator, GeneratorInfo, save_generator

            torch.manual_seed(0)
            args.generator = str(Path(tmp) / f"random-ngf{args.ngf}.safetensors")
            save_generator(Generator(ngf=args.ngf).eval(), args.generator,
                           GeneratorInfo(ngf=args.ngf, demo=True, provenance="bench/serve.py, random weights"))
        if args.hostile or args.memory:
            lines = bench_hostile(args) if args.hostile else bench_memory(args)
            print("\n".join([f"generator={Path(args.generator).name}", *lines]))
            return 0
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
