"""The standalone GAP-Diff web app (`gapdiff app`): builds the queued Blocks and launches them.

Listens on 127.0.0.1 by default, queues work, limits upload size, and makes a public share link only with --share.
Uploads (Gradio's cache) and outputs go to folders only this user can enter; `gapdiff app` also sets the umask
so that every folder and file it writes is 0700 / 0600.
"""
from __future__ import annotations

import argparse
import errno
import os
import socket
import sys
import tempfile
from pathlib import Path

from .settings import SURROGATES_FOLDER

DEFAULT_MODELS_DIR = os.environ.get("GAPDIFF_MODELS_DIR", os.path.join("models", "gapdiff"))
DEFAULT_MAX_MEGAPIXELS = 25  # settings.DEFAULT_MAX_PIXELS: about 1.1 GB per photo at BYTES_PER_PIXEL


def surrogates_dir(args: argparse.Namespace) -> Path:
    """Where local surrogates are looked for besides the models folder: --surrogates-dir, or `checkpoints` beside
    the models folder, where `gapdiff demo-assets` and `gapdiff app --demo` put the tiny one."""
    return Path(getattr(args, "surrogates_dir", None) or Path(args.models_dir).parent / SURROGATES_FOLDER)


def create_app(args: argparse.Namespace):
    """The queued Blocks for `args` (not launched). Gradio's usage analytics stay off unless the environment
    turns them on; its upload cache is a folder only this user can enter, unless GRADIO_TEMP_DIR names one."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from . import UISettings, build_ui
    from .generators import list_generators
    from .uploads import private_dir

    if "GRADIO_TEMP_DIR" not in os.environ:
        uid = os.getuid() if hasattr(os, "getuid") else "user"
        os.environ["GRADIO_TEMP_DIR"] = str(private_dir(Path(tempfile.gettempdir()) / f"gapdiff-gradio-{uid}"))
    from .compat import enable_queue

    max_mp = getattr(args, "max_megapixels", DEFAULT_MAX_MEGAPIXELS)
    if not max_mp > 0:
        raise SystemExit(f"--max-megapixels must be above 0, not {max_mp}")
    settings = UISettings(models_dir=args.models_dir, device=args.device, precision=args.precision,
                          default_budget=args.budget, max_photos=args.max_photos, max_pixels=int(max_mp * 1e6),
                          surrogate_dirs=(args.models_dir, surrogates_dir(args)),
                          preferred_generator=getattr(args, "preferred_generator", None))
    for entry in list_generators(args.models_dir):  # one bad file is named and skipped, not fatal
        if entry.error:
            print(f"gapdiff app: skipped {entry.path.name}: {entry.error}", file=sys.stderr)
    return enable_queue(build_ui(settings), concurrency=1, max_size=args.queue_size)


def serve(args: argparse.Namespace, block: bool = True):
    """Launch the app; returns the Blocks (with `.local_url`) when `block` is False. Gradio's own start-up lines
    (and its hint about share=True, an option this command spells --share) are replaced by one line."""
    from .blocks import PAGE_CSS
    from .compat import launch

    port = args.port or _free_port(args.host)
    _check_port(args.host, port)
    blocks = create_app(args)
    launch(blocks, server_name=args.host, server_port=port, share=bool(args.share),
           max_file_size=args.max_file_size, show_error=True, inbrowser=False, prevent_thread_lock=True,
           allowed_paths=[], quiet=True, css=PAGE_CSS)
    link = f" and {blocks.share_url}" if getattr(blocks, "share_url", None) else ""
    print(f"gapdiff app: open {blocks.local_url}{link} in a browser (Ctrl+C stops the app)", file=sys.stderr)
    if block:
        blocks.block_thread()
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
