"""A1111's `launch` module as install.py sees it (modules/launch_utils.py): records run_pip instead of running it."""
calls = []
installed = set()  # import names the stand-in host reports as installed


def is_installed(package):
    return package in installed


def run_pip(command, desc=None, live=False):
    calls.append((command, desc))
