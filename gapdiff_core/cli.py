"""`gapdiff` console script: one sub-command per module in `gapdiff_core.commands`.

Each command module defines `HELP` (one line), `DESCRIPTION` (the --help text), `add_arguments(parser)` and
`run(args) -> int` (the exit code). Heavy imports happen inside `run`, so `gapdiff --help` stays fast.
A user mistake that reaches here (a ValueError or OSError: a bad value, a missing or unreadable file, a busy port)
is one line on stderr and exit code 2; `--debug` shows its full traceback and the debug log instead.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from .common.allocator import keep_freed_memory

COMMANDS = ("protect", "compress", "convert", "info", "demo", "demo_assets", "app", "attack", "train", "evaluate",
            "serve", "export", "robustness")
ALIASES = {"demo_assets": ["comfyui-demo-assets"]}  # the earlier name, kept for existing instructions
# Short batch commands whose repeated generator passes gain from keeping freed memory (see allocator.py); long-running
# ones (app, serve, train) keep glibc's defaults, which hand freed memory back to the system.
KEEP_FREED_MEMORY = ("protect", "compress")

DEBUG_HELP = "show the full traceback of an error and the debug log (default: one line per error)"
BUDGET_UNITS = ("Budgets are L-infinity bounds in grey levels on the 0-255 scale: 8 means no pixel moves by more "
                "than 8/255 (the paper's noise_budget=16 on [-1, 1]).")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gapdiff",
        description="Protect face photos against DreamBooth-style deepfakes with GAP-Diff (NDSS 2025): an invisible, "
                    "JPEG-robust perturbation computed in one forward pass of a trained generator. " + BUDGET_UNITS,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    from . import __version__
    parser.add_argument("--version", action="version", version=f"gapdiff {__version__}")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f".commands.{name}", __package__)
        p = sub.add_parser(name.replace("_", "-"), help=module.HELP, description=module.DESCRIPTION,
                           aliases=ALIASES.get(name, []), formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
        p.set_defaults(run=module.run, command=name.replace("_", "-"))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    if args.command in KEEP_FREED_MEMORY:
        keep_freed_memory()
    safe_console()
    if args.debug:
        logging.basicConfig(level=logging.DEBUG, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError) as exc:
        if args.debug:
            raise
        print(f"gapdiff {args.command}: {exc}\n(gapdiff {args.command} --debug ... shows the full traceback)",
              file=sys.stderr)
        return 2


def safe_console() -> None:
    """Let stdout/stderr print any file name: characters the console's encoding lacks (an ASCII console, a
    non-UTF-8 byte name) are written as backslash escapes instead of aborting the batch with UnicodeEncodeError."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            try:
                stream.reconfigure(errors="backslashreplace")
            except (ValueError, OSError):  # a stream that cannot be reconfigured (closed, or already written)
                pass


if __name__ == "__main__":
    sys.exit(main())
