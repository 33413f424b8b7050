#!/usr/bin/env bash
# Prepared GPU check (run on a lent GPU machine from the repository root): generator step time and peak memory
# against an SD-2.1-base-sized surrogate (random weights) at 512, batch 6 (the paper's setting), ngf 64,
# with and without gradient checkpointing, fp32 and bf16 autocast. Prints key=value lines per configuration.
set -u
PY=${PY:-python3}
run() {
  echo "== $*"
  timeout 240 "$PY" bench/train_step.py --skip-tiny --sd21-batch 6 --sd21-steps 3 --ngf 64 "$@" 2>&1 \
    | grep -E '^(sd21_|torch_)|error|Error|out of memory' || echo "failed: $*"
}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
run
run --gradient-checkpointing
run --gradient-checkpointing --mixed-precision bf16
