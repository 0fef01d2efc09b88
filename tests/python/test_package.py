"""The easysync package across real processes: shared memory and a real hub."""

import json
import os
import subprocess
import sys

import pytest

import easysync
from easysync import SyncedObject, connect, shm_connect

from conftest import TOKEN, Hub, hub_command

STATE_SNIPPET = """
import sys
from easysync import shm_connect, SyncedObject

client = shm_connect(sys.argv[1])

@SyncedObject(client)
class State:
    def __init__(self):
        self.score = 0
"""


def test_readme_snippet_shm_second_process_reads_what_first_writes(cluster, child):
    writer = child(STATE_SNIPPET + """
s = State()
s.score = 41
s.score += 1
print("written", flush=True)
sys.stdin.readline()
s.score = 100
print("written", flush=True)
sys.stdin.readline()
""", cluster)
    assert writer.expect() == "written"
    reader = child(STATE_SNIPPET + """
import easysync
s = State()                  # its __init__ sets score = 0: a joiner must not reset it
print(s.score, flush=True)
sys.stdin.readline()
while s.score != 100:
    assert easysync.wait_for_change(s, "score", timeout=10), "no change within 10 s"
print(s.score, flush=True)
""", cluster)
    assert reader.expect() == "42"
    writer.send("go")
    assert writer.expect() == "written"
    reader.send("go")
    assert reader.expect() == "100"
    reader.finish()
    writer.finish()


PLAYER_SNIPPET = """
import sys
from easysync import connect, SyncedObject

client = connect(host="127.0.0.1", port=int(sys.argv[1]))

@SyncedObject(transport="udp")
class Player:
    pos_x = 0
    inventory = []
"""


def test_readme_snippet_network_udp_and_stats(hub, child):
    env = {"EASYSYNC_TOKEN": TOKEN}
    writer = child(PLAYER_SNIPPET + """
p = Player()
p.pos_x = 12
p.inventory.append("sword")
p.inventory.append("shield")
print("written", flush=True)
sys.stdin.readline()
print(client.stats["latency_ms"])
print(client.stats["bytes_sent"])
print(client.stats["packets_recv"], flush=True)
""", hub.port, env=env)
    assert writer.expect() == "written"
    reader = child(PLAYER_SNIPPET + """
import time, easysync
p = Player()
deadline = time.monotonic() + 20
while (p.pos_x, p.inventory) != (12, ["sword", "shield"]):
    assert time.monotonic() < deadline, (p.pos_x, p.inventory)
    easysync.wait_for_change(p, timeout=1)
print(p.pos_x, p.inventory, flush=True)
print(client.stats["latency_ms"])
print(client.stats["bytes_sent"])
print(client.stats["packets_recv"], flush=True)
""", hub.port, env=env)
    assert reader.expect() == "12 ['sword', 'shield']"
    latency, sent, recv = (reader.expect() for _ in range(3))
    float(latency), int(sent)            # the snippet's three keys print numbers
    assert int(recv) > 0                  # the reader received the writer's values
    writer.send("go")
    latency, sent, recv = (writer.expect() for _ in range(3))
    float(latency)
    assert int(sent) > 0 and recv.isdigit()
    reader.finish()
    writer.finish()


def test_per_attribute_transport_inventory_stays_exact_under_udp_loss(hub, child):
    # The client sockets drop 30% of datagrams: best-effort positions may skip values but
    # converge; the inventory, kept reliable, gets every append.
    code = """
import sys, time, easysync
from easysync import connect, SyncedObject
client = connect("127.0.0.1", int(sys.argv[1]))

@SyncedObject(transport="udp", transports={"inventory": "tcp"})
class Player:
    pos_x = 0
    inventory = []
    hp = easysync.field(100, transport="tcp")
"""
    env = {"EASYSYNC_TOKEN": TOKEN, "EASYSYNC_UDP_FAULTS": "loss=0.3,seed=5"}
    reader = child(code + """
p = Player()
print("ready", flush=True)
deadline = time.monotonic() + 30
seen = []
while p.inventory != list(range(40)) or p.pos_x != 39 or p.hp != 60:
    assert time.monotonic() < deadline, (p.pos_x, p.inventory, p.hp)
    easysync.wait_for_change(p, timeout=1)
    if not seen or seen[-1] != p.pos_x:
        seen.append(p.pos_x)
assert seen == sorted(seen), "a best-effort value went backwards: %r" % seen
print("converged", flush=True)
""", hub.port, env=env)
    assert reader.expect() == "ready"
    writer = child(code + """
p = Player()
for i in range(40):
    p.pos_x = i
    p.inventory.append(i)
    p.hp -= 1
print("done", flush=True)
sys.stdin.readline()
""", hub.port, env=env)
    assert writer.expect() == "done"
    assert reader.expect(timeout=40) == "converged"
    writer.send("bye")
    reader.finish()
    writer.finish()


