"""One side of easysync-bench py-overhead: a Python ping-pong through the easysync package.

    py_ping_pong.py echo CLUSTER
    py_ping_pong.py ping CLUSTER WARMUP ITERS SECONDS   -> prints {"one_way_us": [...]}
    py_ping_pong.py tensor CLUSTER MIB REPS             -> prints {"write_ms": [...], "read_ms": [...]}

The tensor role times a float32 torch tensor attribute of MIB MiB: one client writes it, a
second one (same process) reads it into the tensor bound to its attribute.
The pinger writes `ping` (an int attribute of a @SyncedObject), the echo process waits for
it and writes it back as `pong`; one-way = round trip / 2, timed in the pinger. Both wait in
poll mode, like the C++ ping-pong it is compared with. Exit 3: easysync is not importable.
"""

import json
import sys
import time

try:
    import easysync
except ImportError as e:
    print(f"py_ping_pong: {e} (pip install . in this interpreter)", file=sys.stderr)
    sys.exit(3)

TIMEOUT = 10.0


def tensor(cluster, mib, reps):
    import torch

    n = mib * (1 << 20) // 4
    writer, reader = easysync.shm_connect(cluster), easysync.shm_connect(cluster)

    def synced(client):
        @easysync.SyncedObject(client, name="bench_py_tensor")
        class Holder:
            def __init__(self):
                self.w = torch.zeros(n)

        return Holder()

    a, b = synced(writer), synced(reader)
    values = [torch.full((n,), float(i)) for i in range(2)]
    write_ms, read_ms = [], []
    clock = time.perf_counter
    for i in range(reps):
        t0 = clock()
        a.w = values[i % 2]
        t1 = clock()
        easysync.pull(b)
        t2 = clock()
        if float(b.w[n - 1]) != float(i % 2):
            print("py_ping_pong: the reader holds the wrong value", file=sys.stderr)
            return 1
        write_ms.append((t1 - t0) * 1e3)
        read_ms.append((t2 - t1) * 1e3)
    print(json.dumps({"write_ms": write_ms, "read_ms": read_ms}))
    return 0


def main():
    role, cluster = sys.argv[1], sys.argv[2]
    if role == "tensor":
        return tensor(cluster, int(sys.argv[3]), int(sys.argv[4]))
    client = easysync.shm_connect(cluster, wait_mode="poll")

    @easysync.SyncedObject(client, name="bench_py_overhead")
    class PingPong:
        ping = 0
        pong = 0

    pp = PingPong()
    wait = easysync.wait_for_change
    if role == "echo":
        pp.pong = 0  # version 2 or later: the echo runs
        while True:
            if not wait(pp, "ping", timeout=TIMEOUT):
                return 1
            v = pp.ping
            pp.pong = v
            if v < 0:
                return 0

    warmup, iters, seconds = int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
    while easysync.version(pp, "pong") < 2:
        if not wait(pp, "pong", timeout=TIMEOUT):
            return 1

    def round_trip(i):
        pp.ping = i
        while pp.pong != i:
            if not wait(pp, "pong", timeout=TIMEOUT):
                return False
        return True

    for i in range(1, warmup + 1):
        if not round_trip(i):
            return 1
    clock = time.perf_counter_ns
    samples = []
    cap = time.monotonic() + seconds
    i = warmup
    while len(samples) < iters:
        i += 1
        t0 = clock()
        if not round_trip(i):
            return 1
        samples.append((clock() - t0) / 2e3)
        if time.monotonic() > cap:
            break
    pp.ping = -1
    wait(pp, "pong", timeout=1.0)
    print(json.dumps({"one_way_us": samples}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
