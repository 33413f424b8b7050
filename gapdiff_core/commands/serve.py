"""`gapdiff serve`: the protection service over HTTP (one process on uvicorn, or Ray Serve replicas)."""
from __future__ import annotations

import sys

from ..model.protector import MODES, PRECISION_CHOICES

HELP = "serve protection over HTTP (dynamic batching; one process or Ray Serve)"
DESCRIPTION = """Serve protection over HTTP: POST a photo, get it back protected.

  POST /v1/protect         one image, as the raw body or a multipart 'image' field; query or form fields
                           budget, mode (working|native), format (png|webp|jpg; png default, lossless).
                           The protected image comes back with X-Gapdiff-Max-Change / -PSNR / -Demo headers.
  POST /v1/protect/batch   several multipart files; JSON answer with each image (base64) or its error
  GET  /healthz /readyz /metrics (Prometheus) /docs (OpenAPI)

Requests of one image size that arrive within --max-wait-ms run through the generator together (up to
--max-batch and --max-batch-pixels); each result is identical to protecting the image alone. Memory is bounded
by the settings: images are admitted by the pixel counts their headers declare (--max-request-pixels: 413;
--max-queue-pixels or --max-queue: 429 with Retry-After) and decoded only when their batch runs
(docs/serving.md states the peak as a formula of the settings). Nothing is written to disk. Set the
environment variable named by --api-key-env (default GAPDIFF_API_KEY) to require 'X-API-Key: KEY'. SIGTERM
stops accepting, finishes what is in flight (past --graceful-timeout: a JSON 503), then exits.

Binds 127.0.0.1 unless --host says otherwise. --ray runs the same app on Ray Serve (`pip install gapdiff[ray]`):
--replicas N, --num-gpus per replica, --address to join a cluster (see docs/serving.md).

Every option can also come from an environment variable GAPDIFF_SERVE_<OPTION> (e.g. GAPDIFF_SERVE_MAX_BATCH=16)
or a YAML file (--config serve.yaml, or GAPDIFF_SERVE_CONFIG; keys as the options: max_batch: 16); a flag wins
over the environment, which wins over the file (docs/serving.md).

Budgets are L-infinity bounds in grey levels on the 0-255 scale (default: the checkpoint's, 8)."""


def add_arguments(p) -> None:
    # Defaults are None ("not given"): each setting then comes from the environment, the config file or
    # serving.settings' defaults, which the help states.
    p.add_argument("--config", default=None, metavar="YAML",
                   help="settings file (keys as these options, e.g. max_batch: 16); flags and GAPDIFF_SERVE_* "
                        "environment variables override it")
    p.add_argument("-g", "--generator", default=None, metavar="CKPT",
                   help="generator checkpoint: official .pth or gapdiff .safetensors (required here, in the "
                        "environment or in the config)")
    p.add_argument("--host", default=None, help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=None, help="port (default 8000)")
    # Values are checked by serving.settings, as those from the environment and the YAML file: one-line errors.
    p.add_argument("--budget", default=None,
                   help="default and largest budget in grey levels, 1-255 (default: the checkpoint's)")
    p.add_argument("--mode", choices=MODES, default=None, help="default mode (default working)")
    p.add_argument("--device", default=None,
                   help="auto | cpu | cuda | cuda:N | mps (default auto)")
    p.add_argument("--precision", choices=PRECISION_CHOICES, default=None, help="generator precision (default auto)")
    p.add_argument("--max-batch", type=int, default=None, help="most images in one generator batch (default 8)")
    p.add_argument("--max-wait-ms", type=float, default=None,
                   help="how long the first request of a batch waits for others (default 10)")
    p.add_argument("--max-queue", type=int, default=None,
                   help="requests waiting beyond which the service answers 429 (default 64)")
    p.add_argument("--timeout", type=float, default=None, help="per-request timeout in seconds (default 60)")
    p.add_argument("--max-body-mb", type=float, default=None, help="largest request body in MiB (default 50)")
    p.add_argument("--max-pixels", type=int, default=None,
                   help="largest image in pixels, checked from the header before decoding (default 40 MP)")
    p.add_argument("--max-batch-images", type=int, default=None, help="most images in one batch request (default 16)")
    p.add_argument("--max-request-pixels", type=int, default=None,
                   help="most pixels of all images of one request, from their headers; 413 beyond (default 80 MP)")
    p.add_argument("--max-queue-pixels", type=int, default=None,
                   help="most pixels of all images admitted and not yet answered; 429 beyond (default 160 MP)")
    p.add_argument("--max-batch-pixels", type=int, default=None,
                   help="most pixels in one generator batch (one image at least; default 40 MP)")
    p.add_argument("--body-timeout", type=float, default=None,
                   help="seconds to receive a request's whole body; 408 beyond (default 30)")
    p.add_argument("--header-timeout", type=float, default=None,
                   help="seconds for a connection to send a request's headers before it is closed (default 10)")
    p.add_argument("--keep-alive-timeout", type=int, default=None,
                   help="seconds an idle keep-alive connection stays open (default 5)")
    p.add_argument("--limit-concurrency", type=int, default=None,
                   help="most connections and requests at once; 503 beyond (default 32)")
    p.add_argument("--max-header-kb", type=int, default=None, help="largest request head in KiB (default 64)")
    p.add_argument("--api-key-env", default=None,
                   help="environment variable holding the API key (default GAPDIFF_API_KEY; no key required when "
                        "it is unset)")
    p.add_argument("--graceful-timeout", type=float, default=None,
                   help="seconds to finish in-flight requests after SIGTERM (default 30)")
    p.add_argument("--ray", action="store_true", default=None,
                   help="serve on Ray Serve instead of one uvicorn process")
    p.add_argument("--replicas", type=int, default=None, help="--ray: number of replicas (default 1)")
    p.add_argument("--num-gpus", type=float, default=None, help="--ray: GPUs per replica (default 0)")
    p.add_argument("--num-cpus", type=float, default=None, help="--ray: CPUs per replica (default 1)")
    p.add_argument("--address", default=None,
                   help="--ray: address of an existing Ray cluster (default: start a local one on loopback)")


def run(args) -> int:
    from pathlib import Path

    try:
        from ..serving.settings import NAMES, SettingsError, api_key, load_settings
    except ImportError as exc:
        print(f"gapdiff serve: {exc}; install the 'serve' extra: pip install 'gapdiff[serve]'", file=sys.stderr)
        return 2
    try:
        settings, server = load_settings({name: getattr(args, name) for name in NAMES}, config=args.config)
        api_key(settings)
    except SettingsError as exc:
        print(f"gapdiff serve: {exc}", file=sys.stderr)
        return 2
    if not Path(settings.generator).is_file():
        print(f"gapdiff serve: {settings.generator}: generator checkpoint not found", file=sys.stderr)
        return 2
    try:
        if server.ray:
            from ..serving.ray_serve import run_ray_serve
            run_ray_serve(settings, server)
        else:
            from ..serving import run_uvicorn
            run_uvicorn(settings, server)
    except ImportError as exc:
        extra = "ray" if server.ray else "serve"
        print(f"gapdiff serve: {exc}; install the '{extra}' extra: pip install 'gapdiff[{extra}]'", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"gapdiff serve: {exc}", file=sys.stderr)
        return 2
    return 0