def test_in_place_containers_numpy_and_torch_cross_processes(cluster, child):
    pytest.importorskip("numpy")
    pytest.importorskip("torch")
    code = """
import sys, easysync, numpy as np, torch
client = easysync.shm_connect(sys.argv[1])

@easysync.SyncedObject(client, key="run1")
class Model:
    def __init__(self):
        self.config = {"lr": 0.1, "layers": [64, 64]}
        self.history = []
        self.mask = np.zeros((4, 8), dtype=np.uint8)
        self.w = torch.zeros(1000, dtype=torch.bfloat16)
        self.step = 0
"""
    writer = child(code + """
m = Model()
m.config["layers"].append(32)           # nested in-place change
m.config["lr"] = 0.05
m.history.extend([1.5, 1.25])
m.mask[1, 2] = 7                        # NumPy: published by push()
assert easysync.push(m) == 1
m.w[10:20] += 1                         # torch: found through the version counter
client.flush()
m.step = 1
print("written", flush=True)
sys.stdin.readline()
""", cluster)
    assert writer.expect() == "written"
    reader = child(code + """
m = Model()
assert m.step == 1
assert m.config == {"lr": 0.05, "layers": [64, 64, 32]}, m.config
assert m.history == [1.5, 1.25], m.history
assert isinstance(m.mask, np.ndarray) and m.mask.dtype == np.uint8 and m.mask.shape == (4, 8)
assert m.mask[1, 2] == 7 and int(m.mask.sum()) == 7
assert isinstance(m.w, torch.Tensor) and m.w.dtype == torch.bfloat16
assert float(m.w.float().sum()) == 10.0
print("ok", flush=True)
""", cluster)
    assert reader.expect() == "ok"
    reader.finish()
    writer.send("bye")
    writer.finish()


def same_types(got, want):
    """Whether got has want's types all the way down (a tuple stays a tuple; a list read
    back may be a SyncedList, a list all the same)."""
    if isinstance(want, (list, tuple)):
        return (isinstance(got, type(want)) and len(got) == len(want)
                and all(same_types(g, w) for g, w in zip(got, want)))
    if isinstance(want, dict):
        return (isinstance(got, dict) and set(got) == set(want)
                and all(same_types(k, next(w for w in want if w == k)) for k in got)
                and all(same_types(got[k], want[k]) for k in want))
    return type(got) is type(want)


def test_in_process_semantics(cluster):
    np = pytest.importorskip("numpy")
    with shm_connect(cluster) as c1, shm_connect(name=cluster) as c2:
        @SyncedObject(c1, key="a")
        class Thing:
            label = "x"

            def __init__(self, start=0):
                self.count = start
                self._local = "mine"   # underscore: not synced

        @SyncedObject(c2, name="Thing", key="a")
        class Peer:
            def __init__(self):
                self.count = -1

        t = Thing(start=5)
        p = Peer()
        assert p.count == 5            # joiner's __init__ did not reset
        assert t.label == "x" and Thing.label == "x"
        assert "_local" not in easysync.attributes(t)
        t.count = 6
        assert p.count == 6
        p.count += 10
        assert t.count == 16
        # Several instances of one class coexist by key.
        other = Thing(start=1, sync_key="b")
        assert other.count == 1 and t.count == 16
        # A new attribute after __init__ is synced too.
        t.extra = {"k": [1, 2]}
        assert easysync.attributes(t)["extra"] == "nested (msgpack)"
        # Versions and info.
        v = easysync.version(t, "count")
        t.count = 17
        assert easysync.version(t, "count") == v + 1
        assert easysync.info(t, "count")["writer"] == c1.id
        # on_change runs on the client's callback thread.
        import threading
        got, event = [], threading.Event()
        sub = easysync.on_change(t, "count", lambda v: (got.append(v), event.set()))
        p.count = 99
        assert event.wait(10)
        assert got[-1] == 99
        sub.close()
        # Arrays: written whole, read back as arrays.
        t.arr = np.arange(12, dtype=np.int32).reshape(3, 4)
        assert (t.arr == np.arange(12).reshape(3, 4)).all() and t.arr.dtype == np.int32
        # Values of every plain kind round-trip.
        for value in [None, True, -7, 2**63 + 5, 1.5, 3.0, "héllo", b"\x00\xff", [1, [2, {"a": None}]],
                      {"n": {"m": [b"x"]}}, (), (1, "a"), [(1, 2), {"k": (3, [4, ()])}],
                      {(0, 1): "corner", ((2,), None): (b"x",)}]:
            t.any = value
            assert t.any == value and same_types(t.any, value), value
        stats = c1.stats
        assert stats["updates_sent"] > 0 and stats["bytes_sent"] > 0
        assert isinstance(stats["packets_recv"], int) and isinstance(stats["latency_ms"], float)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "float64", "int8", "int16",
                                   "int32", "int64", "uint8", "bool", "float8_e4m3fn",
                                   "float8_e5m2"])
