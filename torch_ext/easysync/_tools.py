"""Console scripts: easysync-hub (the network-mode hub, built with the package)."""

import os
import sys


def built_dir():
    """Where the compiled parts live: beside the package's Python files, or elsewhere in an
    editable install (pip install -e .), so found through the extension module."""
    from . import _core

    return os.path.dirname(os.path.abspath(_core.__file__))


def hub_path():
    return os.path.join(built_dir(), "bin", "easysync-hub")


def hub_main():
    path = hub_path()
    if not os.access(path, os.X_OK):
        sys.exit(f"easysync-hub: {path} is missing; reinstall the easysync package")
    os.execv(path, [path] + sys.argv[1:])
