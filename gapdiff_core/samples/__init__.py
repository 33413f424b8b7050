"""The sample photos shipped with the package (README.md here says where they come from): the demo, the tests and the
benchmarks use them offline."""
from pathlib import Path

SAMPLES_DIR = Path(__file__).resolve().parent
