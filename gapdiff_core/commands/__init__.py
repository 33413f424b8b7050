"""Sub-commands of the `gapdiff` console script (see gapdiff_core.cli)."""
