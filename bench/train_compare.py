#!/usr/bin/env python3
"""Toy-scale ablations on the tiny surrogate (a DEMO model: these numbers say nothing about real protection).

    python bench/train_compare.py jpeg       # generator trained WITH the preprocessing simulation vs WITHOUT it:
                                             # how much of the adversarial effect survives REAL JPEG q70
    python bench/train_compare.py weighting  # uniform vs min-SNR timestep weighting
    options: --steps 30 --lr 0.01 --val-images 1 --val-timesteps 8 --out bench_out/train_compare

Every run: ngf 8, batch 1, the bundled sample photos (random crops/flips), held-out photo for evaluation; the effect
is the mean denoising error (uniform weighting, fixed timesteps and noise) minus that of the clean image.
Ends with key=value lines.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gapdiff_core.training import Trainer, load_config  # noqa: E402
from gapdiff_core.training.validation import evaluate_generator, fixed_timesteps, validation_images  # noqa: E402

VARIANTS = {
    "jpeg": {"with_sim": dict(preprocess=[{"name": "jpeg_mask", "p": 0.5}, {"name": "diff_jpeg", "p": 0.5,
                                                                               "quality": [30, 90]}],
                              beta=0.0, gamma=1.0),
             "without_sim": dict(preprocess="none", beta=1.0, gamma=0.0)},
    "weighting": {"uniform": dict(preprocess="none", beta=1.0, gamma=0.0, weighting="uniform"),
                  "min_snr": dict(preprocess="none", beta=1.0, gamma=0.0, weighting="min_snr"),
                  "small_t": dict(preprocess="none", beta=1.0, gamma=0.0, weighting="small_t")},
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("study", choices=sorted(VARIANTS))
    ap.add_argument("--only", nargs="*", help="run only these variants")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--val-images", type=int, default=1)
    ap.add_argument("--val-timesteps", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench_out/train_compare")
    args = ap.parse_args()
    from gapdiff_core.diffusion import Surrogate

    results = {}
    for name, extra in VARIANTS[args.study].items():
        if args.only and name not in args.only:
            continue
        cfg = load_config(None, **{**dict(
            surrogate="tiny", ngf=8, disc_ngf=8, batch_size=1, lr=args.lr, max_steps=args.steps, augment=True,
            val_count=args.val_images, sample_latents=False, surrogate_warmup_steps=30, alpha=0.001, seed=args.seed, progress=False,
            tensorboard=False, checkpoint_every=10**9, val_every=10**9, output_dir=f"{args.out}/{args.study}-{name}"),
            **extra})
        trainer = Trainer(cfg, surrogate=Surrogate.tiny(0))
        t0 = time.perf_counter()
        trainer.run(validate=False)
        seconds = time.perf_counter() - t0
        images = validation_images(trainer.val_paths, 512, args.val_images)
        m = evaluate_generator(trainer.unwrapped_generator(), trainer.surrogate, images, cfg.budget,
                               trainer.instance_embeds, fixed_timesteps(args.val_timesteps), 70,
                               sample_latents=False)
        m["effect"] = m["adv_protected"] - m["adv_clean"]
        m["effect_after_jpeg70"] = m["adv_protected_jpeg"] - m["adv_clean_jpeg"]
        m["random_effect"] = m["adv_random"] - m["adv_clean"]
        m["train_seconds"] = seconds
        results[name] = m
        print(name, {k: round(v, 6) for k, v in m.items()}, flush=True)
    for name, m in results.items():
        for k in ("effect", "effect_after_jpeg70", "jpeg_survival", "random_effect", "psnr", "ssim", "train_seconds"):
            print(f"{args.study}_{name}_{k}={m[k]:.6g}")
    print(f"{args.study}_steps={args.steps}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
