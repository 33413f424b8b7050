# Sourced by the prepared GPU checks (bench/gpu_methods.sh, bench/gpu_serve.sh), which set `set -euo pipefail`
# first: moves to the repository root, sets PY (default .venv/bin/python) and OUT (default bench_out, created),
# and records the GPU's name and memory in $OUT/gpu.txt.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-bench_out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
