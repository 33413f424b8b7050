"""`gapdiff app`: the web app (Protect, Robustness, Evaluate, About) on this machine."""
from __future__ import annotations

HELP = "start the GAP-Diff web app (Gradio) on 127.0.0.1"
DESCRIPTION = """Start the GAP-Diff web app in your browser: protect photos (download lossless PNGs, one by one
or as a zip), check how much protection survives JPEG, and evaluate a test attack.

Listens on 127.0.0.1 (this machine only) unless --host says otherwise; no public link unless --share.
Generators are read from --models-dir (default $GAPDIFF_MODELS_DIR or ./models); demo generators are labelled.
Budgets are L-infinity bounds in grey levels on the 0-255 scale. Needs: pip install 'gapdiff[app]'."""


def add_arguments(p) -> None:
    from ..app import add_arguments as app_arguments

    app_arguments(p)


def run(args) -> int:
    from ..app import run as run_app

    return run_app(args)
