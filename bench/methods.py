"""Side-by-side benchmark of the competing protections (gapdiff_core.protections) and GAP-Diff.

For every method in one run:
  1. tiny surrogate (warmed up on the photos, as training does): seconds per photo and peak RSS increase of the
     method's tiny schedule (measured), plus the full-schedule time extrapolated from the measured per-unit costs;
     the adversarial effect (mean denoising-loss increase vs clean with fixed noises/timesteps) before and after
     real JPEG q 90/70/50, the share that survives, and the same effect of random sign noise (the noise floor).
  2. SD-2.1-size surrogate with random weights at 512: the cost of each gradient unit (PGD step through VAE+UNet,
     encoder-only step, full-UNet / K-V / LoRA fine-tuning step, UNet copy) is timed a few times on the one shared
     model, and each method's full schedule is EXTRAPOLATED as units x unit cost (per photo, a set of 4 photos).
  3. GAP-Diff: one forward pass of a random-weight ngf=64 generator (Protector, 512x512), and its speed ratio.
Ends with key=value lines and writes a bar chart (SVG) of the SD-2.1 seconds per photo.

    python bench/methods.py [--skip-sd] [--device cpu|cuda] [--threads N] [--out bench_out]
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import psutil  # noqa: E402
import torch  # noqa: E402

from gapdiff_core.diffusion import Surrogate  # noqa: E402
from gapdiff_core.losses import denoising_error  # noqa: E402
from gapdiff_core.preprocess.codecs import jpeg  # noqa: E402
from gapdiff_core.preprocess.pixels import quantize_8bit  # noqa: E402
from gapdiff_core.protections import METHODS, get_protection  # noqa: E402
from gapdiff_core.protections.caat import cross_attention_kv  # noqa: E402
from gapdiff_core.attack.lora import UNET_LORA_TARGETS, add_lora  # noqa: E402
from gapdiff_core.training.warmup import warm_up_surrogate  # noqa: E402

SET_SIZE = 4  # photos protected together (Anti-DreamBooth's set_B)
QUALITIES = (90, 70, 50)
# the tiny schedules (tests) with enough PGD steps (~18-24 per photo) for a measurable effect on the tiny model
BENCH_SCHEDULE = {
    "aspl": dict(iterations=3, surrogate_steps=1, pgd_steps=6), "fsmg": dict(finetune_steps=2, pgd_steps=18),
    "photoguard": dict(iterations=20), "mist": dict(iterations=20), "ace": dict(epochs=2, pgd_steps=9, lora_steps=1),
    "metacloak": dict(rounds=3, pgd_steps=3), "caat": dict(steps=18),
    "simac": dict(iterations=3, surrogate_steps=1, pgd_steps=6, select_rounds=2, probes=2, keep=900)}


class PeakRSS:
    """Peak resident-set increase (MiB) while the block runs, sampled every 10 ms (torch allocations included)."""

    def __enter__(self):
        self.proc, self.base, self.peak, self.stop = psutil.Process(), psutil.Process().memory_info().rss, 0, False
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()
        return self

    def _watch(self):
        while not self.stop:
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.01)

    def __exit__(self, *exc):
        self.stop = True
        self.thread.join()
        self.mib = max(0, max(self.peak, self.proc.memory_info().rss) - self.base) / 2 ** 20


def denoising_loss(surrogate, x, samples=16, seed=11):
    """Mean denoising MSE over fixed (noise, t, VAE sample) draws: the same draws for every image set."""
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        xs = x.repeat(samples, 1, 1, 1)
        t = torch.randint(0, 1000, (xs.shape[0],))
        return denoising_error(surrogate, xs, surrogate.encode_prompt("a photo of sks person"), timesteps=t).mean().item()


def effect(surrogate, clean, protected):
    """Loss increase (x1e3) before and after real JPEG, and the share that survives."""
    out = {"raw": 1e3 * (denoising_loss(surrogate, protected) - denoising_loss(surrogate, clean))}
    for q in QUALITIES:
        out[f"q{q}"] = 1e3 * (denoising_loss(surrogate, jpeg(protected, q)) - denoising_loss(surrogate, jpeg(clean, q)))
    return out


def tiny_part(photos, res, class_cache):
    surrogate = Surrogate.tiny(0)
    warm_up_surrogate(surrogate, photos)  # as training does: a random tiny UNet's error ignores its input
    rows = {}
    for name in METHODS:
        method = get_protection(name, surrogate, schedule="tiny", resolution=res, class_cache_dir=class_cache,
                                **BENCH_SCHEDULE.get(name, {}))
        method.prior_images()  # class images are generated (or read from the cache) before the clock starts
        with PeakRSS() as mem:
            start = time.perf_counter()
            protected = method.protect(photos)
            seconds = time.perf_counter() - start
        unit_cost = {k: sec / cnt for k, (cnt, sec) in method.stats.items() if cnt}
        full = METHODS[name](surrogate, resolution=res).schedule_units(SET_SIZE)
        missing = [k for k in full if k not in unit_cost]
        extrap = sum(full[k] * unit_cost.get(k, 0.0) for k in full) / SET_SIZE
        diff = (protected * 255 - torch.round(photos * 255)).abs().max().item()
        rows[name] = dict(sec=seconds / photos.shape[0], mem=mem.mib, full_sec=extrap, missing=missing,
                          max_change=diff, budget=method.budget, **effect(surrogate, photos, protected))
        r = rows[name]
        print(f"  {name:10s} tiny schedule {r['sec']:7.2f} s/photo  peak RSS +{r['mem']:6.0f} MiB  "
              f"full schedule (extrapolated) {r['full_sec']:8.1f} s/photo  max change {diff:.0f}/{method.budget:g}  "
              f"loss increase x1e3 {r['raw']:+.3f} | JPEG90 {r['q90']:+.3f} q70 {r['q70']:+.3f} q50 {r['q50']:+.3f}",
              flush=True)
    noise = torch.sign(torch.randn(photos.shape, generator=torch.Generator().manual_seed(1))) * 8 / 255
    random = effect(surrogate, photos, quantize_8bit(photos + noise))
    print(f"  random ±8 sign noise (the noise floor): loss increase x1e3 {random['raw']:+.3f} | JPEG90 "
          f"{random['q90']:+.3f} q70 {random['q70']:+.3f} q50 {random['q50']:+.3f}", flush=True)
    return rows, random


def time_it(fn, iters):
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - start) / iters


def sd_unit_costs(device, iters):
    """Seconds per gradient unit on a random-weight SD-2.1-base-size model at 512 (one image)."""
    t0 = time.perf_counter()
    sd = Surrogate.random("sd21-base").to(device)
    print(f"  built random SD-2.1-base-size surrogate in {time.perf_counter() - t0:.0f} s on {device}", flush=True)
    x = torch.rand(1, 3, 512, 512, device=device)
    probe = METHODS["aspl"](sd, class_images=x)  # a training unit: one instance + one class image, as Anti-DB
    costs = {}
    costs["pgd"] = time_it(lambda: probe.denoising_grad(sd, x), iters)
    print(f"  pgd unit {costs['pgd']:.2f} s", flush=True)

    def encoder_step():
        xi = x.clone().requires_grad_(True)
        torch.autograd.grad(sd.encode_images(xi, sample=False).pow(2).mean(), xi)
    costs["encoder"] = time_it(encoder_step, iters)
    print(f"  encoder unit {costs['encoder']:.2f} s", flush=True)

    def train_step(params):
        opt = torch.optim.SGD(params, lr=1e-9)  # memory: AdamW's state would double a 3.5 GB UNet again
        return lambda: probe.finetune(sd, x, 1, 1e-9, params=params, optimizer=opt)
    for m in (sd.unet, sd.text_encoder):  # ASPL, FSMG, SimAC and MetaCloak train both
        m.requires_grad_(True)
    costs["train"] = time_it(train_step(list(sd.unet.parameters()) + list(sd.text_encoder.parameters())), iters)
    sd.freeze()
    print(f"  train unit {costs['train']:.2f} s", flush=True)
    kv = cross_attention_kv(sd.unet)
    for p in kv:
        p.requires_grad_(True)

    def kv_step():
        xi = x.clone().requires_grad_(True)
        denoising_error(sd, xi, probe.embeds(1)).mean().backward()
        for p in kv:
            p.grad = None
    costs["train_kv"] = time_it(kv_step, iters)
    sd.unet.requires_grad_(False)
    print(f"  train_kv unit {costs['train_kv']:.2f} s", flush=True)
    t0 = time.perf_counter()
    clone = probe.clone()
    costs["clone"] = time.perf_counter() - t0
    del clone
    lora = add_lora(sd.unet, UNET_LORA_TARGETS, 4)
    costs["train_lora"] = time_it(train_step(lora), iters)
    print(f"  train_lora unit {costs['train_lora']:.2f} s, clone {costs['clone']:.2f} s", flush=True)
    return costs


def gapdiff_seconds(device):
    """GAP-Diff's row of the harness: get_protection("gap-diff") -> Protector (default norm="image")."""
    from gapdiff_core import Generator

    torch.manual_seed(0)
    method = get_protection("gap-diff", generator=Generator(ngf=64), budget=8, device=device, precision="fp32",
                            batch_size=1)
    x = torch.rand(1, 3, 512, 512)
    return time_it(lambda: method.protect(x), 2)


