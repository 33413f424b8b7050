"""ASPL with the released code's numerics (pure-bf16 surrogate weights, no-op gradient clip) against the corrected
ones (fp32, clip at 1.0), at toy scale: the tiny random surrogate, 2 photos at 64 px, a short schedule.

Prints, per numerics: the share of surrogate weight elements that one fine-tuning call of 3 steps at lr 5e-7 moves,
the adversarial effect (mean denoising error of the protected photos minus the clean ones', fixed noise and
timesteps, under the base surrogate) and the seconds; then how far the two protections are apart. A toy model: this
shows the numerics' mechanics (how many updates round away), not the methods' strength on SD.

    python bench/reference_numerics.py [--iterations 3]
"""
from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    from gapdiff_core.diffusion import Surrogate
    from gapdiff_core.losses import fixed_timesteps, mean_denoising_error
    from gapdiff_core.protections import get_protection
    from gapdiff_core.protections.base import trainable_parameters

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=3, help="ASPL outer iterations (default 3)")
    ap.add_argument("--res", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(1)
    surrogate = Surrogate.tiny(0)
    g = torch.Generator().manual_seed(0)
    photos = torch.rand(2, 3, args.res, args.res, generator=g) * 0.6 + 0.2
    classes = torch.rand(2, 3, args.res, args.res, generator=g)
    emb = surrogate.encode_prompt("a photo of sks person").expand(2, -1, -1)
    ts = fixed_timesteps(8)
    clean = mean_denoising_error(surrogate, photos, emb, ts).mean()
    out = {}
    for numerics in ("corrected", "released"):
        method = get_protection("aspl", surrogate, resolution=args.res, class_images=classes, num_class_images=2,
                                iterations=args.iterations, surrogate_steps=3, pgd_steps=3,
                                reference_numerics=numerics)
        model = method.clone()
        params = trainable_parameters(model)
        before = [p.detach().clone() for p in params]
        torch.manual_seed(0)  # the fine-tuning's noise and timesteps: the same for both numerics
        method.finetune(model, photos, 3, 5e-7)
        moved = sum(int((p != b).sum()) for p, b in zip(params, before)) / sum(b.numel() for b in before)
        t0 = time.perf_counter()
        protected = method.protect(photos)
        seconds = time.perf_counter() - t0
        effect = float(mean_denoising_error(surrogate, protected, emb, ts).mean() - clean)
        out[numerics] = protected
        print(f"{numerics}_weights_moved_share={moved:.4f}")
        print(f"{numerics}_effect_x1e3={effect * 1e3:.3f}")
        print(f"{numerics}_seconds={seconds:.1f}")
    diff = (out["corrected"] - out["released"]).abs() * 255
    print(f"pixels_differing_share={float((diff > 0.5).float().mean()):.4f}")
    print(f"max_difference_grey_levels={float(diff.max()):.0f}")


if __name__ == "__main__":
    main()
