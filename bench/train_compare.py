#!/usr/bin/env python3
"""Toy-scale studies on the tiny surrogate (a DEMO model: these numbers say nothing about real protection).

    python bench/train_compare.py jpeg       # generators trained WITH the preprocessing simulation vs WITHOUT it:
                                             # the adversarial effect on held-out photos before / after REAL JPEG q70
    python bench/train_compare.py modes      # one trained generator per seed, protected three ways: per-image
                                             # statistics (the default), running statistics (eval mode), and the
                                             # authors' stochastic mode averaged over seeds
    python bench/train_compare.py weighting  # uniform vs min-SNR timestep weighting
    options: --seeds 0 1 2 --steps 30 --held-out 8 --val-timesteps 8 --out bench_out/train_compare

Every run: ngf 8, batch 1, trained on the bundled sample photos (random crops/flips). Evaluation uses 8 held-out
photos that training never saw (scikit-image's bundled pictures, centre-cropped to 512) and the same protection
as users get (`Protector`, per-image statistics). The effect is the mean denoising error of the protected photo
(uniform weighting, fixed timesteps and noise) minus that of the clean photo. Prints mean +- standard deviation
over seeds and ends with key=value lines.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gapdiff_core.model.protector import Protector  # noqa: E402
from gapdiff_core.training import Trainer, load_config  # noqa: E402
from gapdiff_core.losses import fixed_timesteps  # noqa: E402
from gapdiff_core.training.validation import evaluate_generator  # noqa: E402

SIM = [{"name": "jpeg_mask", "p": 0.5}, {"name": "diff_jpeg", "p": 0.5, "quality": [30, 90]}]
VARIANTS = {
    "jpeg": {"with_sim": dict(preprocess=SIM, beta=0.0, gamma=1.0),
             "without_sim": dict(preprocess="none", beta=1.0, gamma=0.0)},
    "modes": {"with_sim": dict(preprocess=SIM, beta=0.0, gamma=1.0)},
    "weighting": {"uniform": dict(preprocess="none", beta=1.0, gamma=0.0, weighting="uniform"),
                  "min_snr": dict(preprocess="none", beta=1.0, gamma=0.0, weighting="min_snr"),
                  "small_t": dict(preprocess="none", beta=1.0, gamma=0.0, weighting="small_t")},
}
HELD_OUT = ("coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field", "retina", "camera", "brick")
OFFICIAL_SEEDS = 8


def held_out_photos(count: int) -> torch.Tensor:
    """`count` photos training never sees: scikit-image's bundled pictures, centre-cropped and resized to 512."""
    import skimage.data

    photos = []
    for name in HELD_OUT[:count]:
        a = getattr(skimage.data, name)()
        a = np.repeat(a[..., None], 3, -1) if a.ndim == 2 else a[..., :3]
        x = torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1).float()[None] / 255
        side = min(x.shape[-2:])
        top, left = (x.shape[-2] - side) // 2, (x.shape[-1] - side) // 2
        x = x[..., top:top + side, left:left + side]
        photos.append(F.interpolate(x, (512, 512), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1))
    return torch.cat(photos)


def train(variant: dict, seed: int, args) -> Trainer:
    cfg = load_config(None, **{**dict(
        surrogate="tiny", ngf=8, disc_ngf=8, batch_size=1, lr=args.lr, max_steps=args.steps, augment=True,
        val_count=1, sample_latents=False, surrogate_warmup_steps=30, alpha=0.001, seed=seed, progress=False,
        tensorboard=False, checkpoint_every=10**9, val_every=10**9,
        output_dir=f"{args.out}/{args.study}-{seed}-{time.time_ns()}"), **variant})
    from gapdiff_core.diffusion import Surrogate

    trainer = Trainer(cfg, surrogate=Surrogate.tiny(0))
    trainer.run(validate=False)
    return trainer