def write_svg(path, seconds: dict[str, float], title: str):
    names = list(seconds)
    w, bar, left = 760, 26, 110
    h = 60 + bar * len(names)
    lo = math.floor(math.log10(min(seconds.values())))
    hi = math.ceil(math.log10(max(seconds.values())))
    scale = (w - left - 130) / max(1, hi - lo)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" '
             f'font-size="12"><text x="10" y="20" font-size="14">{title}</text>']
    for i, n in enumerate(names):
        y = 40 + i * bar
        length = (math.log10(seconds[n]) - lo) * scale
        colour = "#2a7" if n == "gap-diff" else "#37c"
        parts.append(f'<text x="10" y="{y + 16}">{n}</text><rect x="{left}" y="{y + 4}" width="{max(length, 1):.1f}" '
                     f'height="{bar - 8}" fill="{colour}"/><text x="{left + length + 6:.1f}" y="{y + 16}">'
                     f'{seconds[n]:.3g} s</text>')
    parts.append(f'<text x="{left}" y="{h - 6}" fill="#666">log scale, 10^{lo} .. 10^{hi} s per photo '
                 f'(extrapolated for the iterative methods)</text></svg>')
    Path(path).write_text("\n".join(parts), encoding="utf-8")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--res", type=int, default=128, help="working resolution on the tiny surrogate")
    ap.add_argument("--photos", type=int, default=2)
    ap.add_argument("--skip-sd", action="store_true", help="skip the SD-2.1-size part")
    ap.add_argument("--sd-iters", type=int, default=1, help="timed iterations per unit on the SD-2.1-size model")
    ap.add_argument("--device", default="cpu", help="device of the SD-2.1-size part and GAP-Diff")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave torch's default)")
    ap.add_argument("--out", default="bench_out", help="folder for the SVG plot")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, device {args.device}")
    g = torch.Generator().manual_seed(0)
    photos = torch.rand(args.photos, 3, args.res, args.res, generator=g) * 0.6 + 0.2
    samples = sorted((Path(__file__).resolve().parents[1] / "gapdiff_core" / "samples").glob("obama*.jpg"))
    for i, path in enumerate(samples[:args.photos]):
        from PIL import Image
        im = Image.open(path).convert("RGB").resize((args.res, args.res))
        photos[i] = torch.from_numpy(np.array(im)).permute(2, 0, 1).float() / 255

    print(f"\n[1] tiny surrogate, {args.photos} photos at {args.res}px, each method's short bench schedule (measured); "
          f"full-schedule times are EXTRAPOLATED from its per-unit costs")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: more threads only oversubscribe a shared CPU
    tiny, random = tiny_part(photos, args.res, Path(args.out) / "class_images")
    torch.set_num_threads(threads)

    gap = gapdiff_seconds(args.device)
    print(f"\n[3] GAP-Diff (random ngf=64 generator, Protector, 512x512, {args.device}): {gap:.3f} s/photo")

    sd_rows = {}
    if not args.skip_sd:
        print(f"\n[2] SD-2.1-base-size random surrogate at 512 on {args.device}: unit costs (timed), full schedules "
              f"EXTRAPOLATED (units x unit cost, set of {SET_SIZE} photos)")
        costs = sd_unit_costs(args.device, args.sd_iters)
        for name, cls in METHODS.items():
            units = cls(None).schedule_units(SET_SIZE)
            sd_rows[name] = sum(n * costs[k] for k, n in units.items()) / SET_SIZE
            print(f"  {name:10s} {sd_rows[name]:10.0f} s/photo (extrapolation)  = {sd_rows[name] / 3600:6.2f} h; "
                  f"GAP-Diff is {sd_rows[name] / gap:,.0f}x faster", flush=True)
        os.makedirs(args.out, exist_ok=True)
        write_svg(Path(args.out) / "methods_sd21.svg", {**sd_rows, "gap-diff": gap},
                  f"seconds per photo, SD-2.1-size random surrogate, 512 px, {args.device} (extrapolated)")
        print(f"  plot: {Path(args.out) / 'methods_sd21.svg'}")

    print()
    for name, r in tiny.items():
        print(f"tiny_{name}_s_per_photo={r['sec']:.3f}")
        print(f"tiny_{name}_peak_rss_mib={r['mem']:.0f}")
        print(f"tiny_{name}_full_schedule_s_per_photo_extrapolated={r['full_sec']:.1f}")
        print(f"tiny_{name}_max_change_grey={r['max_change']:.0f}")
        print(f"tiny_{name}_loss_increase_x1e3={r['raw']:.4f}")
        for q in QUALITIES:
            print(f"tiny_{name}_loss_increase_jpeg{q}_x1e3={r[f'q{q}']:.4f}")
            share = r[f"q{q}"] / r["raw"] if r["raw"] > 0 else float("nan")
            print(f"tiny_{name}_survival_jpeg{q}={share:.3f}")
    print(f"tiny_random_noise_loss_increase_x1e3={random['raw']:.4f}")
    for q in QUALITIES:
        print(f"tiny_random_noise_loss_increase_jpeg{q}_x1e3={random[f'q{q}']:.4f}")
    print(f"gapdiff_s_per_photo={gap:.4f}")
    for name, sec in sd_rows.items():
        print(f"sd21_{name}_s_per_photo_extrapolated={sec:.1f}")
        print(f"speed_ratio_gapdiff_vs_{name}={sec / gap:.0f}")


if __name__ == "__main__":
    main()
