"""`gapdiff evaluate`: the Anti-DreamBooth protocol (protect -> transform -> attack -> generate -> metrics)."""
from __future__ import annotations

from . import options

HELP = "run the protection protocol (DreamBooth attack + FDFR/ISM/BRISQUE/SER-FIQ) and write reports"
DESCRIPTION = """Evaluate protections with the Anti-DreamBooth protocol.

DATA is either the Anti-DreamBooth layout (<identity>/set_B, set_C; or one identity's folder holding set_B, set_C)
or a plain folder of photos of one person: sorted by name, the first half is protected and attacked, the rest are
the clean references.

For every method x budget x transform: protect set_B, apply the transform (e.g. jpeg:70), DreamBooth-attack the
model, generate the paper's four prompts, and score FDFR (higher = stronger protection), ISM (lower), BRISQUE
(higher) and SER-FIQ (lower) per prompt against set_C; plus PSNR/SSIM/L-infinity of protected vs clean.
Every stage is cached under OUT/cache by its settings: rerunning resumes and skips what is done.
Writes OUT/results.json and OUT/report.{json,md,html}. With the tiny built-in model everything is a toy demo.

--protocol paper sets everything the paper fixes (the paper-full DreamBooth at 512 px with 200 class images,
the four prompts, 30 images per prompt, PNDM with 100 steps, CFG 7.5 in fp16, every method at the budget its
authors published, the baselines' released numerics, GAP-Diff in fp32, none and jpeg:70, a random-noise control);
any flag given as well overrides it (--budget runs every method at the budgets given), and the report lists each
of the protocol's settings and components (model, detector, embedder, SER-FIQ, class images, precisions, budgets)
next to what ran, counting the rows that differ.
Without --protocol: the tiny-lora (tiny model) or lora preset, 4 images per prompt, 30 DDIM steps.

Every report also gives the identity gain (the attacked model's denoising error on set_C with the class prompt
minus that with the instance prompt, same noise for both, over that of the model attacked with the clean photos
through the same transform; 1 = learnt as well as from clean photos, lower = stronger protection; n/a on a toy
model; those clean attacks run even when 'none' is not among the methods) and the face detection rate on the
clean set_C photos (the detector's floor).

Example (the paper's protocol on a real SD 2.1-base folder):
  gapdiff evaluate data/ --out eval_out --protocol paper --model sd21-base/ --device cuda \\
      --method none --method G.safetensors --method aspl"""


# the registered face backends (gapdiff_core.metrics.faces.DETECTORS / EMBEDDERS; a test keeps them equal), spelled
# out so that building the parser imports no engine module
DETECTORS = ("retinaface-mobilenet", "retinaface-r50", "retinaface-facexlib", "yunet")
EMBEDDERS = ("sface", "arcface-r100")


def add_arguments(p) -> None:
    # choices spelled out (evaluation.PROTOCOLS): building the parser imports no engine module
    p.format_help = _with_transform_list(p.format_help)
    p.add_argument("data", help="photos: <identity>/set_B, set_C (Anti-DreamBooth layout) or a plain folder")
    p.add_argument("--out", default="eval_out", help="output folder (default eval_out)")
    p.add_argument("--cache", default=None, help="stage cache folder (default OUT/cache)")
    p.add_argument("--protocol", choices=("paper",), default=None,
                   help="a named protocol: 'paper' sets every setting the paper fixes (flags given as well override "
                        "it; the report shows both)")
    p.add_argument("--method", action="append", dest="methods", default=None,
                   help="protection: none, a generator checkpoint (or gap-diff:CKPT), or an iterative method run "
                        "against --model (aspl, fsmg, photoguard, mist, ace, metacloak, caat, simac; NAME:tiny for "
                        "its short schedule), or random-noise (the control) (repeatable; default: none)")
    p.add_argument("--transform", action="append", dest="transforms", default=None, metavar="SPEC",
                   help="transform between protection and the attack, a registry spec (listed below): jpeg:75, "
                        "resize:1080,side=long|jpeg:75, platform:instagram, diffpure:0.1 (purifications run through "
                        "--model) (repeatable; default: none; the paper protocol: none and jpeg:70)")
    p.add_argument("--budget", action="append", dest="budgets", type=options.budget, default=None,
                   help="budget in grey levels on the 0-255 scale, the same for every method (repeatable; default 8; "
                        "the paper protocol runs each method at its published budget unless this is given)")
    p.add_argument("--noise-control", action="store_true",
                   help="add a random-noise row (±budget sign noise) at every budget a protection runs at (the "
                        "paper protocol does)")
    options.protection_function(p)
    p.add_argument("--generator-precision", choices=("auto", "fp32", "bf16", "fp16"), default=None,
                   help="precision of GAP-Diff generators (default auto; the paper protocol: fp32, as the paper)")
    p.add_argument("--reference-numerics", choices=("corrected", "released"), default=None,
                   help="how ASPL, SimAC and MetaCloak fine-tune their surrogate: corrected (default: fp32, a real "
                        "gradient clip) or released (their released code: pure-bf16 weights, a no-op clip; the "
                        "paper protocol)")
    p.add_argument("--model", default="tiny", help="surrogate to attack: tiny, a diffusers folder or a checkpoint")
    p.add_argument("--preset", default=None, help="attack preset (default: the protocol's, else tiny-lora for "
                                                  "tiny and lora otherwise)")
    p.add_argument("--attack-steps", type=int, default=None, help="override the preset's training steps")
    p.add_argument("--num-class-images", type=int, default=None, help="override the preset's number of class images")
    p.add_argument("--class-images", default=None, metavar="DIR",
                   help="a folder of class images (e.g. the authors' set: SD 2.1-base, PNDM, bf16) for the attack "
                        "and the protections' prior preservation, instead of images generated by --model (DDIM)")
    p.add_argument("--resolution", type=int, default=None, help="attack/generation resolution (default: the "
                                                                "protocol's, else the preset's or model's)")
    p.add_argument("--images-per-prompt", type=int, default=None, help="default 4 (paper protocol 30)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps per image (default 30; paper 100)")
    p.add_argument("--guidance", type=float, default=None, help="CFG scale (default 7.5)")
    p.add_argument("--scheduler", default=None, help="sampling scheduler: ddim, pndm, dpm++, euler, ddpm "
                                                     "(default ddim; paper pndm)")
    p.add_argument("--generation-precision", choices=("fp32", "fp16", "bf16"), default=None,
                   help="precision of the sampling (default fp32; the paper protocol: fp16 as the paper, on CUDA "
                        "only: elsewhere fp32 runs and the report says so)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the attack, the sampling, the identity-gain draws and (--official-mode) the "
                        "generator's dropout (default 0)")
    p.add_argument("--serfiq-passes", type=int, default=None, help="SER-FIQ dropout passes T (default 100)")
    p.add_argument("--detector", choices=DETECTORS, default=None,
                   help="face detector of FDFR, ISM and the face-quality scores (default retinaface-mobilenet, the "
                        "paper's RetinaFace family; YuNet misses faces that fill the frame; closest to the paper: "
                        "retinaface-r50 with --detect-upscale 1024, weights from --face-models)")
    p.add_argument("--embedder", choices=EMBEDDERS, default=None,
                   help="face embedder of ISM (default sface; closest to the paper: arcface-r100, from --face-models; "
                        "SER-FIQ needs sface's dropout head and is left out with another)")
    p.add_argument("--face-models", default=None, metavar="DIR",
                   help="folder of the face weights you supply: retinaface_r50.onnx (retinaface-r50), "
                        "detection_Resnet50_Final.pth (retinaface-facexlib), arcface_r100.onnx or glintr100.onnx "
                        "(arcface-r100); nothing is downloaded")
    p.add_argument("--detect-upscale", type=int, default=None, metavar="SHORT_SIDE",
                   help="detect faces on the photos upscaled to this short side (the paper's detector: 1024; "
                        "default: at their own size)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, mps (default cpu)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--executor", choices=("serial", "ray"), default="serial",
                   help="serial (one process; default) or ray: the stages of every cell as Ray tasks through the "
                        "stage cache, the same results (needs the ray extra)")
    p.add_argument("--address", default=None,
                   help="--executor ray: a Ray cluster whose nodes all see the cache folder (default: a local "
                        "instance on loopback)")