def test_torch_dtypes_round_trip(cluster, dtype):
    torch = pytest.importorskip("torch")
    with shm_connect(cluster) as c1, shm_connect(cluster) as c2:
        src = (torch.arange(24).reshape(2, 3, 4) % 7).to(getattr(torch, dtype))

        @SyncedObject(c1, name="T")
        class A:
            def __init__(self):
                self.t = src.clone()

        @SyncedObject(c2, name="T")
        class B:
            def __init__(self):
                self.t = torch.zeros(1)

        a, b = A(), B()
        assert b.t.dtype == src.dtype and b.t.shape == src.shape
        assert torch.equal(b.t.view(torch.uint8), src.view(torch.uint8))
        # Non-contiguous writes arrive as their contiguous values.
        a.t = src.transpose(0, 2)
        assert torch.equal(b.t.view(torch.uint8), src.transpose(0, 2).contiguous().view(torch.uint8))


def cuda_available():
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.mark.skipif(not cuda_available(), reason="needs torch with a CUDA device")
def test_cuda_tensor_attribute(cluster):
    import torch

    with shm_connect(cluster) as c1, shm_connect(cluster) as c2:
        @SyncedObject(c1, name="G")
        class A:
            def __init__(self):
                self.w = torch.zeros(1 << 20, device="cuda")

        @SyncedObject(c2, name="G")
        class B:
            def __init__(self):
                self.w = torch.ones(1, device="cuda")

        a, b = A(), B()
        a.w[5] = 3.0
        c1.flush()
        assert b.w.device.type == "cuda" and float(b.w[5]) == 3.0 and float(b.w.sum()) == 3.0


def test_bad_arguments_raise_clear_exceptions(cluster):
    with pytest.raises(ValueError, match="cluster"):
        shm_connect("bad name!")
    with pytest.raises(TypeError, match="str"):
        shm_connect(123)
    with pytest.raises(ValueError, match="transport"):
        SyncedObject(transport="carrier-pigeon")
    with pytest.raises(TypeError, match="client"):
        SyncedObject("not a client")
    with shm_connect(cluster) as c:
        @SyncedObject(c)
        class S:
            pass

        s = S()
        with pytest.raises(TypeError, match="cannot sync a value of type 'object'"):
            s.x = object()
        s.n = 1
        with pytest.raises(TypeError, match="int does not fit 64 bits"):
            s.n = 2**70
        np = pytest.importorskip("numpy")
        with pytest.raises(TypeError, match="holds plain values"):
            s.n = np.zeros(3)
        with pytest.raises(TypeError, match="complex128 cannot be synced"):
            s.z = np.zeros(2, dtype=complex)
        with pytest.raises(AttributeError):
            s.missing
    with pytest.raises(ValueError, match="closed"):
        c.stats
    with pytest.raises(ValueError, match="closed"):
        s.n = 3


