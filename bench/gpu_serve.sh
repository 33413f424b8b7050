#!/usr/bin/env bash
# Prepared GPU check of the protection service (run when a GPU machine is lent; a few minutes on one H100/H200).
# 1) The generator's forward throughput at the paper's width in fp16 at batch 1..64 on 683x512 photos (what one
#    replica can reach); 2) bench/serve.py against `gapdiff serve --device cuda --precision fp16 --max-batch 64`
#    (a random width-64 generator: speed does not depend on the weights). Ends with key=value lines.
set -euo pipefail
source "$(dirname "$0")/gpu_env.sh"  # repository root, PY, OUT, $OUT/gpu.txt
timeout 240 "$PY" - <<'PY' 2>&1 | tee "$OUT/serve_gpu_batches.log"
import time, numpy as np, torch
from gapdiff_core import Generator, Protector
torch.manual_seed(0)
p = Protector(Generator(ngf=64).eval(), device="cuda", precision="fp16", batch_size=64)
for b in (1, 2, 4, 8, 16, 32, 64):
    x = np.random.default_rng(0).integers(0, 256, (b, 683, 512, 3), dtype=np.uint8)
    p.protect_uint8(x); torch.cuda.synchronize()
    n, t = 0, time.perf_counter()
    while time.perf_counter() - t < 3:
        p.protect_uint8(x); n += b
    torch.cuda.synchronize()
    print(f"fp16_batch{b}_photos_per_s={n / (time.perf_counter() - t):.1f}", flush=True)
print(f"gpu_peak_memory_mib={torch.cuda.max_memory_allocated() / 2**20:.0f}")
PY
timeout 300 "$PY" bench/serve.py --ngf 64 --device cuda --precision fp16 --max-batch 64 --max-wait-ms 5 \
    --max-queue 256 --requests 512 --concurrency 1,16,64,256 --offline-photos 512 2>&1 | tee "$OUT/serve_gpu.log"
