"""AUTOMATIC1111 / Forge extension: the GAP-Diff tab (the same Blocks as `gapdiff app`) and a settings section.

A1111 (modules/scripts.py) puts the extension root on sys.path only while it imports this file and restores the
path afterwards, so `gapdiff_core` is imported here, at import time; later imports inside the package resolve
through the package itself. If it cannot be imported (a missing requirement), the tab says so instead of vanishing.
Outside A1111 (no `modules` package) this file does nothing. Host modules are imported here only, never in
gapdiff_core.
"""
import contextlib
import os

try:
    from modules import script_callbacks, shared
except ImportError:  # not running inside AUTOMATIC1111 / Forge
    script_callbacks = shared = None

CORE_IMPORT_ERROR = None
PRECISIONS = ["auto"]  # the core's choices once it imports: gapdiff_core.model.protector.PRECISION_CHOICES
if script_callbacks is not None:
    try:
        from gapdiff_core.model.protector import PRECISION_CHOICES
        from gapdiff_core.ui import UISettings, build_ui
        PRECISIONS = list(PRECISION_CHOICES)
    except ImportError as exc:  # shown in the tab; the rest of the webui is unaffected
        CORE_IMPORT_ERROR = exc

SECTION = ("gapdiff", "GAP-Diff")


def default_models_dir() -> str:
    """`<webui>/models/gapdiff`, the host's model folder convention."""
    try:
        from modules import paths
        return os.path.join(paths.models_path, "gapdiff")
    except (ImportError, AttributeError):
        return os.path.join("models", "gapdiff")


def _option(key: str, default):
    value = shared.opts.data.get(key) if shared is not None else None
    return default if value in (None, "") else value


def _host_lock():
    """A1111 serialises GPU work with `modules.call_queue.queue_lock`; use it so the tab never races a generation."""
    try:
        from modules import call_queue
        return call_queue.queue_lock
    except (ImportError, AttributeError):
        return contextlib.nullcontext()


def current_settings():
    """Settings read afresh on every request, so changes in the Settings tab apply without a restart."""
    from modules import devices

    lock = _host_lock()
    models_dir = _option("gapdiff_models_dir", default_models_dir())
    return UISettings(models_dir=models_dir, device=str(devices.device),
                      precision=_option("gapdiff_precision", "auto"),
                      default_budget=float(_option("gapdiff_default_budget", 8)), work_lock=lambda: lock,
                      surrogate_dirs=(models_dir, _host_checkpoints_dir()))


def _host_checkpoints_dir() -> str:
    """The webui's own SD checkpoints (models/Stable-diffusion), which the Robustness tab may use as surrogates."""
    own = getattr(getattr(shared, "cmd_opts", None), "ckpt_dir", None)  # --ckpt-dir
    return own or os.path.join(os.path.dirname(default_models_dir()), "Stable-diffusion")


def on_ui_settings():
    import gradio as gr

    opts, info = shared.opts, shared.OptionInfo
    opts.add_option("gapdiff_models_dir", info(
        default_models_dir(), "Folder with GAP-Diff generator checkpoints (.safetensors / .pth)",
        section=SECTION).info("demo generators are labelled in the tab; press Refresh there after adding files"))
    opts.add_option("gapdiff_default_budget", info(
        8, "Default budget (grey levels on the 0-255 scale; 8 = the paper's setting)", gr.Slider,
        {"minimum": 1, "maximum": 32, "step": 1}, section=SECTION))
    opts.add_option("gapdiff_precision", info(
        "auto", "Generator precision", gr.Radio, {"choices": PRECISIONS}, section=SECTION).info(
        "auto: the fastest precision within 1 grey level of fp32 on the host's device"))


def on_ui_tabs():
    if CORE_IMPORT_ERROR is not None:
        return [(_unavailable_tab(CORE_IMPORT_ERROR), "GAP-Diff", "gapdiff")]
    return [(build_ui(current_settings), "GAP-Diff", "gapdiff")]


def _unavailable_tab(exc: Exception):
    """A tab that names what is missing, so a failed install is visible where the user looks for the tool."""
    import gradio as gr

    with gr.Blocks(analytics_enabled=False) as blocks:
        gr.Markdown(f"## GAP-Diff could not start\n\n`{type(exc).__name__}: {exc}`\n\nThe extension's install.py "
                    "installs what is missing at the next launch (not with --skip-install); its output is in the "
                    "console.")
    return blocks


if script_callbacks is not None:
    script_callbacks.on_ui_settings(on_ui_settings)
    script_callbacks.on_ui_tabs(on_ui_tabs)