def test_network_errors(child, monkeypatch):
    hub = Hub(token="right")
    try:
        with pytest.raises(PermissionError):
            connect("127.0.0.1", hub.port, token="wrong", timeout=5)
        monkeypatch.delenv("EASYSYNC_TOKEN", raising=False)
        with pytest.raises(ValueError, match=r"no token: .*connect\(token=\.\.\.\).*EASYSYNC_TOKEN"):
            connect("127.0.0.1", hub.port)
        with pytest.raises(TypeError):
            connect("127.0.0.1", "5000")
        with pytest.raises(ValueError, match="port"):
            connect("127.0.0.1", 70000)
        with connect(host="127.0.0.1", port=hub.port, token="right") as c:
            assert c.mode == "net" and isinstance(c.stats["rtt_ms"], float)
    finally:
        hub.stop()
    with pytest.raises((ConnectionError, TimeoutError)):
        connect("127.0.0.1", hub.port, token="right", timeout=1, reconnect=False)


def test_default_client_from_environment(cluster, child):
    reader = child("""
from easysync import SyncedObject

@SyncedObject()
class State:
    score = 0

s = State()
s.score = 5
print(s.score, flush=True)
""", env={"EASYSYNC_CLUSTER": cluster})
    assert reader.expect() == "5"
    reader.finish()
    code = subprocess.run(
        [sys.executable, "-c", "import easysync\n@easysync.SyncedObject\nclass S:\n  x = 1\nS()"],
        capture_output=True, text=True, env={k: v for k, v in os.environ.items()
                                             if not k.startswith("EASYSYNC_")})
    assert code.returncode != 0 and "no easysync client" in code.stderr


def test_hub_console_script_runs():
    out = subprocess.run(["easysync-hub", "--help"], capture_output=True, text=True,
                         env=dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep
                                  + os.environ.get("PATH", "")))
    assert "usage: easysync-hub" in out.stdout + out.stderr


def test_fork_child_connects_again_and_parent_is_unaffected(cluster):
    with shm_connect(cluster) as client:
        @SyncedObject(client, name="Forked")
        class S:
            value = 1

        s = S()
        pid = os.fork()
        if pid == 0:  # the child: the inherited client is left to the parent
            code = 1
            try:
                try:
                    s.value = 2
                except ValueError as e:
                    assert "fork" in str(e), e
                    with shm_connect(cluster) as mine:
                        @SyncedObject(mine, name="Forked")
                        class C:
                            value = 0

                        c = C()
                        assert c.value == 1
                        c.value = 3
                        code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert s.value == 3          # the child's write, through its own connection
        s.value = 4
        assert s.value == 4


def test_a_long_wait_is_interrupted_by_ctrl_c(cluster, child):
    import signal

    waiter = child("""
import sys, easysync
client = easysync.shm_connect(sys.argv[1])

@easysync.SyncedObject(client)
class S:
    x = 0

s = S()
try:
    print("waiting", flush=True)
    easysync.wait_for_change(s, "x")        # no timeout
except KeyboardInterrupt:
    print("interrupted", flush=True)
""", cluster)
    assert waiter.expect() == "waiting"
    waiter.proc.send_signal(signal.SIGINT)  # wherever it is inside the try, it must surface
    assert waiter.expect(timeout=10) == "interrupted"
    waiter.finish()


def test_a_writer_killed_mid_stream_leaves_whole_values(cluster, child):
    np = pytest.importorskip("numpy")
    code = """
import sys, easysync, numpy as np
client = easysync.shm_connect(sys.argv[1])

@easysync.SyncedObject(client)
class Stream:
    def __init__(self):
        self.block = np.zeros(1 << 20, dtype=np.int32)
"""
    writer = child(code + """
s = Stream()
i = 0
print("writing", flush=True)
while True:                    # killed with SIGKILL somewhere in here
    i += 1
    s.block = np.full(1 << 20, i, dtype=np.int32)
""", cluster)
    assert writer.expect() == "writing"
    with shm_connect(cluster) as client:
        @SyncedObject(client, name="Stream")
        class Reader:
            def __init__(self):
                self.block = np.zeros(1, dtype=np.int32)

        r = Reader()
        for _ in range(50):
            easysync.wait_for_change(r, "block", timeout=5)
            b = r.block
            assert b.shape == (1 << 20,) and (b == b[0]).all()
        writer.proc.kill()
        writer.proc.wait()
        last = r.block.copy()
        assert (last == last[0]).all()
        # The cluster keeps working: this process writes and reads on.
        r.block = np.full(8, 7, dtype=np.int32)
        assert (r.block == 7).all()


