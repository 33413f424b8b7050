"""`gapdiff serve`: the protection service over HTTP (one process on uvicorn, or Ray Serve replicas)."""
from __future__ import annotations

import sys

HELP = "serve protection over HTTP (dynamic batching; one process or Ray Serve)"
DESCRIPTION = """Serve protection over HTTP: POST a photo, get it back protected.

  POST /v1/protect         one image, as the raw body or a multipart 'image' field; query or form fields
                           budget, mode (working|native), format (png|webp|jpg; png default, lossless).
                           The protected image comes back with X-Gapdiff-Max-Change / -PSNR / -Demo headers.
  POST /v1/protect/batch   several multipart files; JSON answer with each image (base64) or its error
  GET  /healthz /readyz /metrics (Prometheus) /docs (OpenAPI)

Requests of one image size that arrive within --max-wait-ms run through the generator together (up to
--max-batch); each result is identical to protecting the image alone. A full queue answers 429 with
Retry-After. Nothing is written to disk. Set the environment variable named by --api-key-env (default
GAPDIFF_API_KEY) to require 'X-API-Key: KEY'. SIGTERM stops accepting, finishes what is in flight, then exits.

Binds 127.0.0.1 unless --host says otherwise. --ray runs the same app on Ray Serve (`pip install gapdiff[ray]`):
--replicas N, --num-gpus per replica, --address to join a cluster (see docs/serving.md).

Budgets are L-infinity bounds in grey levels on the 0-255 scale (default: the checkpoint's, 8)."""


def add_arguments(p) -> None:
    p.add_argument("-g", "--generator", required=True, metavar="CKPT",
                   help="generator checkpoint: official .pth or gapdiff .safetensors")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--budget", type=float, default=None, help="default budget in grey levels (checkpoint's)")
    p.add_argument("--mode", choices=("working", "native"), default="working", help="default mode")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps (default auto)")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    p.add_argument("--max-batch", type=int, default=8, help="most images in one generator batch (default 8)")
    p.add_argument("--max-wait-ms", type=float, default=10.0,
                   help="how long the first request of a batch waits for others (default 10)")
    p.add_argument("--max-queue", type=int, default=64,
                   help="requests waiting beyond which the service answers 429 (default 64)")
    p.add_argument("--timeout", type=float, default=60.0, help="per-request timeout in seconds (default 60)")
    p.add_argument("--max-body-mb", type=float, default=50.0, help="largest request body in MiB (default 50)")
    p.add_argument("--max-pixels", type=int, default=40_000_000,
                   help="largest image in pixels, checked from the header before decoding (default 40 MP)")
    p.add_argument("--max-batch-images", type=int, default=16, help="most images in one batch request")
    p.add_argument("--api-key-env", default="GAPDIFF_API_KEY",
                   help="environment variable holding the API key (no key required when it is unset)")
    p.add_argument("--graceful-timeout", type=float, default=30.0,
                   help="seconds to finish in-flight requests after SIGTERM (default 30)")
    p.add_argument("--ray", action="store_true", help="serve on Ray Serve instead of one uvicorn process")
    p.add_argument("--replicas", type=int, default=1, help="--ray: number of replicas (default 1)")
    p.add_argument("--num-gpus", type=float, default=0.0, help="--ray: GPUs per replica (default 0)")
    p.add_argument("--num-cpus", type=float, default=1.0, help="--ray: CPUs per replica (default 1)")
    p.add_argument("--address", default=None,
                   help="--ray: address of an existing Ray cluster (default: start a local one on loopback)")


def settings_from(args):
    from ..serving import ServiceSettings

    return ServiceSettings(generator=args.generator, device=args.device, precision=args.precision,
                           budget=args.budget, mode=args.mode, max_batch=args.max_batch,
                           max_wait_ms=args.max_wait_ms, max_queue=args.max_queue, timeout_s=args.timeout,
                           max_body_bytes=int(args.max_body_mb * 2 ** 20), max_pixels=args.max_pixels,
                           max_batch_images=args.max_batch_images, api_key_env=args.api_key_env)


def run(args) -> int:
    from pathlib import Path

    if not Path(args.generator).is_file():
        print(f"gapdiff serve: {args.generator}: generator checkpoint not found", file=sys.stderr)
        return 2
    try:
        settings = settings_from(args)
        if args.ray:
            from ..serving.ray_serve import run_ray_serve
            run_ray_serve(settings, host=args.host, port=args.port, replicas=args.replicas,
                          num_gpus=args.num_gpus, num_cpus=args.num_cpus, address=args.address)
        else:
            from ..serving import run_uvicorn
            run_uvicorn(settings, host=args.host, port=args.port, graceful_timeout_s=args.graceful_timeout)
    except ImportError as exc:
        extra = "ray" if args.ray else "serve"
        print(f"gapdiff serve: {exc}; install the '{extra}' extra: pip install 'gapdiff[{extra}]'", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"gapdiff serve: {exc}", file=sys.stderr)
        return 2
    return 0
