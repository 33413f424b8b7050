"""Smallest faithful stand-ins for the AUTOMATIC1111 `modules.*` the GAP-Diff tab uses (signatures as in
A1111 1.10: modules/script_callbacks.py, shared.py/options.py, devices.py, paths.py, call_queue.py)."""