def test_close_with_live_subscriptions_and_handles(cluster):
    import threading

    client = shm_connect(cluster)

    @SyncedObject(client)
    class S:
        x = 0

    s = S()
    got = threading.Event()
    sub = easysync.on_change(s, "x", lambda v: got.set())
    s.x = 1
    assert got.wait(10)
    client.close()                 # the subscription and the attribute outlive the client
    sub.close()
    del sub
    with pytest.raises(ValueError, match="closed"):
        s.x
    with pytest.raises(ValueError, match="closed"):
        easysync.wait_for_change(s, "x", timeout=0)


def test_network_tensor_steps_travel_as_deltas(hub):
    torch = pytest.importorskip("torch")
    with connect("127.0.0.1", hub.port, token=TOKEN) as c1, \
            connect("127.0.0.1", hub.port, token=TOKEN) as c2:
        @SyncedObject(c1, name="Net")
        class A:
            def __init__(self):
                self.w = torch.zeros(1 << 20, dtype=torch.float32)   # 4 MiB

        @SyncedObject(c2, name="Net")
        class B:
            def __init__(self):
                self.w = torch.zeros(1)

        a, b = A(), B()
        before = c1.stats["codec_wire_bytes"]
        with torch.no_grad():
            a.w[::100] += 1.0             # a step that touches 1% of the elements
        assert easysync.push(a) == 1
        want = a.w.clone()
        for _ in range(20):
            if torch.equal(b.w, want):
                break
            easysync.wait_for_change(b, "w", timeout=1)
        else:
            pytest.fail("the step never arrived")
        s = c1.stats
        assert s["deltas_sent"] >= 1
        # 1% of a 4 MiB tensor changed: far less than the tensor crossed the wire.
        assert s["codec_wire_bytes"] - before < (4 << 20) // 10


def test_close_and_exit_publish_in_place_changes(hub, child):
    """An array changed in place and not pushed yet is published by close() and by the
    interpreter's exit, as a file's buffer is flushed: the change is not lost."""
    np = pytest.importorskip("numpy")
    code = """
import sys, easysync, numpy as np
client = easysync.connect("127.0.0.1", int(sys.argv[1]), token=sys.argv[2])

@easysync.SyncedObject(client, name="Closing")
class S:
    def __init__(self):
        self.a = np.zeros(64, dtype=np.int32)
        self.b = np.zeros(64, dtype=np.int32)

s = S()
s.a[3] = 7                              # in place, never pushed
if sys.argv[3] == "close":
    client.close()
    client.close()                      # a second close does nothing
print("done", flush=True)
"""
    with connect("127.0.0.1", hub.port, token=TOKEN) as reader:
        @SyncedObject(reader, name="Closing")
        class R:
            def __init__(self):
                self.a = np.zeros(64, dtype=np.int32)
                self.b = np.zeros(64, dtype=np.int32)

        r = R()
        for how in ("close", "exit"):
            r.a = np.zeros(64, dtype=np.int32)
            w = child(code, hub.port, TOKEN, how)
            assert w.expect() == "done"
            w.finish()
            for _ in range(50):
                if r.a[3] == 7:
                    break
                easysync.wait_for_change(r, "a", timeout=0.2)
            assert r.a[3] == 7 and int(r.a.sum()) == 7, (how, r.a)
            assert int(r.b.sum()) == 0


def _int_x_on_each(c1, c2, name):
    """The synced object `name` with an int x = 0, declared through c1 and through c2."""
    @SyncedObject(c1, name=name)
    class A:
        def __init__(self):
            self.x = 0

    @SyncedObject(c2, name=name)
    class B:
        def __init__(self):
            self.x = 0

    return A(), B()


def test_connect_takes_the_spin_the_coding_threads_and_device_direct(hub):
    # No spin, no coding threads on one side; a long spin on the other: values still cross.
    with connect("127.0.0.1", hub.port, token=TOKEN, spin_us=0, encode_threads=0,
                 decode_threads=0, device_direct="never") as c1, \
            connect("127.0.0.1", hub.port, token=TOKEN, spin_us=500, decode_threads=3,
                    device_direct="always") as c2:
        a, b = _int_x_on_each(c1, c2, "Opts")
        for v in range(1, 6):
            a.x = v
            for _ in range(50):
                if b.x == v:
                    break
                easysync.wait_for_change(b, "x", timeout=0.2)
            assert b.x == v
    with pytest.raises(ValueError, match="spin_us"):
        connect("127.0.0.1", hub.port, token=TOKEN, spin_us=-1)
    with pytest.raises(ValueError, match="encode_threads"):
        connect("127.0.0.1", hub.port, token=TOKEN, encode_threads=65)
    with pytest.raises(ValueError, match="decode_threads"):
        connect("127.0.0.1", hub.port, token=TOKEN, decode_threads=-1)
    with pytest.raises(ValueError, match="device_direct"):
        connect("127.0.0.1", hub.port, token=TOKEN, device_direct="sometimes")


