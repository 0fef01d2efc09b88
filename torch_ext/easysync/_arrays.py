"""NumPy arrays and torch tensors as attribute values, without importing either.

A module is only consulted when the program imported it already (sys.modules): a value of
its type cannot exist otherwise, and `import easysync` stays cheap without them.
"""

import sys

from . import _core

_NUMPY_NAMES = {
    "float32": "float32", "float16": "float16", "float64": "float64", "int8": "int8",
    "int16": "int16", "int32": "int32", "int64": "int64", "uint8": "uint8", "bool": "bool",
}
_TORCH_NAMES = {
    "float32": "float32", "float16": "float16", "bfloat16": "bfloat16", "float64": "float64",
    "int8": "int8", "int16": "int16", "int32": "int32", "int64": "int64", "uint8": "uint8",
    "bool": "bool", "float8_e4m3fn": "float8_e4m3", "float8_e5m2": "float8_e5m2",
}
_SUPPORTED = ", ".join(_core.DTYPES)


def flavor(value):
    """'torch', 'numpy', or None for a value that is not an array."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        return "torch"
    np = sys.modules.get("numpy")
    if np is not None and isinstance(value, np.ndarray):
        return "numpy"
    return None


def torch_dtype_name(t):
    name = str(t.dtype).removeprefix("torch.")
    wire = _TORCH_NAMES.get(name)
    if wire is None:
        raise TypeError(f"a torch tensor of {t.dtype} cannot be synced; supported: {_SUPPORTED}")
    return wire


def tensor_arg(value, *, host=False):
    """A TensorArg for the core, and the object that must stay alive while it is used.

    host=True copies a CUDA tensor to the host (initial values are written from host memory).
    """
    kind = flavor(value)
    if kind == "torch":
        import torch

        t = value.detach()
        if host and t.device.type != "cpu":
            t = t.cpu()
        if not t.is_contiguous():
            t = t.contiguous()
        dtype = torch_dtype_name(t)
        if t.device.type == "cuda":
            stream = torch.cuda.current_stream(t.device).cuda_stream
            return _core.TensorArg(dtype, list(t.shape), t.data_ptr(), "cuda",
                                   t.device.index or 0, stream), t
        if t.device.type != "cpu":
            raise ValueError(f"a tensor on {t.device} cannot be synced (cpu or cuda only)")
        return _core.TensorArg(dtype, list(t.shape), t.data_ptr()), t
    if kind == "numpy":
        import numpy as np

        a = np.ascontiguousarray(value)
        dtype = _NUMPY_NAMES.get(a.dtype.name)
        if dtype is None:
            raise TypeError(f"a NumPy array of {a.dtype} cannot be synced; supported: "
                            f"{', '.join(_NUMPY_NAMES)} (torch tensors also bfloat16, float8)")
        return _core.TensorArg(dtype, list(a.shape), a.ctypes.data), a
    raise TypeError(f"not an array: {type(value).__name__}")


def version_counter(value):
    return getattr(value, "_version", None)


def from_buffer(buf, kind, device=None):
    """Wraps a TensorBuffer read from the bus as `kind` ('torch' or 'numpy'), no copy on CPU."""
    shape = list(buf.shape)
    if kind == "numpy" and buf.dtype in _NUMPY_NAMES:
        import numpy as np

        return np.frombuffer(buf, dtype=np.uint8).view(np.dtype(buf.dtype)).reshape(shape)
    try:
        import torch  # NumPy has no bfloat16 or float8: such a tensor is read as torch's
    except ImportError:
        raise TypeError(f"a {buf.dtype} tensor needs torch to be read (NumPy has no "
                        f"{buf.dtype})") from None

    dtype = getattr(torch, {"float8_e4m3": "float8_e4m3fn"}.get(buf.dtype, buf.dtype))
    if buf.nbytes == 0:
        t = torch.empty(shape, dtype=dtype)
    else:
        t = torch.frombuffer(buf, dtype=torch.uint8).view(dtype).reshape(shape)
    if device is not None and str(device) != "cpu":
        t = t.to(device)
    return t


def decodable_into(local):
    """Whether a new version can be decoded straight into `local`'s memory (contiguous,
    writable, CPU): one copy, and no allocation."""
    kind = flavor(local)
    if kind == "torch":
        return local.device.type == "cpu" and local.is_contiguous()
    if kind == "numpy":
        return local.flags.c_contiguous and local.flags.writeable and local.dtype.name in _NUMPY_NAMES
    return False


def is_cuda(local):
    """A contiguous torch tensor in GPU memory."""
    return flavor(local) == "torch" and local.device.type == "cuda" and local.is_contiguous()


def host_twin(local, twin=None):
    """A CPU tensor of local's dtype and shape, page-locked where the system allows (copies to
    the GPU run several times faster from it); `twin` is reused when it still fits."""
    import torch

    if twin is not None and twin.dtype == local.dtype and twin.shape == local.shape:
        return twin
    try:
        return torch.empty(local.shape, dtype=local.dtype, pin_memory=True)
    except RuntimeError:
        return torch.empty(local.shape, dtype=local.dtype)


def copy_into(local, new):
    """Copies `new` into `local` when both have the same dtype and shape; False otherwise."""
    if flavor(local) == "torch":
        import torch

        if local.dtype != new.dtype or local.shape != new.shape:
            return False
        with torch.no_grad():
            local.copy_(new, non_blocking=False)
        return True
    if flavor(local) == "numpy" and flavor(new) == "numpy":
        import numpy as np

        if local.dtype != new.dtype or local.shape != new.shape or not local.flags.writeable:
            return False
        np.copyto(local, new)
        return True
    return False
