#!/usr/bin/env python3
"""Train a GAP-Diff generator: ``python train/train.py CONFIG [--set key=value ...] [--resume auto|DIR]``.

Runs under ``torchrun`` / ``accelerate launch`` for several processes (accelerate picks up the environment).
Same options as ``gapdiff train``.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gapdiff_core.commands import train as command  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="train/train.py", description=command.DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    command.add_arguments(parser)
    return command.run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
