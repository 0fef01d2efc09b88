"""CUDA tensor attributes timed from Python, against torch's own copies in the same run.

    python bench/cuda_attributes.py [--shm-mib 64] [--hub-mib 256] [--reps 5] [--device cuda]

Needs the easysync package (pip install .), torch with a GPU, and easysync-hub on PATH (pip
puts it there). Prints one JSON object per case:

- shm: a bfloat16 attribute of --shm-mib MiB in GPU memory, written by one client of a
  shared-memory cluster (`write_s`) and read into the other client's bound CUDA tensor
  (`read_s`), medians; `torch_d2h_s` / `torch_h2d_s` are torch copies of the same tensor
  between the GPU and page-locked host memory.
- hub: an attribute of --hub-mib MiB through a hub on loopback, two clients in this process:
  the first whole value (`full_s`, from the writer's flush until the reader's tensor holds
  it; `*_flush_s` the writer's flush, `*_arrive_s` until the reader sees the new version,
  `*_pull_s` its pull into the bound tensor), then one RL-style step per repetition (1.5% of the elements move by one unit in the
  last place) sent as a delta computed on the GPU (`delta_s`, median; `delta_wire_bytes`,
  what the writer sent per step).

--device cpu runs the same on the CPU (a dry run on a machine without a GPU).
"""
import argparse
import json
import os
import subprocess
import time

import torch

import easysync
from easysync import SyncedObject, connect, shm_connect

TOKEN = "cuda-attributes-bench"


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def rl_step(t, seed, frac=0.015):
    """frac of t's bfloat16 elements move by one unit in the last place, in place."""
    g = torch.Generator(device=t.device).manual_seed(seed)
    idx = torch.randperm(t.numel(), generator=g, device=t.device)[: int(t.numel() * frac)]
    t.view(torch.int16).view(-1)[idx] += 1


def make_pair(c1, c2, name, n, device):
    @SyncedObject(c1, name=name)
    class Writer:
        def __init__(self):
            self.w = torch.zeros(n, dtype=torch.bfloat16, device=device)

    @SyncedObject(c2, name=name)
    class Reader:
        def __init__(self):
            self.w = torch.zeros(n, dtype=torch.bfloat16, device=device)

    return Writer(), Reader()


def shm_case(args, sync):
    n = (args.shm_mib << 20) // 2
    cluster = f"cudabench{os.getpid()}"
    arena = (4 * args.shm_mib + 64) << 20
    with shm_connect(cluster, arena_bytes=arena) as c1, shm_connect(cluster, arena_bytes=arena) as c2:
        a, b = make_pair(c1, c2, "ShmBench", n, args.device)
        src = torch.randn(n, device=args.device).to(torch.bfloat16)
        writes, reads = [], []
        for _ in range(args.reps):
            src.view(torch.int16)[0] += 1
            sync()
            t0 = time.perf_counter()
            a.w = src
            sync()
            t1 = time.perf_counter()
            easysync.pull(b)
            sync()
            reads.append(time.perf_counter() - t1)
            writes.append(t1 - t0)
        assert torch.equal(b.w.view(torch.int16), src.view(torch.int16))
        host = torch.empty(n, dtype=torch.bfloat16, pin_memory=args.device == "cuda")
        d2h, h2d = [], []
        for _ in range(args.reps):
            sync()
            t0 = time.perf_counter()
            host.copy_(src)
            sync()
            t1 = time.perf_counter()
            src.copy_(host)
            sync()
            d2h.append(t1 - t0)
            h2d.append(time.perf_counter() - t1)
    w, r = median(writes), median(reads)
    return dict(case="shm", mib=args.shm_mib, device=args.device, write_s=w, read_s=r,
                torch_d2h_s=median(d2h), torch_h2d_s=median(h2d))


def hub_case(args, sync, port):
    n = (args.hub_mib << 20) // 2
    c1 = connect("127.0.0.1", port, token=TOKEN)
    c2 = connect("127.0.0.1", port, token=TOKEN)
    a, b = make_pair(c1, c2, "HubBench", n, args.device)

    def publish_and_receive():
        """Seconds from the writer's flush until the reader's tensor holds the value, and the
        phases: the flush (the writer's encode and the hub's acknowledgement), the new version
        showing at the reader, and the reader's pull into its bound tensor."""
        sync()
        seen = easysync.version(b, "w")
        t0 = time.perf_counter()
        c1.flush()  # the writer's tensor changed in place: flush publishes it
        sync()
        t1 = time.perf_counter()
        while easysync.version(b, "w") == seen:
            easysync.wait_for_change(b, "w", timeout=60)
        t2 = time.perf_counter()
        easysync.pull(b)
        sync()
        t3 = time.perf_counter()
        while not torch.equal(b.w, a.w):
            easysync.wait_for_change(b, "w", timeout=60)
            easysync.pull(b)
            sync()
            t3 = time.perf_counter()
        return t3 - t0, t1 - t0, t2 - t0, t3 - t2

    a.w.copy_(torch.randn(n, device=args.device).to(torch.bfloat16))
    full = publish_and_receive()
    sent0 = c1.stats["bytes_sent"]
    deltas = []
    for i in range(args.reps):
        rl_step(a.w, seed=i)
        deltas.append(publish_and_receive())
    per_step = (c1.stats["bytes_sent"] - sent0) / args.reps
    assert torch.equal(b.w.view(torch.int16), a.w.view(torch.int16))
    stats = c1.stats
    c1.close()
    c2.close()
    return dict(case="hub", mib=args.hub_mib, device=args.device, full_s=full[0],
                full_flush_s=full[1], full_arrive_s=full[2], full_pull_s=full[3],
                delta_s=median([d[0] for d in deltas]),
                delta_flush_s=median([d[1] for d in deltas]),
                delta_arrive_s=median([d[2] for d in deltas]),
                delta_pull_s=median([d[3] for d in deltas]),
                delta_wire_bytes=per_step, raw_bytes=2 * n,
                deltas_sent=stats["deltas_sent"])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shm-mib", type=int, default=64)
    p.add_argument("--hub-mib", type=int, default=256)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    args = p.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device (use --device cpu for a dry run)")

    def sync():
        if args.device == "cuda":
            torch.cuda.synchronize()

    print(json.dumps(shm_case(args, sync)), flush=True)
    hub = subprocess.Popen(["easysync-hub", "--port", "0", "--token", TOKEN,
                            "--max-message-bytes", str(2 << 30)],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        port = None
        for line in hub.stdout:
            if "listening on" in line:
                port = int(line.rsplit(":", 1)[1])
                break
        if port is None:
            raise SystemExit("easysync-hub did not start")
        print(json.dumps(hub_case(args, sync, port)), flush=True)
    finally:
        hub.terminate()
        hub.wait()


if __name__ == "__main__":
    main()
