"""Checked command-line values shared by the commands: a bad value is an argparse error that names the option
(exit code 2), never a traceback later."""
from __future__ import annotations

import argparse

from ..common.budget import BudgetError, check_budget
from ..common.devices import NotADevice, check_device


def budget(text: str) -> float:
    """An L-infinity budget in grey levels (common.budget's rule: 1-255)."""
    try:
        return check_budget(text, "the budget")
    except BudgetError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def quality(text: str) -> int:
    """A JPEG/WebP quality, 1-100."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number 1-100") from None
    if not 1 <= value <= 100:
        raise argparse.ArgumentTypeError(f"{value} is outside 1-100")
    return value


def device(text: str) -> str:
    """auto, cpu, cuda, cuda:N or mps, refused when this machine lacks it (:func:`common.devices.check_device`)."""
    try:
        return check_device(text)
    except NotADevice as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{text}: {e}") from None


def file_size(text: str) -> str:
    """An upload limit such as 50mb: a whole number and a unit b, kb, mb, gb or tb (as Gradio reads it)."""
    import re

    match = re.fullmatch(r"\s*([0-9]+)\s*(b|kb|mb|gb|tb)\s*", text, re.IGNORECASE)
    if not match or int(match[1]) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size; write a whole number and a unit, e.g. 50mb or 2gb")
    return f"{int(match[1])}{match[2].lower()}"


def batch_outputs(p) -> None:
    """The options of the commands that write one output per input photo: metadata, earlier outputs, sub-folders."""
    p.add_argument("--keep-metadata", action="store_true", help="keep EXIF/GPS/XMP (stripped by default)")
    existing = p.add_mutually_exclusive_group()
    existing.add_argument("--overwrite", action="store_true",
                          help="replace outputs of an earlier run in OUTDIR (inputs are never replaced)")
    existing.add_argument("--skip-existing", action="store_true",
                          help="leave inputs whose output is already in OUTDIR (continue an interrupted batch)")
    p.add_argument("--recursive", action="store_true",
                   help="descend into sub-folders of folder inputs (mirrored under OUTDIR)")


def protection_function(p) -> None:
    """How a generator protects (gapdiff_core.model.protector.NORMS, official_mode), spelled out: building the parser imports
    no engine module."""
    p.add_argument("--norm", choices=("image", "running"), default="image",
                   help="image (default): each BatchNorm uses the photo's own statistics, the function the "
                        "authors ran at inference (batch 1, train-mode BatchNorm), dropout off; running: eval-mode "
                        "running statistics (not what the authors ran)")
    p.add_argument("--official-mode", action="store_true",
                   help="reproduce the authors' generate.py (train mode, dropout on, one photo at a time), seeded "
                        "by --seed")
