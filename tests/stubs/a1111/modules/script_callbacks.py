"""Callback registry as in A1111: `on_*` append, the webui calls them later."""
callback_map = {"callbacks_ui_tabs": [], "callbacks_ui_settings": []}


def on_ui_tabs(callback):
    """`callback()` returns a list of (gr.Blocks, title, elem_id), or None."""
    callback_map["callbacks_ui_tabs"].append(callback)


def on_ui_settings(callback):
    callback_map["callbacks_ui_settings"].append(callback)


def ui_tabs_callback():
    res = []
    for c in callback_map["callbacks_ui_tabs"]:
        res += c() or []
    return res


def ui_settings_callback():
    for c in callback_map["callbacks_ui_settings"]:
        c()
