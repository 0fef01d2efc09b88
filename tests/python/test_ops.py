"""torch.ops.easysync and torch.classes.easysync.Client from Python and TorchScript.

Runs against the installed package's extension, or the build named by EASYSYNC_TORCH_LIB:

    EASYSYNC_TORCH_LIB=build/x/torch_ext/csrc/libeasysync_torch.so python -m pytest tests/python/test_ops.py

and skips as a whole when there is neither (test_package.py checks that a package built
with torch present has its extension).
"""

import importlib.util
import os
import threading
from typing import Optional

import pytest

torch = pytest.importorskip("torch")


def _library_path():
    path = os.environ.get("EASYSYNC_TORCH_LIB", "")
    if not path:
        try:
            import easysync

            path = easysync.torch_library_path() or ""
        except ImportError:
            pass
    return path


_LIB = _library_path()
if not _LIB or not os.path.isfile(_LIB):
    pytest.skip("no libeasysync_torch.so: neither the package's nor EASYSYNC_TORCH_LIB",
                allow_module_level=True)


def _register_fake_kernels():
    # The installed package's copy when there is one; else this checkout's, by path.
    try:
        from easysync._fake import register_fake_kernels
    except ImportError:
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir,
                            "torch_ext", "easysync", "_fake.py")
        spec = importlib.util.spec_from_file_location("easysync_fake_kernels", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        register_fake_kernels = module.register_fake_kernels
    register_fake_kernels()


torch.ops.load_library(_LIB)
_register_fake_kernels()
ops = torch.ops.easysync

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.float8_e4m3fn,
          torch.float8_e5m2, torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8,
          torch.bool]
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device"))]


def sample(dtype, shape, seed, device="cpu"):
    """Values of any codec dtype, finite (opcheck compares outputs numerically)."""
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        t = torch.randint(0, 2, shape, generator=g).bool()
    elif dtype.is_floating_point:
        t = (torch.randn(shape, generator=g) * 4).to(dtype)
    else:
        info = torch.iinfo(dtype)
        t = torch.randint(max(info.min, -1000), min(info.max, 1000) + 1, shape, generator=g,
                          dtype=torch.int64).to(dtype)
    return t.to(device)


