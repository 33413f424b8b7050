#!/usr/bin/env bash
# Prepared GPU check (run on a lent GPU machine from the repository root, see ../shared/docs/gpu.md): protection
# throughput at 512x512, batch 1/8/32/64, of the default function (per-image statistics) and the folded eval-mode
# path side by side, fp16 (the CUDA default) and fp32, channels-last, against the fp16 matmul (tensor-core) peak
# measured in the same run, and each precision's distance from fp32. Ends with bench/protect.py's key=value lines.
set -u
PY=${PY:-python3}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
timeout 420 "$PY" bench/protect.py --device cuda --quick --latency-only 2>&1 || echo "failed: bench/protect.py"
