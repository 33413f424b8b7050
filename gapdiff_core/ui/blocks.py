"""The Gradio Blocks shared by the standalone app and the A1111 / Forge tab: Protect, Robustness, Evaluate, About."""
import functools
import inspect
import logging
from pathlib import Path
from typing import Callable

import gradio as gr
import torch

from . import evaluate_tab, generators, protect_tab, robustness_tab
from ..common.budget import BUDGET_MAX, BUDGET_MIN
from ..metrics.directions import format_value
from ..model.checkpoint import GENERATOR_SUFFIXES
from ..model.protector import MODES
from .compat import FILE_TYPE, listen, make
from .settings import UIError, UISettings
from .text import ABOUT_MARKDOWN
from .uploads import as_list, file_path, load_upload, new_output_dir

log = logging.getLogger("gapdiff.ui")
SURROGATE_CHOICES = ("none", "tiny built-in model (DEMO)", "local model (path below)")


def _out_of_memory(exc: Exception) -> bool:
    """Host RAM (MemoryError) or an accelerator's memory (torch.OutOfMemoryError, alias torch.cuda.OutOfMemoryError:
    CUDA, ROCm). Apple's MPS backend raises a plain RuntimeError ("MPS backend out of memory ..."), so for a
    RuntimeError the text is the fallback test."""
    if isinstance(exc, (MemoryError, torch.cuda.OutOfMemoryError)):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def _readable(fn: Callable) -> Callable:
    """Show UIError messages as they are and anything unexpected as one line (traceback only in the log)."""
    def handle(exc: Exception):
        if isinstance(exc, gr.Error):
            return exc
        if isinstance(exc, UIError):
            return gr.Error(str(exc))
        if _out_of_memory(exc):
            return gr.Error("Out of memory: use fewer or smaller photos, mode 'working', or a smaller precision.")
        log.exception("gapdiff UI: unexpected error in %s", fn.__name__)
        return gr.Error(f"Unexpected error ({type(exc).__name__}: {exc}). Details are in the server log.")

    if inspect.isgeneratorfunction(fn):
        def wrapped_gen(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - turned into a message for the user
                raise handle(exc) from None
        return functools.wraps(fn)(wrapped_gen)

    def wrapped(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001
            raise handle(exc) from None
    return functools.wraps(fn)(wrapped)


def build_ui(settings: UISettings | Callable[[], UISettings] | None = None) -> gr.Blocks:
    """Build the GAP-Diff Blocks. `settings` may be a callable so a host's settings apply without a restart."""
    get = settings if callable(settings) else (lambda s=settings or UISettings(): s)
    initial = get()
    choices = generators.generator_choices(initial.models_dir)

    with gr.Blocks(analytics_enabled=False, title="GAP-Diff photo protection") as blocks:
        gr.Markdown("# GAP-Diff photo protection\nAdds a small, JPEG-robust perturbation to face photos so that "
                    "DreamBooth-style fine-tuning on them fails. Read the **About** tab for what it does and does not do.")
        with gr.Accordion("Generator", open=True):
            with make(gr.Row, equal_height=False):  # 3.41 defaults to True: the button grew as tall as the upload
                generator = make(gr.Dropdown, choices=choices, value=choices[0] if choices else None,
                                 label=f"Generator in the models folder ({initial.models_dir or 'not set'})",
                                 elem_id="gapdiff_generator", scale=3)
                refresh = make(gr.Button, value="Refresh", elem_id="gapdiff_refresh", scale=0, size="sm",
                               min_width=80)
                checkpoint = make(gr.File, label="…or upload a checkpoint (.safetensors / .pth)",
                                  file_types=list(GENERATOR_SUFFIXES), type=FILE_TYPE,
                                  elem_id="gapdiff_checkpoint", scale=2)
            generator_info = gr.Markdown(_describe_choice(choices[0] if choices else None, initial),
                                         elem_id="gapdiff_generator_info")
            with gr.Row():
                budget = make(gr.Slider, minimum=BUDGET_MIN, maximum=BUDGET_MAX, step=1,
                              value=float(initial.default_budget),
                              label="Budget (grey levels on the 0-255 scale; 8 = the paper's setting)",
                              elem_id="gapdiff_budget")
                mode = make(gr.Radio, choices=list(MODES), value=MODES[0], label="Mode",
                            info="working: computed at the fine-tuning resolution (fast); native: full resolution",
                            elem_id="gapdiff_mode")

        with gr.Tabs():
            with gr.Tab("Protect", elem_id="gapdiff_tab_protect"):
                photos = make(gr.File, label="Photos (one or many)", file_count="multiple", file_types=["image"],
                              type=FILE_TYPE, elem_id="gapdiff_photos")
                with gr.Row():
                    protect_btn = make(gr.Button, value="Protect", variant="primary", elem_id="gapdiff_protect")
                    cancel_btn = make(gr.Button, value="Cancel", variant="stop", elem_id="gapdiff_cancel")
                status = gr.Markdown("", elem_id="gapdiff_status")
                gallery = make(gr.Gallery, label="Protected photos (lossless PNG)", columns=4, height=420,
                               object_fit="contain", format="png", elem_id="gapdiff_gallery")
                downloads = make(gr.File, label="Download: each protected PNG (metadata stripped) and all as a zip",
                                 file_count="multiple", interactive=False, elem_id="gapdiff_downloads")
                gr.Markdown("Select a photo in the gallery to compare it with its original.")
                with gr.Row():
                    before = make(gr.Image, label="Before (original)", type="filepath", interactive=False,
                                  format="png", elem_id="gapdiff_before")
                    after = make(gr.Image, label="After (protected)", type="filepath", interactive=False,
                                 format="png", elem_id="gapdiff_after")
                    perturbation = make(gr.Image, label="Perturbation, amplified", type="filepath",
                                        interactive=False, format="png", elem_id="gapdiff_perturbation")
                photo_stats = gr.Markdown("", elem_id="gapdiff_photo_stats")
                results_state = gr.State([])

            with gr.Tab("Robustness", elem_id="gapdiff_tab_robustness"):
                gr.Markdown("Platforms re-compress and resize uploads, and an attacker may try to wash the protection "
                            "out before fine-tuning. Pick what may happen to the photos and see, per transform, how "
                            "much of the protection survives.")
                with gr.Row():
                    rb_clean = make(gr.File, label="Clean photo(s): several give a verdict with a 95% interval",
                                    file_count="multiple", file_types=["image"], type=FILE_TYPE,
                                    elem_id="gapdiff_rb_clean")
                    rb_protected = make(gr.File, label="Protected photo (optional, with one clean photo: otherwise "
                                        "the generator above protects the clean ones)", file_types=["image"],
                                        type=FILE_TYPE, elem_id="gapdiff_rb_protected")
                with gr.Row():
                    surrogate = make(gr.Radio, choices=list(SURROGATE_CHOICES), value=SURROGATE_CHOICES[0],
                                     label="Surrogate model that measures the protection (and runs purifications)",
                                     elem_id="gapdiff_surrogate")
                    roots = ", ".join(str(r) for r in initial.surrogate_roots()) or "no folder set"
                    surrogate_path = make(gr.Textbox, label=f"Local surrogate: the name of a diffusers folder or SD "
                                          f".safetensors in {roots}", elem_id="gapdiff_surrogate_path")
                with gr.Row():
                    rb_presets = make(gr.CheckboxGroup, choices=robustness_tab.preset_choices(False),
                                      value=list(robustness_tab.DEFAULT_PRESETS), label="What happens to the photos",
                                      elem_id="gapdiff_rb_presets")
                    rb_specs = make(gr.Textbox, label="More transforms (one per line)", lines=2,
                                    placeholder="webp:80\nresize:1080,side=long|jpeg:75",
                                    info=robustness_tab.SPEC_HELP + " Chain steps with '|'.",
                                    elem_id="gapdiff_rb_specs")
                    quality = make(gr.Slider, minimum=10, maximum=100, step=1, value=75,
                                   label="JPEG quality of the before/after images", elem_id="gapdiff_quality")
                rb_btn = make(gr.Button, value="Check what survives", variant="primary", elem_id="gapdiff_rb_run")
                rb_matrix = gr.Markdown("", elem_id="gapdiff_rb_matrix")
                with gr.Row():
                    rb_clean_out = make(gr.Image, label="Clean after JPEG", type="filepath", interactive=False,
                                        format="png")
                    rb_prot_out = make(gr.Image, label="Protected after JPEG", type="filepath", interactive=False,
                                       format="png")
                    rb_pert_out = make(gr.Image, label="Perturbation left after JPEG, amplified", type="filepath",
                                       interactive=False, format="png")
                rb_report = gr.Markdown("", elem_id="gapdiff_rb_report")

            with gr.Tab("Evaluate", elem_id="gapdiff_tab_evaluate"):
                gr.Markdown("After a DreamBooth / LoRA test attack: upload the person's clean photos and the photos "
                            "the fine-tuned model generated, and get the protocol metrics (FDFR, ISM, BRISQUE, "
                            "SER-FIQ, and the QualityFace and face-box BRISQUE diagnostics) with the backend "
                            "that computed each.")
                with gr.Row():
                    ev_refs = make(gr.File, label="Clean reference photos", file_count="multiple",
                                   file_types=["image"], type=FILE_TYPE, elem_id="gapdiff_ev_refs")
                    ev_gen = make(gr.File, label="Generated photos", file_count="multiple", file_types=["image"],
                                  type=FILE_TYPE, elem_id="gapdiff_ev_gen")
                ev_btn = make(gr.Button, value="Evaluate", variant="primary", elem_id="gapdiff_ev_run")
                ev_report = gr.Markdown("", elem_id="gapdiff_ev_report")

            with gr.Tab("About", elem_id="gapdiff_tab_about"):
                gr.Markdown(ABOUT_MARKDOWN)
                about_models = gr.Markdown(_models_markdown(initial), elem_id="gapdiff_about_models")

        # ------------------------------------------------------------ events
        def refresh_generators(current):
            s = get()
            new = generators.generator_choices(s.models_dir)
            value = current if current in new else (new[0] if new else None)
            return gr.update(choices=new, value=value), _describe_choice(value, s), _models_markdown(s)

        listen(refresh.click, _readable(refresh_generators), inputs=[generator],
               outputs=[generator, generator_info, about_models], api_name="list_generators", queue=False)
        listen(generator.change, _readable(lambda c: _describe_choice(c, get())), inputs=[generator],
               outputs=[generator_info], queue=False, api_name="describe_generator")

        def check_request(uploads, choice, ckpt):
            generators.check_protect_request(uploads, choice, ckpt, get())

        def protect(uploads, choice, ckpt, budget_value, mode_value, progress=gr.Progress()):
            s = get()
            uploads = as_list(uploads)
            path = generators.check_protect_request(uploads, choice, ckpt, s)
            progress(0, desc="Loading the generator")
            with s.work_lock():
                protector = generators.get_protector(path, budget_value, mode_value, s.device, s.precision)
            demo = protector.info.demo
            out = new_output_dir()
            results, failures = [], []
            skip = gr.update()
            for i, up in enumerate(uploads):
                progress(i / len(uploads), desc=f"Protecting photo {i + 1} of {len(uploads)}")
                yield (skip, skip, skip, skip, skip, f"Protecting photo {i + 1} of {len(uploads)}…", skip, skip)
                try:
                    with s.work_lock():
                        results.append(protect_tab.protect_photo(protector, up, out, i, demo, s.max_pixels))
                except UIError as exc:
                    failures.append(str(exc))
            if not results:
                raise UIError("No photo could be protected:\n" + "\n".join(failures))
            files = [str(r.protected_png) for r in results] + [str(protect_tab.zip_outputs(results, out, demo))]
            caption = "DEMO — " if demo else ""
            items = [(str(r.protected_png), f"{caption}{r.name}") for r in results]
            summary = protect_tab.summary_markdown(results, failures, protector.budget, protector.info)
            state = [_result_dict(r, demo) for r in results]
            first = state[0]
            yield (items, files, first["original"], first["protected"], first["perturbation"], summary,
                   _photo_markdown(first, demo), state)

        # A request that cannot start (no photo, no generator) is refused by a step without outputs: one message,
        # and the result panes keep what they show instead of each turning into an error.
        checked = listen(protect_btn.click, _readable(check_request), inputs=[photos, generator, checkpoint],
                         outputs=[], api_name=False, concurrency_limit=None, concurrency_id="gapdiff_check")
        protect_event = listen(
            checked.success, _readable(protect), inputs=[photos, generator, checkpoint, budget, mode],
            outputs=[gallery, downloads, before, after, perturbation, status, photo_stats, results_state],
            api_name="protect", concurrency_limit=1, concurrency_id="gapdiff_gpu")
        listen(cancel_btn.click, None, cancels=[protect_event], queue=False)

        def select_photo(state, evt: gr.SelectData):
            if not state or evt.index is None:
                return gr.update(), gr.update(), gr.update(), ""
            index = evt.index if isinstance(evt.index, int) else evt.index[0]
            r = state[min(index, len(state) - 1)]
            return r["original"], r["protected"], r["perturbation"], _photo_markdown(r, r["demo"])

        listen(gallery.select, _readable(select_photo), inputs=[results_state],
               outputs=[before, after, perturbation, photo_stats], queue=False, api_name=False)

        def robustness(clean, prot, q, surrogate_choice, surrogate_dir, choice, ckpt, budget_value, mode_value,
                       presets=(), specs="", progress=gr.Progress()):
            s = get()
            clean = as_list(clean)
            if not clean:
                raise UIError("Upload the clean photo first.")
            if prot and len(clean) > 1:
                raise UIError("A protected photo goes with one clean photo: upload one clean photo, or leave the "
                              "protected one out and let the generator protect them all.")
            transforms, skipped = robustness_tab.chosen_transforms(presets, specs,
                                                                   surrogate_choice != SURROGATE_CHOICES[0])
            protector = None
            if not prot:
                path = generators.resolve_generator(choice, ckpt, s.models_dir)
                with s.work_lock():
                    protector = generators.get_protector(path, budget_value, mode_value, s.device, s.precision)
            sur = None
            if surrogate_choice == SURROGATE_CHOICES[1]:
                progress(0.05, desc="Loading the tiny demo surrogate")
                sur = robustness_tab.load_surrogate_cached("tiny", _device_name(s.device))
            elif surrogate_choice == SURROGATE_CHOICES[2]:
                local = robustness_tab.resolve_surrogate_path(surrogate_dir, s)
                progress(0.05, desc="Loading the surrogate")
                sur = robustness_tab.load_surrogate_cached(str(local), _device_name(s.device))
            progress(0.1, desc="Compressing as JPEG")
            with s.work_lock():
                r = robustness_tab.robustness_check(clean[0], prot or None, int(q), new_output_dir(), protector,
                                                    float(budget_value), s.max_pixels)
            demo_note = f"⚠️ {generators.DEMO_WARNING}\n\n" if protector is not None and protector.info.demo else ""
            if sur is None:
                table = robustness_tab.NO_SURROGATE
            elif not transforms:
                table = "Tick or type at least one transform to measure."
            else:
                photos = [load_upload(Path(file_path(u)), s.max_pixels).tensor() for u in clean]
                protected = load_upload(Path(file_path(prot)), s.max_pixels, "Protected photo").tensor() \
                    if prot else None

                def step(done, total, _):
                    progress(0.1 + 0.9 * done / total, desc=f"Measuring: {done} of {total} (photo × transform)")
                with s.work_lock():
                    matrix, method = robustness_tab.measure_survival(
                        photos, transforms, sur, protector=protector, protected=protected,
                        budget=float(budget_value), device=_device_name(s.device), progress=step)
                table = robustness_tab.survival_markdown(matrix, method, skipped)
            return (demo_note + table, str(r.clean_jpeg_png), str(r.protected_jpeg_png), str(r.perturbation_png),
                    r.markdown)

        listen(rb_btn.click, _readable(robustness),
               inputs=[rb_clean, rb_protected, quality, surrogate, surrogate_path, generator, checkpoint, budget,
                       mode, rb_presets, rb_specs],
               outputs=[rb_matrix, rb_clean_out, rb_prot_out, rb_pert_out, rb_report], api_name="robustness",
               concurrency_limit=1, concurrency_id="gapdiff_gpu")

        def offer_presets(surrogate_choice, ticked):
            offered = robustness_tab.preset_choices(surrogate_choice != SURROGATE_CHOICES[0])
            return gr.update(choices=offered, value=[t for t in ticked or () if t in offered])

        listen(surrogate.change, _readable(offer_presets), inputs=[surrogate, rb_presets], outputs=[rb_presets],
               queue=False, api_name=False)

        def evaluate(refs, gen, progress=gr.Progress()):
            progress(0.1, desc="Detecting and embedding faces")
            return evaluate_tab.evaluate_uploads(as_list(gen), as_list(refs), get())

        listen(ev_btn.click, _readable(evaluate), inputs=[ev_refs, ev_gen], outputs=[ev_report],
               api_name="evaluate", concurrency_limit=1, concurrency_id="gapdiff_metrics")
    return blocks


# ------------------------------------------------------------------ helpers


def _device_name(device) -> str:
    from ..model.protector import resolve_device
    return str(resolve_device(str(device)))


def _result_dict(r: protect_tab.PhotoResult, demo: bool) -> dict:
    return {"name": r.name, "original": str(r.original_png), "protected": str(r.protected_png),
            "perturbation": str(r.perturbation_png), "max_change": r.max_change, "psnr": r.psnr_db, "ssim": r.ssim,
            "demo": demo}


def _photo_markdown(r: dict, demo: bool) -> str:
    psnr = f"{format_value(r['psnr'], 2)} dB"
    gain = Path(r["perturbation"]).stem.rsplit("_x", 1)[-1]
    text = (f"**{r['name']}**: largest change {r['max_change']:.0f} grey levels, PSNR {psnr}, SSIM {r['ssim']:.4f}. "
            f"The perturbation is shown ×{gain}; mid-grey means no change.")
    return ("DEMO output — not protection. " if demo else "") + text


def _describe_choice(choice: str | None, s: UISettings) -> str:
    if not choice:
        return (f"No generator found in the models folder ({s.models_dir or 'not set'}). Put a checkpoint there "
                "(the authors' G_per16_pretrain.pth, or one trained with `gapdiff train`) and press Refresh, or "
                "upload one.")
    for e in generators.list_generators(s.models_dir):
        if e.choice == choice:
            return e.error or generators.describe_generator(e.info)
    return "Press Refresh: the models folder changed."


def _models_markdown(s: UISettings) -> str:
    entries = generators.list_generators(s.models_dir)
    if not entries:
        return f"No generators in the models folder ({s.models_dir or 'not set'})."
    lines = [f"Generators in {s.models_dir}:"]
    for e in entries:
        lines.append(f"- `{e.path.name}`: " + (e.error or generators.describe_generator(e.info).replace("\n\n", " ")))
    return "\n".join(lines)