def _with_transform_list(format_help):
    """``format_help`` followed by the transform registry's list, imported only when the help is shown (building
    the parser imports no engine module)."""
    def with_transforms() -> str:
        import textwrap

        from ..preprocess import help_text

        return (format_help() + "\ntransforms (--transform SPEC; steps of a chain joined with '|'):\n"
                + textwrap.indent(help_text(), "  ") + "\n")
    return with_transforms


def build_config(args):
    """The :class:`ProtocolConfig` the arguments ask for: the named protocol (or the defaults) with every flag that
    was given applied on top."""
    from ..evaluation import ProtocolConfig, protocol_config

    overrides = {k: v for k, v in (("max_train_steps", args.attack_steps),
                                   ("num_class_images", args.num_class_images)) if v is not None}
    given = {k: v for k, v in dict(
        methods=args.methods, transforms=args.transforms, budgets=args.budgets, attack_preset=args.preset,
        resolution=args.resolution, images_per_prompt=args.images_per_prompt, generation_steps=args.steps,
        guidance_scale=args.guidance, scheduler=args.scheduler, serfiq_T=args.serfiq_passes,
        detector=args.detector, class_images=args.class_images, reference_numerics=args.reference_numerics,
        generation_precision=args.generation_precision, generator_precision=args.generator_precision,
        noise_control=args.noise_control or None, embedder=args.embedder, face_models=args.face_models,
        detect_upscale=args.detect_upscale).items() if v is not None}
    if args.budgets:  # budgets given: every method at each of them
        given["published_budgets"] = False
    common = dict(model=args.model, seed=args.seed, device=args.device, norm=args.norm,
                  official_mode=args.official_mode, attack_overrides=overrides)
    if args.protocol:
        return protocol_config(args.protocol, **common, **given)
    preset = "tiny-lora" if str(args.model).startswith("tiny") else "lora"
    return ProtocolConfig(**{"attack_preset": preset, **common, **given})


def run(args) -> int:
    import sys
    from pathlib import Path

    from ..evaluation import ProtocolRunner
    from ..evaluation.report import markdown_report, write_reports

    for flag, folder in (("--out", args.out), ("--cache", args.cache)):  # before any stage runs
        if folder is not None and Path(folder).exists() and not Path(folder).is_dir():
            print(f"gapdiff evaluate: {flag} {folder} is a file; give a folder (new or existing)", file=sys.stderr)
            return 2
    try:
        config = build_config(args)
        runner = ProtocolRunner(args.data, args.out, config, cache_dir=args.cache, progress=not args.no_progress)
        if args.executor == "ray":
            from ..evaluation.on_ray import run_on_ray

            results = run_on_ray(runner, address=args.address, progress=not args.no_progress)
        else:
            results = runner.run()
    except (ValueError, FileNotFoundError, RuntimeError, ImportError) as e:
        print(f"gapdiff evaluate: {e}", file=sys.stderr)
        return 2
    paths = write_reports(results, args.out)
    print(markdown_report(results).split("## Visibility")[0].rstrip())
    print("\nwrote " + ", ".join(str(p) for p in paths.values()))
    return 0
