"""A1111's `launch` module as install.py sees it (modules/launch_utils.py): records run_pip instead of running it,
with the content of the constraints file (-c "path") it was given."""
import re

calls = []  # (command, desc, constraints file content or None)


def run_pip(command, desc=None, live=False):
    m = re.search(r'-c "([^"]+)"', command)
    constraints = open(m.group(1), encoding="utf-8").read() if m else None
    calls.append((command, desc, constraints))