def same_bytes(a, b):
    """Same dtype, shape and bits (float8 has no numeric comparison on every device)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    a, b = a.detach().cpu().contiguous(), b.detach().cpu().contiguous()
    return torch.equal(a.view(-1).view(torch.uint8), b.view(-1).view(torch.uint8))


def sparse_update(base, seed):
    value = base.clone()
    flat = value.view(-1)
    idx = torch.randperm(flat.numel(), generator=torch.Generator().manual_seed(seed))[:5]
    flat[idx.to(flat.device)] = sample(base.dtype, (5,), seed + 1, base.device)
    return value


# ----- opcheck: schemas, fake kernels, autograd registration, AOT dispatch -----

ALL_CHECKS = ("test_schema", "test_autograd_registration", "test_faketensor",
              "test_aot_dispatch_dynamic")


def checks_for(dtype):
    # torch's schema checker multiplies the tensors it compares, which float8 cannot do
    # ("mul_cpu_reduced_float" not implemented); the schema is the same for every dtype, and
    # the other dtypes check it.
    if dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        return tuple(c for c in ALL_CHECKS if c != "test_schema")
    return ALL_CHECKS


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_opcheck_every_op(dtype, device):
    base = sample(dtype, (32, 9), 1, device)
    value = sparse_update(base, 2)
    frame = ops.delta_encode(base, value)
    checks = checks_for(dtype)
    torch.library.opcheck(ops.delta_encode.default, (base, value), test_utils=checks)
    torch.library.opcheck(ops.delta_encode.default, (base, value), {"level": 1},
                          test_utils=checks)
    torch.library.opcheck(ops.delta_decode.default, (base, frame), test_utils=checks)
    torch.library.opcheck(ops.delta_apply_.default, (base.clone(), frame), test_utils=checks)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_non_contiguous_and_empty(device):
    base = sample(torch.float32, (16, 8), 3, device).t()
    value = sparse_update(base.contiguous(), 4).t().contiguous().t()
    assert not base.is_contiguous() and not value.is_contiguous()
    frame = ops.delta_encode(base, value)
    torch.library.opcheck(ops.delta_encode.default, (base, value))
    torch.library.opcheck(ops.delta_decode.default, (base, frame))
    torch.library.opcheck(ops.delta_apply_.default, (base.clone(), frame))
    empty = torch.empty((0, 4), device=device)
    torch.library.opcheck(ops.delta_decode.default, (empty, ops.delta_encode(empty, empty)))


def test_fake_kernels_describe_the_outputs():
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    # A shape environment: delta_encode's output size is data-dependent (unbacked).
    with FakeTensorMode(shape_env=ShapeEnv()):
        base = torch.empty((4, 5), dtype=torch.bfloat16).t()
        frame = ops.delta_encode(base, base)
        assert frame.dtype == torch.uint8 and frame.dim() == 1 and frame.device.type == "cpu"
        out = ops.delta_decode(base, torch.empty((100,), dtype=torch.uint8))
        assert out.shape == (5, 4) and out.dtype == torch.bfloat16 and out.is_contiguous()
        with pytest.raises(RuntimeError, match="same shape"):
            ops.delta_encode(base, torch.empty((5, 5), dtype=torch.bfloat16))


# ----- behaviour -----

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_round_trip_and_in_place_apply(dtype, device):
    base = sample(dtype, (1000,), 5, device)
    for value in (sparse_update(base, 6), sample(dtype, (1000,), 7, device)):
        frame = ops.delta_encode(base, value)
        assert frame.dtype == torch.uint8 and frame.device.type == "cpu"
        decoded = ops.delta_decode(base, frame)
        assert decoded.device == base.device and same_bytes(decoded, value)
        target = base.clone()
        assert ops.delta_apply_(target, frame) is None
        assert same_bytes(target, value)


@pytest.mark.parametrize("device", DEVICES)
def test_sparse_change_gives_a_small_frame(device):
    base = torch.randn(1 << 20, device=device)  # 4 MiB
    value = sparse_update(base, 8)
    frame = ops.delta_encode(base, value)
    assert frame.numel() < 1024
    assert torch.equal(ops.delta_decode(base, frame), value)


@pytest.mark.parametrize("device", DEVICES)
def test_bad_frames_raise_and_leave_the_base_unchanged(device):
    base = torch.randn(4096, device=device)
    value = base.clone()
    value[100:200] += 1
    frame = ops.delta_encode(base, value)
    corrupt = frame.clone()
    corrupt[-1] ^= 0x5A
    target = base.clone()
    with pytest.raises(RuntimeError, match="easysync::delta_apply_"):
        ops.delta_apply_(target, corrupt)
    with pytest.raises(RuntimeError, match="Corruption"):
        ops.delta_decode(base, frame[:-3])
    wrong_base = base + 1
    with pytest.raises(RuntimeError):
        ops.delta_apply_(wrong_base, frame)
    assert torch.equal(target, base)
    assert torch.equal(wrong_base, base + 1)


def test_argument_errors_name_the_problem():
    f32 = torch.zeros(4)
    with pytest.raises(RuntimeError, match="complex64.*supported: float32, float16, bfloat16"):
        ops.delta_encode(f32, torch.zeros(4, dtype=torch.complex64))
    with pytest.raises(RuntimeError, match="same shape"):
        ops.delta_encode(f32, torch.zeros(5))
    with pytest.raises(RuntimeError, match="same dtype"):
        ops.delta_encode(f32, torch.zeros(4, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="zstd level"):
        ops.delta_encode(f32, f32, 1000)
    frame = ops.delta_encode(f32, f32 + 1)
    with pytest.raises(RuntimeError, match="frame encodes a tensor of float32 but base is int32"):
        ops.delta_decode(torch.zeros(4, dtype=torch.int32), frame)
    with pytest.raises(RuntimeError, match="1-D uint8"):
        ops.delta_decode(f32, frame.float())


# ----- torch.classes.easysync.Client -----

Client = torch.classes.easysync.Client


def test_client_from_python(cluster):
    a = Client("shm", cluster)
    b = Client("shm", cluster, 5000, "")
    assert a.id() != b.id()
    assert b.read_tensor("Model", "w") is None
    assert b.read_int("Model", "step") is None
    w = sample(torch.bfloat16, (8, 3), 9)
    assert a.write_tensor("Model", "w", w) == 1
    assert same_bytes(b.read_tensor("Model", "w"), w)
    assert b.version("Model", "w") == 1
    a.write_int("Model", "step", 1 << 40)
    a.write_float("Model", "lr", 0.25)
    a.write_str("Model", "name", "run-7")
    assert b.read_int("Model", "step") == 1 << 40
    assert b.read_float("Model", "lr") == 0.25
    assert b.read_str("Model", "name") == "run-7"
    # Non-contiguous and bool tensors.
    t = torch.arange(12).reshape(3, 4).t()
    a.write_tensor("Model", "w", t)
    assert torch.equal(b.read_tensor("Model", "w"), t)
    mask = torch.tensor([True, False, True])
    a.write_tensor("Model", "mask", mask)
    assert torch.equal(b.read_tensor("Model", "mask"), mask)

    stats = b.stats()
    for field in ("bytes_recv", "updates_applied", "latency_ms", "compression_ratio",
                  "datagrams_dropped_bad", "fragments_incomplete"):
        assert field in stats
    assert stats["updates_applied"] >= 5

    with pytest.raises(RuntimeError, match="Model.step holds int64 values, not float64"):
        b.read_float("Model", "step")
    with pytest.raises(RuntimeError, match="complex64"):
        a.write_tensor("Model", "c", torch.zeros(2, dtype=torch.complex64))
    b.close()
    with pytest.raises(RuntimeError, match="closed"):
        b.read_int("Model", "step")
    assert a.read_int("Model", "step") == 1 << 40


def test_wait_for_change_sees_a_write_from_another_thread(cluster):
    a = Client("shm", cluster)
    b = Client("shm", cluster)
    assert b.read_int("M", "step") is None
    assert not b.wait_for_change("M", "step", 0.01)
    done = threading.Event()
    # The writer may run before or during the wait: either way the wait sees version 1.
    writer = threading.Thread(target=lambda: (a.write_int("M", "step", 3), done.set()))
    writer.start()
    assert b.wait_for_change("M", "step", 20.0)
    writer.join()
    assert done.is_set() and b.read_int("M", "step") == 3


def test_client_errors():
    with pytest.raises(RuntimeError, match='mode must be "shm", "net" or "shared"'):
        Client("udp", "x")
    with pytest.raises(RuntimeError):
        Client("shm", "not a valid name!")


# TorchScript is deprecated in favour of torch.compile, and still what the class supports.
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_client_from_torchscript(cluster):
    @torch.jit.script
    def publish_and_read(c: torch.classes.easysync.Client, t: torch.Tensor,
                         step: int) -> Optional[torch.Tensor]:
        c.write_tensor("Scripted", "t", t * 2)
        c.write_int("Scripted", "step", step)
        got = c.read_int("Scripted", "step")
        if got is None or got != step:
            return None
        return c.read_tensor("Scripted", "t")

    writer = Client("shm", cluster)
    reader = Client("shm", cluster)
    t = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    out = publish_and_read(writer, t, 7)
    assert out is not None and torch.equal(out, t * 2)
    assert torch.equal(reader.read_tensor("Scripted", "t"), t * 2)
    assert reader.read_int("Scripted", "step") == 7
    # Compiled, not run by Python: the graph calls the class's methods.
    assert 'prim::CallMethod[name="write_tensor"]' in str(publish_and_read.graph)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_client_writes_cuda_tensors(cluster):
    a = Client("shm", cluster)
    b = Client("shm", cluster)
    w = torch.randn(64, 33, device="cuda").t()
    a.write_tensor("Model", "w", w)
    got = b.read_tensor("Model", "w")
    assert got.device.type == "cpu" and torch.equal(got, w.cpu())


def test_a_python_client_shared_with_the_torch_class(cluster):
    import easysync

    with easysync.shm_connect(cluster) as client:
        @easysync.SyncedObject(client, name="Shared")
        class S:
            def __init__(self):
                self.w = torch.arange(6, dtype=torch.float32)

        s = S()
        tc = client.torch()
        assert tc.id() == client.id                      # the same connection
        assert torch.equal(tc.read_tensor("Shared", "w"), torch.arange(6, dtype=torch.float32))
        tc.write_tensor("Shared", "w", torch.ones(6))
        assert torch.equal(s.w, torch.ones(6))
        with pytest.raises(RuntimeError, match="no client was shared under ticket 999999"):
            torch.classes.easysync.Client("shared", "999999", 0, "")
