#!/usr/bin/env bash
# Prepared GPU check for the competing protections (run when a GPU machine is lent; a few minutes on one H100).
# Times each gradient unit on a random-weight SD-2.1-base-size model at 512 on CUDA and extrapolates every method's
# full schedule (bench/methods.py), plus GAP-Diff's one forward pass; records peak GPU memory of the run.
# Reference (the seed's runtime table, authors' GPU): Anti-DB 308 s / 18 GB ... GAP-Diff 0.04 s / 2 GB.
set -euo pipefail
source "$(dirname "$0")/gpu_env.sh"  # repository root, PY, OUT, $OUT/gpu.txt
nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > "$OUT/gpu_mem_trace.txt" &
TRACE=$!
timeout 540 "$PY" bench/methods.py --device cuda --sd-iters 3 --res 64 --out "$OUT" 2>&1 | tee "$OUT/methods_gpu.log"
kill "$TRACE" || true
echo "gpu_peak_memory_used_mib=$(sort -n "$OUT/gpu_mem_trace.txt" | tail -1)"
