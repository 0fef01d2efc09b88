"""Fake (meta) kernels of torch.ops.easysync, for torch.compile, FakeTensor and opcheck.

The C++ library (libeasysync_torch.so) defines the operators and their CPU/CUDA kernels; these
describe only what each returns, without touching data. Register them after loading it:

    torch.ops.load_library(path)
    register_fake_kernels()
"""

import threading

import torch

_lock = threading.Lock()
_registered = False

# Every frame starts with its 64-byte header (docs/wire_format.md).
_FRAME_HEADER_BYTES = 64


def _check_same(base, value):
    torch._check(base.dtype == value.dtype,
                 lambda: f"easysync::delta_encode: base and value must have the same dtype, "
                         f"got {base.dtype} and {value.dtype}")
    torch._check(base.shape == value.shape,
                 lambda: f"easysync::delta_encode: base and value must have the same shape, "
                         f"got {list(base.shape)} and {list(value.shape)}")
    torch._check(base.device == value.device,
                 lambda: f"easysync::delta_encode: base and value must be on the same device, "
                         f"got {base.device} and {value.device}")


def _check_frame(op, frame):
    torch._check(frame.dtype == torch.uint8 and frame.dim() == 1,
                 lambda: f"easysync::{op}: frame must be a 1-D uint8 tensor "
                         f"(as delta_encode returns)")


def _delta_encode(base, value, level=3):
    _check_same(base, value)
    # The frame's size depends on the data: a fresh unbacked size, at least a header.
    size = torch.library.get_ctx().new_dynamic_size(min=_FRAME_HEADER_BYTES)
    # Frames live on the host whatever the tensors' device.
    return torch.empty((size,), dtype=torch.uint8, device="cpu")


def _delta_decode(base, frame):
    _check_frame("delta_decode", frame)
    # A new contiguous tensor like base (the kernels return contiguous results).
    return base.new_empty(base.shape)


def _delta_apply_(base, frame):
    _check_frame("delta_apply_", frame)


def register_fake_kernels():
    """Registers the fake kernels of every easysync op (once; later calls do nothing).

    REQUIRES: the extension is loaded (torch.ops.load_library), so the ops exist.
    """
    global _registered
    with _lock:
        if _registered:
            return
        torch.library.register_fake("easysync::delta_encode", _delta_encode)
        torch.library.register_fake("easysync::delta_decode", _delta_decode)
        torch.library.register_fake("easysync::delta_apply_", _delta_apply_)
        _registered = True
