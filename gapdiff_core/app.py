"""Standalone GAP-Diff web app: `python -m gapdiff_core.app` or `gapdiff app`.

Listens on 127.0.0.1 by default, queues work, limits upload size, and makes a public share link only with --share.
"""
from __future__ import annotations

import argparse
import errno
import importlib
import os
import socket
import sys
import tempfile
from pathlib import Path

from .commands import options

DEFAULT_MODELS_DIR = os.environ.get("GAPDIFF_MODELS_DIR", "models")
DEFAULT_MAX_MEGAPIXELS = 25  # ui.logic.DEFAULT_MAX_PIXELS: about 1.1 GB per photo at ui.logic.BYTES_PER_PIXEL


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 exposes it to the network)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860; 0 picks a free one)")
    p.add_argument("--models-dir", default=DEFAULT_MODELS_DIR,
                   help="folder with generator checkpoints (.safetensors / .pth); default $GAPDIFF_MODELS_DIR or ./models")
    p.add_argument("--budget", type=options.budget, default=8.0,
                   help="default budget in grey levels (1-255 on the 0-255 scale)")
    p.add_argument("--device", type=options.device, default="auto", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    p.add_argument("--max-file-size", type=options.file_size, default="50mb",
                   help="largest accepted upload, e.g. 50mb (default)")
    p.add_argument("--max-photos", type=int, default=64,
                   help="most photos in one request (Protect; each list of Evaluate)")
    p.add_argument("--max-megapixels", type=float, default=DEFAULT_MAX_MEGAPIXELS,
                   help=f"largest photo accepted, in megapixels (default {DEFAULT_MAX_MEGAPIXELS}); a photo "
                        "needs about 45 bytes of memory per pixel besides the generator")
    p.add_argument("--queue-size", type=int, default=64, help="most requests waiting in the queue")
    p.add_argument("--share", action="store_true", help="also create a public gradio.live link (off by default)")


def create_app(args: argparse.Namespace):
    """The queued Blocks for `args` (not launched). Gradio's usage analytics stay off unless the environment
    turns them on; its upload cache is a folder only this user can enter, unless GRADIO_TEMP_DIR names one."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from .ui import UISettings, build_ui
    from .ui.logic import list_generators, private_dir

    if "GRADIO_TEMP_DIR" not in os.environ:
        uid = os.getuid() if hasattr(os, "getuid") else "user"
        os.environ["GRADIO_TEMP_DIR"] = str(private_dir(Path(tempfile.gettempdir()) / f"gapdiff-gradio-{uid}"))
    from .ui.compat import enable_queue

    max_mp = getattr(args, "max_megapixels", DEFAULT_MAX_MEGAPIXELS)
    if not max_mp > 0:
        raise SystemExit(f"--max-megapixels must be above 0, not {max_mp}")
    settings = UISettings(models_dir=args.models_dir, device=args.device, precision=args.precision,
                          default_budget=args.budget, max_photos=args.max_photos, max_pixels=int(max_mp * 1e6))
    for entry in list_generators(args.models_dir):  # one bad file is named and skipped, not fatal
        if entry.error:
            print(f"gapdiff app: skipped {entry.path.name}: {entry.error}", file=sys.stderr)
    return enable_queue(build_ui(settings), concurrency=1, max_size=args.queue_size)


def serve(args: argparse.Namespace, block: bool = True):
    """Launch the app; returns the Blocks (with `.local_url`) when `block` is False."""
    from .ui.compat import launch

    port = args.port or _free_port(args.host)
    _check_port(args.host, port)
    blocks = create_app(args)
    launch(blocks, server_name=args.host, server_port=port, share=bool(args.share),
           max_file_size=args.max_file_size, show_error=True, inbrowser=False, prevent_thread_lock=not block,
           allowed_paths=[], show_api=True)
    return blocks


class PortError(OSError):
    """The address cannot be listened on; the message says why and what to do."""


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _check_port(host: str, port: int) -> None:
    """Refuse a port that is taken (or an address not on this machine) before any model is loaded."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family) as s:
            s.bind((host, port))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise PortError(f"port {port} on {host} is already in use (another gapdiff app or webui?); "
                            "stop that program, or pass --port N, or --port 0 for a free one") from None
        raise PortError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def run(args: argparse.Namespace) -> int:
    try:
        importlib.import_module("gradio")  # installed and importable (the app extra)
    except ImportError:
        print("gapdiff app needs Gradio: pip install 'gapdiff[app]'", file=sys.stderr)
        return 2
    try:
        serve(args, block=True)
    except PortError as exc:
        print(f"gapdiff app: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gapdiff_core.app", description=__doc__)
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
