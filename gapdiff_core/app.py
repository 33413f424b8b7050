"""Standalone GAP-Diff web app: `python -m gapdiff_core.app` or `gapdiff app`.

Listens on 127.0.0.1 by default, queues work, limits upload size, and makes a public share link only with --share.
"""
from __future__ import annotations

import argparse
import os
import sys

DEFAULT_MODELS_DIR = os.environ.get("GAPDIFF_MODELS_DIR", "models")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 exposes it to the network)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860; 0 picks a free one)")
    p.add_argument("--models-dir", default=DEFAULT_MODELS_DIR,
                   help="folder with generator checkpoints (.safetensors / .pth); default $GAPDIFF_MODELS_DIR or ./models")
    p.add_argument("--budget", type=float, default=8.0, help="default budget in grey levels (0-255 scale)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    p.add_argument("--max-file-size", default="50mb", help="largest accepted upload, e.g. 50mb (default)")
    p.add_argument("--max-photos", type=int, default=64, help="most photos protected in one request")
    p.add_argument("--queue-size", type=int, default=64, help="most requests waiting in the queue")
    p.add_argument("--share", action="store_true", help="also create a public gradio.live link (off by default)")


def create_app(args: argparse.Namespace):
    """The queued Blocks for `args` (not launched). Gradio's usage analytics stay off unless the environment
    turns them on."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from .ui import UISettings, build_ui
    from .ui.compat import enable_queue

    settings = UISettings(models_dir=args.models_dir, device=args.device, precision=args.precision,
                          default_budget=args.budget, max_photos=args.max_photos)
    return enable_queue(build_ui(settings), concurrency=1, max_size=args.queue_size)


def serve(args: argparse.Namespace, block: bool = True):
    """Launch the app; returns the Blocks (with `.local_url`) when `block` is False."""
    from .ui.compat import launch

    blocks = create_app(args)
    launch(blocks, server_name=args.host, server_port=args.port or _free_port(args.host), share=bool(args.share),
           max_file_size=args.max_file_size, show_error=True, inbrowser=False, prevent_thread_lock=not block,
           allowed_paths=[], show_api=True)
    return blocks


def _free_port(host: str) -> int:
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def run(args: argparse.Namespace) -> int:
    try:
        import gradio  # noqa: F401
    except ImportError:
        print("gapdiff app needs Gradio: pip install 'gapdiff[app]'", file=sys.stderr)
        return 2
    serve(args, block=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gapdiff_core.app", description=__doc__)
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
