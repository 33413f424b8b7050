#!/usr/bin/env python3
"""Seconds per training step: generator steps and surrogate (DreamBooth) fine-tuning steps on the tiny model, and one
generator step against an SD-2.1-base-sized surrogate with RANDOM weights at 512 (no weights are needed).

    python bench/train_step.py [--steps 3] [--batch 1] [--skip-sd21] [--device cpu|cuda] [--sd21-batch 1]
        [--ngf 64] [--gradient-checkpointing] [--mixed-precision no|bf16|fp16]

Ends with key=value lines. On a GPU, bench/gpu_train_step.sh runs the paper's setting (batch 6) with and without
gradient checkpointing and reports peak memory.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gapdiff_core.training import Trainer, load_config  # noqa: E402


def time_steps(trainer: Trainer, batch: torch.Tensor, steps: int, finetune: bool = False) -> list[float]:
    times = []
    for _ in range(steps):
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        if finetune:
            raw = trainer.generator(batch * 2 - 1).detach()
            prot = (batch + raw * trainer.cfg.budget / 255).clamp(0, 1)
            trainer.finetuner(prot, prot, batch)
        else:
            trainer.train_step(batch)
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times


def make_trainer(work: str, surrogate, **cfg) -> Trainer:
    base = dict(output_dir=work, progress=False, tensorboard=False, val_count=1, checkpoint_every=10**9,
                val_every=10**9, max_steps=10**6)
    return Trainer(load_config(None, **{**base, **cfg}), surrogate=surrogate)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--ngf", type=int, default=64, help="generator width of the SD-2.1-sized step")
    ap.add_argument("--tiny-ngf", type=int, default=8)
    ap.add_argument("--sd21-batch", type=int, default=1)
    ap.add_argument("--sd21-steps", type=int, default=1)
    ap.add_argument("--skip-tiny", action="store_true")
    ap.add_argument("--skip-sd21", action="store_true")
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--mixed-precision", default="no")
    args = ap.parse_args()
    results: dict[str, float | str] = {}
    from gapdiff_core.diffusion import Surrogate

    with tempfile.TemporaryDirectory() as work:
        if not args.skip_tiny:
            tr = make_trainer(work, Surrogate.tiny(0), ngf=args.tiny_ngf, disc_ngf=8, batch_size=args.batch,
                              finetune_steps=1, finetune_lr=1e-4)
            x = torch.rand(args.batch, 3, 512, 512, device=tr.device)
            time_steps(tr, x, 1)  # warm-up
            g = time_steps(tr, x, args.steps)
            f = time_steps(tr, x, args.steps, finetune=True)
            results.update(tiny_generator_step_s=min(g), tiny_generator_step_median_s=sorted(g)[len(g) // 2],
                           tiny_finetune_step_s=min(f), tiny_batch=args.batch, tiny_ngf=args.tiny_ngf)
            print(f"tiny surrogate, ngf {args.tiny_ngf}, batch {args.batch}: generator step {min(g):.2f} s, "
                  f"DreamBooth step {min(f):.2f} s", flush=True)
        if not args.skip_sd21:
            dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            sur = Surrogate.random("sd21-base").to(dev)
            build = time.perf_counter() - t0
            tr = make_trainer(work, sur, ngf=args.ngf, batch_size=args.sd21_batch,
                              gradient_checkpointing=args.gradient_checkpointing,
                              mixed_precision=args.mixed_precision)
            x = torch.rand(args.sd21_batch, 3, 512, 512, device=tr.device)
            s = time_steps(tr, x, args.sd21_steps)
            results.update(sd21_device=dev.type, sd21_batch=args.sd21_batch, sd21_ngf=args.ngf,
                           sd21_build_s=build, sd21_generator_step_s=min(s),
                           sd21_gradient_checkpointing=int(args.gradient_checkpointing),
                           sd21_mixed_precision=args.mixed_precision)
            if dev.type == "cuda":
                results["sd21_peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
            print(f"SD-2.1-base-sized random surrogate on {dev.type}, ngf {args.ngf}, batch {args.sd21_batch}: "
                  f"generator step {min(s):.2f} s", flush=True)
    results["torch_threads"] = torch.get_num_threads()
    for k, v in results.items():
        print(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
