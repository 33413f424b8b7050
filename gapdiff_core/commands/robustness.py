"""`gapdiff robustness`: the robustness matrix (protection method × transform) as a table and an HTML report."""
from __future__ import annotations

from . import options

DEFAULT_TRANSFORMS = ("jpeg:75", "platform:instagram", "platform:whatsapp", "gauss:1", "diffpure:0.1,steps=10")

HELP = "measure how much protection survives re-encoding, resizing, filtering and purification (HTML matrix)"
DESCRIPTION = f"""Does the protection survive? Protect PHOTOS with the generator GEN, put the protected and the clean
photos through each transform (what a platform or an attacker does before fine-tuning), and measure how much of the
adversarial effect is left.

For every method (GAP-Diff with GEN, 'none', a random-noise control at the same budget, and any --method) and every
transform (always 'none' first, the untransformed reference), per photo:
  effect retained  the surrogate's mean denoising error on the transformed protected photo minus that on the
                   transformed clean photo (fixed timesteps, fixed seeded noise, the prompt 'a photo of sks
                   person', at the attacker's view: short side resized to --resolution, centre crop). Above 0:
                   the protection still disturbs what fine-tuning learns; 0: it is gone.
  share            the effect retained / the untransformed effect (100% = nothing lost).
  over noise       the effect retained minus that of the random-noise control on the same photo and transform.
  PSNR             transformed protected vs transformed clean photo, dB ('identical' = no difference left).
Means over photos come with 95% percentile-bootstrap intervals over photos (--resamples). Verdicts in words:
  survives  the margin over noise is clearly above 0 and at least half of the effect is kept (95% confidence);
  weakened  still clearly above noise, but possibly less than half kept;  removed  no different from noise.
With the tiny built-in surrogate (the default) everything is a demo on a toy model: the numbers are kept, the
verdicts read 'n/a (toy model)'. Give --surrogate a real Stable Diffusion model for meaningful numbers.

Transforms are registry specs (jpeg:75, webp:80, resize:1080|jpeg:75, platform:instagram, gauss:1, median:3,
diffpure:0.1, gridpure, impress, noisy-upscale, ...; chains with '|'). Default: none, {', '.join(DEFAULT_TRANSFORMS)}.

Writes OUT/robustness.html (heat map, verdicts, example images, settings; self-contained) and OUT/robustness.json
(every number, per photo too). A photo that cannot be read or transformed is reported and skipped (exit code 1);
a bad option or transform spec exits with code 2.

Example:
  gapdiff robustness photos/ -g G.safetensors --surrogate sd21-base/ --transform jpeg:75 --transform diffpure:0.1"""


def add_arguments(p) -> None:
    p.add_argument("photos", nargs="+", metavar="PHOTOS", help="image files, folders or glob patterns")
    p.add_argument("-g", "--generator", required=True, metavar="GEN", help="GAP-Diff generator checkpoint")
    p.add_argument("--surrogate", default="tiny",
                   help="diffusion model that measures the effect and runs the purifications: tiny (default; a "
                        "toy model, results are a demo), a diffusers folder or a single-file checkpoint")
    p.add_argument("--transform", action="append", dest="transforms", default=None, metavar="SPEC",
                   help="a transform spec (repeatable; default: " + ", ".join(DEFAULT_TRANSFORMS) + ")")
    p.add_argument("--budget", type=options.budget, default=None,
                   help="budget in grey levels on the 0-255 scale, for GAP-Diff and the random-noise control "
                        "(default: the generator's)")
    p.add_argument("--method", action="append", dest="methods", default=None, metavar="NAME",
                   help="also an iterative protection against the surrogate (aspl, fsmg, photoguard, mist, ace, "
                        "metacloak, caat, simac; NAME:tiny for its short schedule; minutes per photo; repeatable)")
    p.add_argument("-o", "--out", default="robustness_out", metavar="OUT", help="output folder (default "
                                                                                 "robustness_out)")
    p.add_argument("--timesteps", type=int, default=8, help="timesteps of the denoising error (default 8)")
    p.add_argument("--resolution", type=int, default=None,
                   help="side of the attacker's view the error is measured at (default: the surrogate's; 128 for "
                        "the tiny toy model)")
    p.add_argument("--max-side", type=int, default=None,
                   help="shrink photos whose long side is larger to this first (faster; default: full size)")
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples (default 2000)")
    p.add_argument("--examples", type=int, default=2, help="photos shown as examples per transform (default 2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the transforms, the noise control and the "
                                                        "bootstrap (default 0)")
    p.add_argument("--device", type=options.device, default="cpu", help="cpu, cuda, mps or auto (default cpu)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    import sys

    from ..common.progress import TqdmProgress
    from ..diffusion import load_surrogate
    from ..evaluation.robustness_matrix import (DenoisingMeasure, gap_diff_method, none_method, random_noise_method,
                                                registry_method, robustness_matrix)
    from ..evaluation.robustness_report import matrix_table, write_robustness_report
    from ..io import iter_image_paths
    from ..model.protector import resolve_device
    from ..preprocess import parse

    def fail(message: str) -> int:
        print(f"gapdiff robustness: {message}", file=sys.stderr)
        return 2

    try:
        transforms = [parse(spec) for spec in (args.transforms or DEFAULT_TRANSFORMS)]
        for name, value, low in (("--timesteps", args.timesteps, 1), ("--resamples", args.resamples, 100),
                                 ("--examples", args.examples, 0), ("--max-side", args.max_side or 16, 16)):
            if value < low:
                return fail(f"{name} must be at least {low}, got {value}")
        paths, problems, _ = iter_image_paths(args.photos, out_dir=args.out)
        for problem in problems:
            print(f"gapdiff robustness: {problem}", file=sys.stderr)
        if not paths:
            return fail("no photos found in " + " ".join(args.photos))
        device = str(resolve_device(args.device))
        surrogate = load_surrogate(args.surrogate, device=device)
        gap = gap_diff_method(args.generator, args.budget, device=device)
        methods = [gap, none_method(), random_noise_method(gap.budget)]
        methods += [registry_method(spec, surrogate, gap.budget) for spec in args.methods or ()]
        measure = DenoisingMeasure(surrogate, args.timesteps, resolution=args.resolution)
    except (ValueError, FileNotFoundError, OSError, ImportError) as exc:
        return fail(str(exc))
    with TqdmProgress("robustness", unit="transform") as bar:
        try:
            matrix = robustness_matrix(paths, methods, transforms, surrogate=surrogate, measure=measure,
                                       budget=gap.budget, seed=args.seed, resamples=args.resamples,
                                       max_side=args.max_side, examples=args.examples, device=device,
                                       progress=None if args.no_progress else bar)
        except ValueError as exc:
            return fail(str(exc))
    for name, reason in matrix.skipped.items():
        print(f"gapdiff robustness: skipped {name}: {reason}", file=sys.stderr)
    print(matrix_table(matrix))
    written = write_robustness_report(matrix, args.out)
    print("\nwrote " + ", ".join(str(p) for p in written.values()))
    return 1 if matrix.skipped or problems else 0
