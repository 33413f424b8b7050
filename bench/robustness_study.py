"""Training for robustness, on the tiny config: does a generator trained against platform uploads, other codecs,
resizing, crops, blur and noise keep more of its adversarial effect after them than today's JPEG-only one?

TOY SCALE: the surrogate is the tiny built-in random model (warmed up); the numbers say nothing about Stable
Diffusion. Two preprocessing lists are trained with the demo settings (gapdiff_core/training/demo.py) for several
seeds: "jpeg-only" (`preprocess: default`: JPEG-Mask, differentiable JPEG 30-90, blur, identity) and "robust" (the
`preprocess` list of train/configs/platforms.yaml). Training uses obama.jpg, obama2.jpg, obama3.jpg only (random crops
and flips). Held out: 8 photos never trained on: biden.jpg cut into three 640×640 windows (top 0, 407, 814) and their
mirror images, astronaut.png whole and mirrored; all at 512×512.

Measure: the robustness matrix (gapdiff_core/evaluation/robustness_matrix.py) per seed, transforms from the one
registry (gapdiff_core/preprocess/transforms.py). Per transform T the adversarial effect retained = the surrogate's
mean denoising error (8 fixed timesteps at 512 px; --quick: 4 at 256 px; fixed noise) on T(protected) minus
on T(clean), averaged over the photos; the random ±budget noise control beside it; then mean ± sd over seeds (one
tiny surrogate, warmed up once, serves every run and every measurement: the seeds vary the generators' initial
weights, data order and preprocessing draws). Also the PSNR of T(protected) against T(clean).

Usage: python bench/robustness_study.py [--quick] [--seeds 3] [--steps 200]. Ends with key=value lines.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from PIL import Image  # noqa: E402

from gapdiff_core.evaluation.robustness_matrix import (DenoisingMeasure, MatrixMethod,  # noqa: E402
                                                       random_noise_method, robustness_matrix)
from gapdiff_core.io import atomic  # noqa: E402
from gapdiff_core.metrics.fidelity import psnr  # noqa: E402
from gapdiff_core.preprocess import parse  # noqa: E402
from gapdiff_core.preprocess.diff_platforms import PLATFORMS, codec_as_jpeg, matched_jpeg_quality, platform  # noqa: E402
from gapdiff_core.preprocess.differentiable_jpeg import diff_jpeg  # noqa: E402
from gapdiff_core.preprocess.fidelity import load_photo, sample_photos  # noqa: E402
from gapdiff_core.preprocess.simulators import crop, gauss, gaussian_noise, rescale, store_8bit  # noqa: E402
from gapdiff_core.samples import SAMPLES_DIR  # noqa: E402
from gapdiff_core.training.config import load_config  # noqa: E402
from gapdiff_core.training.demo import DEMO_SETTINGS  # noqa: E402
from gapdiff_core.training.loop import Trainer  # noqa: E402
from gapdiff_core.training.validation import protect_batch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SIZE = 512
TRAIN_PHOTOS = ("obama.jpg", "obama2.jpg", "obama3.jpg")
TRANSFORMS = (
    "none", "jpeg:75", "jpeg:50", "webp:80", "avif:60",
    "resize:270,filter=bicubic,side=long|jpeg:75",  # Instagram (1080 px, JPEG 75) on a 2048-px photo, at 512 px
    "platform:whatsapp", "rescale:0.5,filter=bicubic", "crop:0.8,position=random", "gauss:1.0", "noise:0.03",
    "median:3", "tv:0.1", "diffpure:0.1,steps=10",
)
QUICK_TRANSFORMS = ("none", "jpeg:75", "webp:80", "resize:270,filter=bicubic,side=long|jpeg:75", "gauss:1.0")
CONFIGS = {"jpeg-only": "default", "robust": None}  # None: the list of train/configs/platforms.yaml


def _square(im: Image.Image) -> torch.Tensor:
    a = np.asarray(im.convert("RGB").resize((SIZE, SIZE), Image.LANCZOS), dtype=np.float32) / 255.0
    return torch.from_numpy(a.copy()).permute(2, 0, 1)


def held_out_photos() -> tuple[torch.Tensor, list[str]]:
    """The 8 held-out photos (see the module docstring) as 10×3×512×512 in [0, 1], with their names."""
    photos, names = [], []
    biden = Image.open(SAMPLES_DIR / "biden.jpg")
    for top in (0, 407, 814):
        window = biden.crop((0, top, 640, top + 640))
        for flip in (False, True):
            photos.append(_square(window.transpose(Image.FLIP_LEFT_RIGHT) if flip else window))
            names.append(f"biden[{top}:{top + 640}]{' flipped' if flip else ''}")
    astro = Image.open(SAMPLES_DIR / "astronaut.png")
    for label, im in (("astronaut", astro), ("astronaut flipped", astro.transpose(Image.FLIP_LEFT_RIGHT))):
        photos.append(_square(im))
        names.append(label)
    return torch.stack(photos), names


def train(preprocess, seed: int, steps: int, train_dir: Path, val_dir: Path, work: Path, surrogate=None,
          warmup: int = 30) -> Trainer:
    """A generator trained with the demo settings; ``surrogate``: one warmed up already by an earlier run (then not
    warmed up again), else a fresh tiny one warmed up for ``warmup`` steps."""
    settings = {**DEMO_SETTINGS, "preprocess": preprocess, "surrogate_warmup_steps": 0 if surrogate is not None else warmup}
    cfg = load_config(None, **settings, max_steps=steps, seed=seed, progress=False, output_dir=str(work),
                      train_dir=str(train_dir), val_dir=str(val_dir), tensorboard=False)
    trainer = Trainer(cfg, surrogate=surrogate)
    trainer.run(validate=False)
    return trainer


def _pillow_resize(x: torch.Tensor, h: int, w: int, filter=Image.BICUBIC) -> torch.Tensor:
    a = (x[0].permute(1, 2, 0) * 255).round().clamp(0, 255).byte().numpy()
    b = np.asarray(Image.fromarray(a).resize((w, h), filter), dtype=np.float32) / 255.0
    return torch.from_numpy(b.copy()).permute(2, 0, 1)[None]


def fidelity_cases() -> list[tuple[str, str, object]]:
    """(registry spec, simulation label, simulation(x, seed)) for every new simulator; platforms run on larger
    photos so that their resize applies (see :func:`simulator_fidelity`)."""
    g = lambda seed: torch.Generator().manual_seed(seed)  # noqa: E731
    cases = [("jpeg:75", "diff_jpeg 75", lambda x, s: diff_jpeg(x, 75))]
    for f in ("bilinear", "bicubic"):
        cases.append((f"rescale:0.5,filter={f}", f"rescale 0.5 {f}", lambda x, s, f=f: rescale(x, 0.5, f)))
    cases.append(("crop:0.8,position=random", "crop 0.8 (same window)", lambda x, s: crop(x, 0.8, g(s))))
    for sigma in (1.0, 2.0):
        cases.append((f"gauss:{sigma}", f"gauss {sigma}", lambda x, s, sigma=sigma: gauss(x, sigma)))
    cases.append(("noise:0.03", "noise 0.03 (same draw)", lambda x, s: store_8bit(gaussian_noise(x, 0.03, g(s)))))
    for codec, q in (("webp", 80), ("webp", 50), ("avif", 60), ("avif", 40)):
        cases.append((f"{codec}:{q}", f"diff_jpeg {matched_jpeg_quality(codec, q)} (matched)",
                      lambda x, s, codec=codec, q=q: codec_as_jpeg(x, codec, q)))
    for name in PLATFORMS:
        cases.append((f"platform:{name}", f"platform {name}", lambda x, s, name=name: platform(x, name, max(x.shape))))
    return cases


def simulator_fidelity(seed: int = 0) -> list[tuple[str, str, float, float]]:
    """(spec, simulation, PSNR simulation vs real, PSNR real vs clean), averaged over the five sample photos: 512×512
    centre crops, except for platforms: each whole photo enlarged ×2 (bicubic; long sides 1024-2908 px) so that the
    platform's cap shrinks it; the platform's output is resized back (Pillow bicubic) to compare."""
    crops = [load_photo(p, SIZE) for p in sample_photos()]
    rows = []
    with torch.no_grad():
        for spec, label, simulate in fidelity_cases():
            transform, sims, cleans = parse(spec), [], []
            for path, square in zip(sample_photos(), crops):
                x = square
                if spec.startswith("platform:"):
                    im = Image.open(path).convert("RGB")
                    x = _square_free(im.resize((im.width * 2, im.height * 2), Image.BICUBIC))
                real = transform(x, seed=seed)
                if real.shape != x.shape:
                    real = _pillow_resize(real, *x.shape[-2:], Image.BILINEAR if spec.startswith("crop") else
                                          Image.BICUBIC)
                sims.append(float(psnr(simulate(x, seed), real).mean()))
                cleans.append(float(psnr(real, x).mean()))
            rows.append((spec, label, statistics.mean(sims), statistics.mean(cleans)))
    return rows


def _square_free(im: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(im, dtype=np.float32).copy() / 255.0).permute(2, 0, 1)[None]


def matrix_effects(surrogate, clean: torch.Tensor, generators: dict, budget: float, transforms, seed: int,
                   timesteps: int = 8, resolution: int = SIZE) -> dict:
    """{(method, spec): (effect retained averaged over photos, PSNR of T(protected) vs T(clean))} of one seed, from
    the robustness matrix (``evaluation.robustness_matrix``) measured at the training resolution."""
    methods = [random_noise_method(budget)] + [
        MatrixMethod(name, lambda x, s, g=g: protect_batch(g, x, budget)) for name, g in generators.items()]
    matrix = robustness_matrix(list(clean.split(1)), methods, transforms, surrogate=surrogate,
                               measure=DenoisingMeasure(surrogate, timesteps, resolution=resolution), budget=budget, seed=seed,
                               resamples=200, examples=0)
    return {(m.name, spec): (matrix.cell(m.name, spec).effect.mean, matrix.cell(m.name, spec).psnr.mean)
            for m in methods for spec in matrix.transforms}


def mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):+.5f} ± {sd:.5f}"


def key(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text).strip("_")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="8 training steps, 10 warm-up steps, 5 transforms, 4 measuring timesteps at 256 px instead of "
                         "200, 30, 14, 8 at 512 px (for a loaded machine: the generators barely train)")
    ap.add_argument("--no-fidelity", action="store_true", help="skip the simulation-vs-real PSNR table")
    ap.add_argument("--seeds", type=int, default=3, help="training seeds per configuration (default 3)")
    ap.add_argument("--steps", type=int, default=None, help="training steps per generator (default 200, quick 8)")
    args = ap.parse_args(argv)
    steps = args.steps or (8 if args.quick else 200)
    warmup, timesteps, resolution = (10, 4, 256) if args.quick else (30, 8, SIZE)
    transforms = QUICK_TRANSFORMS if args.quick else TRANSFORMS
    robust = yaml.safe_load((ROOT / "train" / "configs" / "platforms.yaml").read_text(encoding="utf-8"))["preprocess"]
    configs = {name: (robust if value is None else value) for name, value in CONFIGS.items()}
    t0 = time.time()
    fidelity = [] if args.no_fidelity else simulator_fidelity()
    if fidelity:
        print("How close each training simulation comes to the registry's real transform (sample photos, PSNR):")
        print(f"{'registry transform':<30} {'simulation':<32} {'sim vs real':>12} {'real vs clean':>14}")
        for spec, label, sim, real in fidelity:
            print(f"{spec:<30} {label:<32} {sim:>9.2f} dB {real:>11.2f} dB")
    clean, names = held_out_photos()
    print("TOY SCALE: tiny random surrogate (warmed up); these numbers say nothing about Stable Diffusion.")
    print(f"held-out photos ({len(names)}): {'; '.join(names)}")
    print(f"training photos: {', '.join(TRAIN_PHOTOS)}; {steps} steps per generator; seeds 0..{args.seeds - 1}")
    results: dict = {}
    train_seconds = []
    with tempfile.TemporaryDirectory(prefix="gapdiff-study-") as tmp:
        train_dir, val_dir = Path(tmp, "train"), Path(tmp, "held-out")
        train_dir.mkdir(), val_dir.mkdir()
        for name in TRAIN_PHOTOS:
            atomic.write_bytes(train_dir / name, (SAMPLES_DIR / name).read_bytes())
        atomic.write_bytes(val_dir / "astronaut.png", (SAMPLES_DIR / "astronaut.png").read_bytes())  # unused: no validation
        surrogate = None  # warmed up once (seed 0's run), then shared: the seeds vary the generators only
        for seed in range(args.seeds):
            generators, budget = {}, None
            for config, preprocess in configs.items():
                t1 = time.time()
                trainer = train(preprocess, seed, steps, train_dir, val_dir, Path(tmp, f"{config}-{seed}"), surrogate,
                                warmup)
                train_seconds.append(time.time() - t1)
                surrogate = trainer.surrogate
                generators[config], budget = trainer.unwrapped_generator(), trainer.cfg.budget
                print(f"seed {seed} {config}: trained in {train_seconds[-1]:.0f} s", flush=True)
            results[seed] = matrix_effects(surrogate, clean, generators, budget, transforms, seed, timesteps,
                                           resolution)
            for (m, spec), (effect, db) in results[seed].items():
                print(f"  seed {seed} {m:>13} {spec:<46} effect {effect:+.6f}  PSNR {db:.2f} dB", flush=True)
            print(f"seed {seed}: measured at {time.time() - t0:.0f} s", flush=True)
    methods = ["random-noise", *configs]
    transforms = list(dict.fromkeys(spec for _, spec in results[0]))  # as the registry normalises them
    print("\nAdversarial effect retained after each transform (mean denoising error of T(protected) minus "
          f"T(clean); mean ± sd over {args.seeds} seeds; higher = more protection survives; TOY SCALE)")
    width = max(len(s) for s in transforms)
    print(f"{'transform':<{width}}  " + "  ".join(f"{m:>21}" for m in methods) + "  " +
          "  ".join(f"{'PSNR ' + m:>16}" for m in configs))
    for spec in transforms:
        cells = [mean_sd([results[s][(m, spec)][0] for s in results]) for m in methods]
        psnrs = [f"{statistics.mean(results[s][(m, spec)][1] for s in results):>13.2f} dB" for m in configs]
        print(f"{spec:<{width}}  " + "  ".join(f"{c:>21}" for c in cells) + "  " + "  ".join(psnrs))
    print(f"\nphotos={len(names)}")
    print(f"seeds={args.seeds}")
    print(f"steps={steps}")
    print(f"warmup_steps={warmup}")
    print(f"measuring_timesteps={timesteps}")
    print(f"measuring_resolution={resolution}")
    print(f"train_seconds_mean={statistics.mean(train_seconds):.1f}")
    print(f"seconds={time.time() - t0:.1f}")
    for spec, _, sim, _ in fidelity:
        print(f"psnr_sim_vs_real_{key(spec)}={sim:.2f}")
    for spec in transforms:
        for m in methods:
            values = [results[s][(m, spec)][0] for s in results]
            print(f"effect_{key(m)}_{key(spec)}={statistics.mean(values):.6f}")
            print(f"effect_sd_{key(m)}_{key(spec)}={statistics.stdev(values) if len(values) > 1 else 0.0:.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
