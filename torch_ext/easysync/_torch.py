"""The torch extension: torch.ops.easysync and torch.classes.easysync, loaded on demand."""

import os
import threading

_lock = threading.Lock()
_loaded = False


def torch_library_path():
    """Path of libeasysync_torch.so (for torch.ops.load_library), or None if not built."""
    from ._tools import built_dir

    path = os.path.join(built_dir(), "libeasysync_torch.so")
    return path if os.path.exists(path) else None


def load_ops():
    """Loads the extension into torch (once) and returns torch.ops.easysync."""
    global _loaded
    import torch

    with _lock:
        if not _loaded:
            path = torch_library_path()
            if path is None:
                raise ImportError(
                    "the easysync torch extension was not built: install easysync with torch "
                    "present (pip install --no-build-isolation . also works)")
            try:  # a training script may have loaded it already (torch.ops.load_library)
                torch.ops.easysync.delta_encode
            except (AttributeError, RuntimeError):
                torch.ops.load_library(path)
            from ._fake import register_fake_kernels

            register_fake_kernels()
            _loaded = True
    return torch.ops.easysync