def effects(trainer: Trainer, photos: torch.Tensor, protected: torch.Tensor | None, args) -> dict:
    m = evaluate_generator(trainer.unwrapped_generator(), trainer.surrogate, photos, trainer.cfg.budget,
                           trainer.instance_embeds, fixed_timesteps(args.val_timesteps), 70, sample_latents=False,
                           protected=protected)
    return {"effect": m["adv_protected"] - m["adv_clean"],
            "effect_after_jpeg70": m["adv_protected_jpeg"] - m["adv_clean_jpeg"],
            "random_effect": m["adv_random"] - m["adv_clean"], "psnr": m["psnr"]}


def corr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1])


def mode_study(trainer: Trainer, photos: torch.Tensor, args) -> dict:
    """Perturbations of the three protection functions, their correlations, and each one's effect."""
    g, budget = trainer.unwrapped_generator(), trainer.cfg.budget
    common = dict(budget=budget, precision="fp32", device="cpu", batch_size=1)
    image, running = Protector(g, **common), Protector(g, norm="running", **common)
    official = [Protector(g, official_mode=True, seed=s, **common) for s in range(OFFICIAL_SEEDS)]
    raw = {"image": image.perturbation(photos), "running": running.perturbation(photos),
           "official_mean": torch.stack([p.perturbation(photos) for p in official]).mean(0)}
    out = {"corr_image_running": corr(raw["image"], raw["running"]),
           "corr_image_official_mean": corr(raw["image"], raw["official_mean"]),
           "corr_running_official_mean": corr(raw["running"], raw["official_mean"]),
           "corr_image_official_one_seed": corr(raw["image"], official[0].perturbation(photos)),
           "max_grey_image_vs_running": float((raw["image"] - raw["running"]).abs().max() * budget)}
    for precision in ("bf16", "fp16"):  # the precisions `auto` may pick (CPU, CUDA), against fp32
        other = Protector(g, **{**common, "precision": precision}).perturbation(photos)
        out[f"max_grey_{precision}_vs_fp32"] = float((other - raw["image"]).abs().max() * budget)
    for name, protector in (("image", image), ("running", running), ("official_seed0", official[0])):
        for key, value in effects(trainer, photos, protector(photos), args).items():
            out[f"{name}_{key}"] = value
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("study", choices=sorted(VARIANTS))
    ap.add_argument("--only", nargs="*", help="run only these variants")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--held-out", type=int, default=8, choices=range(1, len(HELD_OUT) + 1), metavar="N",
                    help=f"held-out photos (1-{len(HELD_OUT)})")
    ap.add_argument("--val-timesteps", type=int, default=8)
    ap.add_argument("--out", default="bench_out/train_compare")
    args = ap.parse_args()
    torch.set_grad_enabled(True)
    photos = held_out_photos(args.held_out)

    results: dict[str, list[dict]] = {}
    for name, variant in VARIANTS[args.study].items():
        if args.only and name not in args.only:
            continue
        for seed in args.seeds:
            t0 = time.perf_counter()
            trainer = train(variant, seed, args)
            seconds = time.perf_counter() - t0
            m = mode_study(trainer, photos, args) if args.study == "modes" else effects(trainer, photos, None, args)
            m["train_seconds"] = seconds
            results.setdefault(name, []).append(m)
            print(name, f"seed {seed}", {k: round(v, 6) for k, v in m.items()}, flush=True)

    print(f"\n{args.study}: mean +- std over seeds {args.seeds}, {args.held_out} held-out photos, {args.steps} steps")
    lines = []
    for name, runs in results.items():
        for key in runs[0]:
            values = [r[key] for r in runs]
            mean, std = statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0
            print(f"  {name:12s} {key:32s} {mean:+.6f} +- {std:.6f}")
            lines += [f"{args.study}_{name}_{key}_mean={mean:.6g}", f"{args.study}_{name}_{key}_std={std:.6g}"]
    print("\n".join(lines))
    print(f"{args.study}_steps={args.steps}\n{args.study}_seeds={len(args.seeds)}\n{args.study}_held_out={args.held_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
