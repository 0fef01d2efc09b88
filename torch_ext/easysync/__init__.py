"""EasySync: keep Python objects, NumPy arrays and torch tensors in sync across processes.

    from easysync import shm_connect, connect, SyncedObject

    client = shm_connect("my_cluster")               # shared memory: no server
    # client = connect(host="127.0.0.1", port=5000)  # network mode, through an easysync-hub

    @SyncedObject(client)
    class State:
        def __init__(self):
            self.score = 0                           # initializes only what the cluster lacks

Every write to a public attribute of a synced object reaches every other participant.
"""

from ._core import Error
from ._client import Client, connect, default_client, shm_connect
from ._synced import (
    SyncedObject,
    attributes,
    field,
    info,
    on_change,
    pull,
    push,
    version,
    wait_for_change,
)
from ._torch import torch_library_path

__all__ = [
    "Client",
    "Error",
    "SyncedObject",
    "attributes",
    "connect",
    "default_client",
    "field",
    "info",
    "on_change",
    "pull",
    "push",
    "shm_connect",
    "torch_library_path",
    "version",
    "wait_for_change",
]
__version__ = "0.1.0"


def _load_torch_extension_if_torch_is_loaded():
    # A program that imported torch gets torch.ops.easysync and torch.classes.easysync with
    # the package; one that did not is not made to import torch (easysync.ops does, later).
    import sys

    if "torch" not in sys.modules or torch_library_path() is None:
        return
    try:
        from ._torch import load_ops

        load_ops()
    except Exception as e:  # noqa: BLE001 - the package works without its extension
        import warnings

        warnings.warn(f"easysync: the torch extension did not load: {e}", RuntimeWarning,
                      stacklevel=2)


_load_torch_extension_if_torch_is_loaded()


def __getattr__(name):
    # easysync.ops: torch.ops.easysync, loaded (with torch) on first use.
    if name == "ops":
        from ._torch import load_ops

        return load_ops()
    raise AttributeError(f"module 'easysync' has no attribute {name!r}")
