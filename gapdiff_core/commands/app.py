"""`gapdiff app`: the web app (Protect, Robustness, Evaluate, About) on this machine."""
from __future__ import annotations

import importlib
import os
import sys

from ..model.protector import PRECISION_CHOICES
from . import options

PRIVATE_UMASK = 0o077  # folders 0700, files 0600
HELP = "start the GAP-Diff web app (Gradio) on 127.0.0.1"
DESCRIPTION = """Start the GAP-Diff web app in your browser: protect photos (download lossless PNGs, one by one
or as a zip), check how much protection survives JPEG, and evaluate a test attack.

First time? `gapdiff app --demo` makes (or reuses) a demo generator and the tiny surrogate model and opens the
app ready to protect; demo models show how it works and protect nothing real.

Listens on 127.0.0.1 (this machine only) unless --host says otherwise; no public link unless --share.
Generators are read from --models-dir (default $GAPDIFF_MODELS_DIR or models/gapdiff); demo generators are
labelled. Local surrogates for the Robustness tab are read from the models folder and --surrogates-dir.
Budgets are L-infinity bounds in grey levels on the 0-255 scale. Needs: pip install 'gapdiff[app]'."""


def add_arguments(p) -> None:
    from ..ui.app import DEFAULT_MAX_MEGAPIXELS, DEFAULT_MODELS_DIR

    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 exposes it to the network)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860; 0 picks a free one)")
    p.add_argument("--models-dir", default=DEFAULT_MODELS_DIR,
                   help="folder with generator checkpoints (.safetensors / .pth); default $GAPDIFF_MODELS_DIR or "
                        "models/gapdiff")
    p.add_argument("--surrogates-dir", default=None,
                   help="folder with surrogate models for the Robustness tab (default: checkpoints/ beside the "
                        "models folder, where --demo puts the tiny one)")
    p.add_argument("--demo", action="store_true",
                   help="make (first time: a minute of training plus its set-up) or reuse the demo generator and "
                        "the tiny surrogate, and open the app with them (DEMO models: they protect nothing real)")
    p.add_argument("--budget", type=options.budget, default=8.0,
                   help="default budget in grey levels (1-255 on the 0-255 scale)")
    p.add_argument("--device", type=options.device, default="auto", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--precision", default="auto", choices=PRECISION_CHOICES)
    p.add_argument("--max-file-size", type=options.file_size, default="50mb",
                   help="largest accepted upload, e.g. 50mb (default)")
    p.add_argument("--max-photos", type=int, default=64,
                   help="most photos in one request (Protect; each list of Evaluate)")
    p.add_argument("--max-megapixels", type=float, default=DEFAULT_MAX_MEGAPIXELS,
                   help=f"largest photo accepted, in megapixels (default {DEFAULT_MAX_MEGAPIXELS}); a photo "
                        "needs about 45 bytes of memory per pixel besides the generator")
    p.add_argument("--queue-size", type=int, default=64, help="most requests waiting in the queue")
    p.add_argument("--share", action="store_true", help="also create a public gradio.live link (off by default)")


def run(args) -> int:
    try:
        importlib.import_module("gradio")  # installed and importable (the app extra)
    except ImportError:
        print("gapdiff app needs Gradio: pip install 'gapdiff[app]'", file=sys.stderr)
        return 2
    from ..ui.app import serve

    os.umask(os.umask(PRIVATE_UMASK) | PRIVATE_UMASK)  # uploads, Gradio's cache and outputs: this user's only
    if args.demo:
        args.preferred_generator = prepare_demo(args)
    serve(args, block=True)  # a busy port is a PortError (an OSError): one line, from gapdiff_core.cli
    return 0


def prepare_demo(args) -> str:
    """Make (or reuse) the demo generator in the models folder and the tiny surrogate in the surrogates folder;
    returns the demo generator's file name, the one the page opens with."""
    from pathlib import Path

    from ..ui.app import surrogates_dir
    from .demo_assets import GENERATOR_FILE, write_demo_models

    written, kept = write_demo_models(Path(args.models_dir), surrogates_dir(args))
    for path in written:
        print(f"gapdiff app: wrote {path} (DEMO model: protects nothing real)", file=sys.stderr)
    for path in kept:
        print(f"gapdiff app: using {path} (DEMO model: protects nothing real)", file=sys.stderr)
    return GENERATOR_FILE
