"""The Gradio Blocks shared by the standalone app and the A1111 / Forge tab: Protect, Robustness, Evaluate, About.

The page stays compact until there is something to show: results appear under the Protect button, Cancel is active
only while work runs, and the status says what is happening or nothing (never a stale step beside an error)."""
from pathlib import Path
from typing import Callable

import gradio as gr

from . import evaluate_tab, generators, protect_tab, robustness_tab, robustness_text
from ..common.budget import BUDGET_MAX, BUDGET_MIN
from ..model.checkpoint import GENERATOR_SUFFIXES
from ..model.protector import MODES
from .compat import FILE_TYPE, listen, make, when_done
from .errors import readable
from .settings import UIError, UISettings
from .text import ABOUT_MARKDOWN
from .uploads import as_list, file_path, load_upload, new_output_dir

# Gradio's gallery grid keeps every column at least 100 px wide, so on a phone 4 columns (8 thumbnails) run past
# the right edge; there, the galleries take 2 (5) columns that shrink. Passed to launch() by the standalone app.
PAGE_CSS = """@media (max-width: 640px) {
  #gapdiff_gallery .grid-container { grid-template-columns: repeat(2, minmax(0, 1fr)) !important; }
  #gapdiff_thumbs .grid-container { grid-template-columns: repeat(5, minmax(0, 1fr)) !important; }
}"""
LOADING_SHARE = 0.15  # of a Protect request's progress bar: loading the generator; the photos share the rest
SURROGATE_CHOICES = ("none", "tiny built-in model (DEMO)", "local model (path below)")


