"""Failures of a per-photo CLI batch: each printed when it happens, all listed again at the end."""
from __future__ import annotations

import sys


class BatchLog:
    def __init__(self, failures: list[str]):
        """``failures`` may already hold input problems (entries that matched no file)."""
        self.failures = failures
        self.skipped = 0

    def fail(self, path, exc) -> None:
        message = str(exc) if str(path) in str(exc) else f"{path}: {exc}"
        self.failures.append(message)
        from tqdm import tqdm

        tqdm.write(f"FAILED {message}")

    def skip(self) -> None:
        """An input whose output already exists (--skip-existing)."""
        self.skipped += 1

    def finish(self, done: int, verb: str, demo: bool = False) -> int:
        """Print "N <verb>, M failed" and every failure; the exit code: 1 when anything failed, else 0."""
        skipped = f", {self.skipped} skipped (output already there)" if self.skipped else ""
        print(f"\n{done} {verb}{skipped}, {len(self.failures)} failed"
              + (" (DEMO outputs, not protection)" if demo else ""))
        for message in self.failures:
            print(f"  failed: {message}", file=sys.stderr)
        return 1 if self.failures else 0
