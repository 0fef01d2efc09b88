"""Console scripts: easysync-hub (the network-mode hub, built with the package)."""

import os
import sys


def hub_path():
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "bin", "easysync-hub")


def hub_main():
    path = hub_path()
    if not os.access(path, os.X_OK):
        sys.exit(f"easysync-hub: {path} is missing; reinstall the easysync package")
    os.execv(path, [path] + sys.argv[1:])