def build_ui(settings: UISettings | Callable[[], UISettings] | None = None) -> gr.Blocks:
    """Build the GAP-Diff Blocks. `settings` may be a callable so a host's settings apply without a restart."""
    get = settings if callable(settings) else (lambda s=settings or UISettings(): s)
    initial = get()
    choices = generators.generator_choices(initial.models_dir)
    first = generators.initial_choice(choices, initial.models_dir, initial.preferred_generator)

    with gr.Blocks(analytics_enabled=False, title="GAP-Diff photo protection") as blocks:
        gr.Markdown("# GAP-Diff photo protection\nAdds a small, JPEG-robust perturbation to face photos so that "
                    "DreamBooth-style fine-tuning on them fails. Read the **About** tab for what it does and does not do.")
        with gr.Accordion("Generator", open=True):
            with make(gr.Row, equal_height=False):  # 3.41 defaults to True: the button grew as tall as the upload
                generator = make(gr.Dropdown, choices=choices, value=first,
                                 label=f"Generator in the models folder ({initial.models_dir or 'not set'})",
                                 elem_id="gapdiff_generator", scale=3)
                refresh = make(gr.Button, value="Refresh", elem_id="gapdiff_refresh", scale=0, size="sm",
                               min_width=80)
                checkpoint = make(gr.File, label="…or upload a checkpoint (.safetensors / .pth)",
                                  file_types=list(GENERATOR_SUFFIXES), type=FILE_TYPE, height=110,
                                  elem_id="gapdiff_checkpoint", scale=2)
            generator_info = gr.Markdown(generators.describe_choice(first, None, initial.models_dir),
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
                              type=FILE_TYPE, height=130, elem_id="gapdiff_photos")
                # fit_columns=False: one photo takes one column, whole, not the full width cropped by the height
                thumbs = make(gr.Gallery, label="Photos to protect", columns=10, fit_columns=False, height=150,
                              object_fit="contain", allow_preview=False, interactive=False, visible=False,
                              elem_id="gapdiff_thumbs")
                with make(gr.Row, equal_height=True):
                    protect_btn = make(gr.Button, value="Protect", variant="primary", elem_id="gapdiff_protect",
                                       scale=4)
                    cancel_btn = make(gr.Button, value="Cancel", variant="secondary", interactive=False,
                                      elem_id="gapdiff_cancel", scale=1, min_width=90)
                status = gr.Markdown("", elem_id="gapdiff_status")
                with make(gr.Column, visible=False, elem_id="gapdiff_results") as results:
                    gallery = make(gr.Gallery, label="Protected photos (lossless PNG)", columns=4, fit_columns=False,
                                   height=340, object_fit="contain", format="png", elem_id="gapdiff_gallery")
                    downloads = make(gr.File, label="Download: each protected PNG (metadata stripped) and all as a "
                                     "zip", file_count="multiple", interactive=False, elem_id="gapdiff_downloads")
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
                with make(gr.Column, visible=False, elem_id="gapdiff_rb_results") as rb_results:  # once there is one
                    with gr.Row():
                        rb_clean_out = make(gr.Image, label="Clean after JPEG", type="filepath", interactive=False,
                                            format="png")
                        rb_prot_out = make(gr.Image, label="Protected after JPEG", type="filepath",
                                           interactive=False, format="png")
                        rb_pert_out = make(gr.Image, label="Perturbation left after JPEG, amplified",
                                           type="filepath", interactive=False, format="png")
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
                about_models = gr.Markdown(generators.models_markdown(initial.models_dir),
                                           elem_id="gapdiff_about_models")

        # ------------------------------------------------------------ events
        def refresh_generators(current):
            s = get()
            new = generators.generator_choices(s.models_dir)
            value = current if current in new else (new[0] if new else None)
            return (gr.update(choices=new, value=value), generators.describe_choice(value, None, s.models_dir),
                    generators.models_markdown(s.models_dir))

        def describe(choice, ckpt):
            return generators.describe_choice(choice, ckpt, get().models_dir)

        listen(refresh.click, readable(refresh_generators), inputs=[generator],
               outputs=[generator, generator_info, about_models], api_name="list_generators", queue=False)
        for picked in (generator.change, checkpoint.change):  # an uploaded checkpoint wins over the choice
            listen(picked, readable(describe), inputs=[generator, checkpoint], outputs=[generator_info], queue=False,
                   api_name=False)

        def show_thumbnails(uploads):
            paths = [file_path(u) for u in as_list(uploads)]
            return gr.update(value=paths or None, visible=bool(paths))

        listen(photos.change, readable(show_thumbnails), inputs=[photos], outputs=[thumbs], queue=False,
               api_name=False)

        def check_request(uploads, choice, ckpt):
            generators.check_protect_request(uploads, choice, ckpt, get())

        def clear():
            return "", gr.update(visible=False)

        def protect(uploads, choice, ckpt, budget_value, mode_value, progress=gr.Progress()):
            s = get()
            uploads = as_list(uploads)
            path = generators.check_protect_request(uploads, choice, ckpt, s)
            progress(0.0, desc="Loading the generator")
            with s.work_lock():
                protector = generators.get_protector(path, budget_value, mode_value, s.device, s.precision)
            demo = protector.info.demo
            out = new_output_dir()
            results, failures = [], []
            for i, up in enumerate(uploads):
                def step(done, what, i=i):
                    share = LOADING_SHARE + (1 - LOADING_SHARE) * (i + done) / len(uploads)
                    progress(share, desc=f"Photo {i + 1} of {len(uploads)}: {what}")
                try:
                    with s.work_lock():
                        results.append(protect_tab.protect_photo(protector, up, out, i, demo, s.max_pixels, step))
                except UIError as exc:
                    failures.append(str(exc))
            if not results:
                raise UIError("No photo could be protected:\n" + "\n".join(failures))
            progress(1.0, desc="Writing the zip")
            files = [str(r.protected_png) for r in results] + [str(protect_tab.zip_outputs(results, out, demo))]
            caption = "DEMO — " if demo else ""
            items = [(str(r.protected_png), f"{caption}{r.name}") for r in results]
            summary = protect_tab.summary_markdown(results, failures, protector.budget, protector.info)
            state = [protect_tab.result_dict(r, demo) for r in results]
            return (items, files, state[0]["original"], state[0]["protected"], state[0]["perturbation"],
                    summary, protect_tab.photo_markdown(state[0]), state, gr.update(visible=True))

        # Every click first clears the status and the last results, so an error never sits beside a stale step or
        # another request's photos. A request that cannot start (no photo, no generator) is then refused by a step
        # without outputs: one message, and no pane turns into an error. Cancel is active only while one runs.
        cleared = listen(protect_btn.click, clear, outputs=[status, results], queue=False, api_name=False)
        checked = listen(cleared.success, readable(check_request), inputs=[photos, generator, checkpoint],
                         outputs=[], api_name=False, concurrency_limit=None, concurrency_id="gapdiff_check")
        armed = listen(checked.success, lambda: gr.update(interactive=True), outputs=[cancel_btn], queue=False,
                       api_name=False)
        protect_event = listen(
            armed.success, readable(protect), inputs=[photos, generator, checkpoint, budget, mode],
            outputs=[gallery, downloads, before, after, perturbation, status, photo_stats, results_state, results],
            api_name="protect", concurrency_limit=1, concurrency_id="gapdiff_gpu", show_progress_on=[status],
            scroll_to_output=True)
        when_done(protect_event, lambda: gr.update(interactive=False), outputs=[cancel_btn], queue=False,
                  api_name=False)
        listen(cancel_btn.click, lambda: (gr.update(interactive=False), "Cancelled: no photo of that request was "
                                          "kept."), outputs=[cancel_btn, status], cancels=[protect_event],
               queue=False, api_name=False)

        def select_photo(state, evt: gr.SelectData):
            if not state or evt.index is None:
                return gr.update(), gr.update(), gr.update(), ""
            index = evt.index if isinstance(evt.index, int) else evt.index[0]
            r = state[min(index, len(state) - 1)]
            return r["original"], r["protected"], r["perturbation"], protect_tab.photo_markdown(r)

        listen(gallery.select, readable(select_photo), inputs=[results_state],
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
            if sur is None:
                table = robustness_text.NO_SURROGATE
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
                table = robustness_text.survival_markdown(matrix, method, skipped)
            return (table, str(r.clean_jpeg_png), str(r.protected_jpeg_png), str(r.perturbation_png),
                    r.markdown, gr.update(visible=True))

        listen(rb_btn.click, readable(robustness),
               inputs=[rb_clean, rb_protected, quality, surrogate, surrogate_path, generator, checkpoint, budget,
                       mode, rb_presets, rb_specs],
               outputs=[rb_matrix, rb_clean_out, rb_prot_out, rb_pert_out, rb_report, rb_results],
               api_name="robustness",
               concurrency_limit=1, concurrency_id="gapdiff_gpu")

        def offer_presets(surrogate_choice, ticked):
            offered = robustness_tab.preset_choices(surrogate_choice != SURROGATE_CHOICES[0])
            return gr.update(choices=offered, value=[t for t in ticked or () if t in offered])

        listen(surrogate.change, readable(offer_presets), inputs=[surrogate, rb_presets], outputs=[rb_presets],
               queue=False, api_name=False)

        def evaluate(refs, gen, progress=gr.Progress()):
            progress(0.1, desc="Detecting and embedding faces")
            return evaluate_tab.evaluate_uploads(as_list(gen), as_list(refs), get())

        listen(ev_btn.click, readable(evaluate), inputs=[ev_refs, ev_gen], outputs=[ev_report],
               api_name="evaluate", concurrency_limit=1, concurrency_id="gapdiff_metrics")
    return blocks


# ------------------------------------------------------------------ helpers


def _device_name(device) -> str:
    from ..model.protector import resolve_device
    return str(resolve_device(str(device)))
