"""Stand-in for the parts of ComfyUI's `comfy` package that the GAP-Diff nodes touch (tests only)."""