def test_import_with_torch_loaded_registers_the_extension():
    pytest.importorskip("torch")
    # pip install . with torch present builds the extension into the package.
    assert easysync.torch_library_path() is not None
    out = subprocess.run(
        [sys.executable, "-c", "import torch, easysync; "
         "print(hasattr(torch.ops.easysync, 'delta_encode'), torch.classes.easysync.Client)"],
        capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("True")


def test_dataclasses_and_subclasses(cluster):
    import dataclasses

    with shm_connect(cluster) as c1, shm_connect(cluster) as c2:
        @SyncedObject(c1)
        @dataclasses.dataclass
        class Cfg:                       # unhashable (eq=True): still tracked for flush()
            lr: float = 0.1
            layers: list = dataclasses.field(default_factory=lambda: [64])

        class Big(Cfg):
            pass

        @SyncedObject(c2, name="Cfg")
        class Peer:
            lr = 0.0

        cfg, big, peer = Cfg(), Big(lr=0.3), Peer()
        assert peer.lr == 0.1            # Cfg created it first; Peer's default did not reset it
        cfg.lr = 0.2
        assert peer.lr == 0.2
        assert big.lr == 0.3             # a subclass is an object of its own ("Big")
        cfg.layers.append(32)
        assert repr(cfg) == "test_dataclasses_and_subclasses.<locals>.Cfg(lr=0.2, layers=[64, 32])"
        c1.flush()


def test_a_joiners_tensor_is_bound_to_the_attribute(cluster):
    torch = pytest.importorskip("torch")
    with shm_connect(cluster) as c1, shm_connect(cluster) as c2:
        mine = torch.nn.Parameter(torch.ones(4, 3))
        theirs = torch.nn.Parameter(torch.zeros(4, 3))

        @SyncedObject(c1, name="Bound")
        class A:
            def __init__(self):
                self.w = mine

        @SyncedObject(c2, name="Bound")
        class B:
            def __init__(self):
                self.w = theirs          # joining: gets the cluster's value, in place

        a, b = A(), B()
        assert b.w is theirs and torch.equal(theirs.detach(), torch.ones(4, 3))
        with torch.no_grad():
            theirs.mul_(3)               # an optimizer step, say
        c2.flush()
        assert easysync.pull(a) == 1
        assert torch.equal(mine.detach(), torch.full((4, 3), 3.0))   # the same Parameter object
        assert a.w is mine
        assert easysync.pull(a) == 0


def test_examples_trainer_and_evaluator(cluster, child):
    pytest.importorskip("torch")
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir)
    examples = os.path.join(root, "examples", "python")
    evaluator = subprocess.Popen([sys.executable, os.path.join(examples, "evaluator.py"), cluster],
                                 stdout=subprocess.PIPE, text=True)
    trainer = subprocess.run([sys.executable, os.path.join(examples, "trainer.py"), cluster, "100"],
                             capture_output=True, text=True, timeout=120)
    out, _ = evaluator.communicate(timeout=60)
    assert trainer.returncode == 0, trainer.stderr
    assert evaluator.returncode == 0
    assert out.startswith("evaluator: step 100, loss "), out
    # It evaluated the trained model: the loss is what the trainer ended with, near 0.
    assert float(out.split("loss ")[1].split(",")[0]) < 0.5, out


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not cuda_available(), reason="needs torch with a CUDA device"))])
def test_cuda_attributes_bench_runs(device):
    """bench/cuda_attributes.py, small: its figures are the README's GPU figures."""
    pytest.importorskip("torch")
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir)
    env = dict(os.environ, PATH=os.path.dirname(hub_command()) + os.pathsep + os.environ["PATH"])
    r = subprocess.run([sys.executable, os.path.join(root, "bench", "cuda_attributes.py"),
                        "--device", device, "--shm-mib", "4", "--hub-mib", "8", "--reps", "2"],
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    shm, hub = [json.loads(line) for line in r.stdout.splitlines()]
    assert shm["case"] == "shm" and shm["write_s"] > 0 and shm["read_s"] > 0
    # Each step moved 1.5% of 4M elements: a delta, a small fraction of the 8 MiB.
    assert hub["deltas_sent"] >= 2 and 0 < hub["delta_wire_bytes"] < hub["raw_bytes"] / 10


def test_a_callback_sees_each_value_once_when_writes_land_during_it(cluster):
    import threading

    with shm_connect(cluster) as c1, shm_connect(cluster) as c2:
        @SyncedObject(c1, name="Once")
        class A:
            n = 0

        @SyncedObject(c2, name="Once")
        class B:
            n = 0

        a, b = A(), B()
        got, cv = [], threading.Condition()

        def on_n(v):
            with cv:
                got.append(v)
                cv.notify_all()

        sub = easysync.on_change(b, "n", on_n)
        for k in range(1, 101):
            a.n = 2 * k       # two writes back to back: the second often lands mid-callback
            a.n = 2 * k + 1
            with cv:
                assert cv.wait_for(lambda: got and got[-1] == 2 * k + 1, timeout=20)
        sub.close()
        assert all(x < y for x, y in zip(got, got[1:])), got


def test_an_oversize_value_is_refused_and_the_client_goes_on():
    hub = Hub(TOKEN, "--max-message-bytes", str(1 << 20))
    try:
        with connect("127.0.0.1", hub.port, token=TOKEN) as c:
            @SyncedObject(c)
            class S:
                x = 0

            s = S()
            with pytest.raises(easysync.Error, match="over the message limit"):
                s.x = b"z" * (2 << 20)
            assert s.x == 0
            s.x = 5
            assert s.x == 5 and c.stats["reconnects"] == 0
    finally:
        hub.stop()


def test_values_no_reader_could_decode_are_refused_at_write(cluster):
    with shm_connect(cluster) as c:
        @SyncedObject(c)
        class S:
            x = 0

        s = S()
        deepest = []
        for _ in range(63):           # 64 lists in all: the most a reader decodes
            deepest = [deepest]
        s.x = deepest
        assert s.x == deepest
        with pytest.raises(ValueError, match="nested more than 64 deep"):
            s.x = [deepest]
        with pytest.raises(TypeError, match="dict key of type 'frozenset'"):
            s.x = {(1, frozenset([2])): 3}
        assert s.x == deepest         # what was committed is still there, readable
        s.x = {1: "a", None: b"b", 2.5: True, "k": [1]}
        assert s.x == {1: "a", None: b"b", 2.5: True, "k": [1]}


def test_asking_the_version_reads_no_value(cluster):
    # version() says what a read would return without reading it: a change it reports is
    # still one to wait for, and to read.
    with shm_connect(cluster) as c1, shm_connect(cluster) as c2:
        a, b = _int_x_on_each(c1, c2, "Ver")
        assert b.x == 0
        assert not easysync.wait_for_change(b, "x", timeout=0)
        a.x = 1
        a.x = 2
        assert easysync.version(b, "x") == easysync.version(a, "x") == 3
        assert easysync.info(b, "x")["version"] == 3         # details, not the value
        assert easysync.wait_for_change(b, "x", timeout=0)   # not read yet
        assert b.x == 2
        assert not easysync.wait_for_change(b, "x", timeout=0)


def test_new_versions_land_in_the_bound_array_or_replace_it(cluster):
    torch = pytest.importorskip("torch")
    np = pytest.importorskip("numpy")
    with shm_connect(cluster) as c1, shm_connect(cluster) as c2:
        @SyncedObject(c1, name="Land")
        class A:
            def __init__(self):
                self.t = torch.zeros(1000)
                self.a = np.zeros(10, dtype=np.int16)

        @SyncedObject(c2, name="Land")
        class B:
            def __init__(self):
                self.t = torch.zeros(1000)
                self.a = np.frombuffer(bytes(20), dtype=np.int16)   # read-only

        a, b = A(), B()
        t, ptr = b.t, b.t.data_ptr()
        a.t = torch.arange(1000, dtype=torch.float32)
        assert b.t is t and t.data_ptr() == ptr and float(t[999]) == 999.0   # decoded in place
        a.t = torch.ones(2, 3)                                              # another shape
        assert b.t is not t and b.t.shape == (2, 3) and float(b.t.sum()) == 6.0
        a.a = np.arange(10, dtype=np.int16)
        assert (b.a == np.arange(10)).all()        # a read-only array is replaced, not written
