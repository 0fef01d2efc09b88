#!/usr/bin/env python3
"""Times a torch.distributed broadcast (gloo backend) of one bfloat16 tensor between two
local processes: the baseline that `easysync-bench net-tensor` compares its sync with.

Rank 0 (this process) starts rank 1 (the same script, --rank 1). Each repetition: a barrier,
rank 0 reads CLOCK_MONOTONIC and broadcasts; rank 1 reads the clock when its broadcast
returns, so a figure runs from the sender's start until the receiver holds every byte (both
clocks are the machine's). Rank 1 then checks its copy against the bytes rank 0 sent,
outside the timing, and sends back its time and the verdict.

Output: one JSON line on stdout, {"bytes": N, "seconds": [one per repetition], "torch": V}.
Exit status: 0 success, 1 a broadcast failed or arrived wrong, 2 bad usage, 3 torch (with
gloo) cannot be imported by this interpreter (the reason goes to stderr).
"""
import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time

TIMEOUT = datetime.timedelta(seconds=300)


def payload(torch, nbytes, rep):
    """The bytes of repetition `rep`, the same in both ranks: random bits, so that the
    receiver cannot pass its check with a buffer left over from an earlier repetition."""
    g = torch.Generator().manual_seed(1000 + rep)
    bits = torch.randint(-32768, 32768, (nbytes // 2,), dtype=torch.int16, generator=g)
    return bits.view(torch.bfloat16)


def run(rank, store, nbytes, reps, warmup):
    import torch
    import torch.distributed as dist

    # The bench may run us in a network namespace that has nothing but lo; gloo would
    # otherwise bind the address the host name resolves to.
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group(
        "gloo", init_method="file://" + store, rank=rank, world_size=2, timeout=TIMEOUT
    )
    seconds = []
    ok = True
    buf = torch.empty(nbytes // 2, dtype=torch.bfloat16)
    for rep in range(warmup + reps):
        expected = payload(torch, nbytes, rep)
        if rank == 0:
            buf.copy_(expected)
        else:
            buf.zero_()
        dist.barrier()
        t0 = time.monotonic_ns()
        dist.broadcast(buf, src=0)
        t1 = time.monotonic_ns()
        # Rank 1's arrival time and verdict travel back to rank 0.
        reply = torch.tensor([t1, 1], dtype=torch.int64)
        if rank == 1:
            reply[1] = int(torch.equal(buf.view(torch.int16), expected.view(torch.int16)))
        dist.broadcast(reply, src=1)
        if rank == 0 and rep >= warmup:
            seconds.append((int(reply[0]) - t0) / 1e9)
        ok = ok and bool(reply[1])
    dist.destroy_process_group()
    if not ok:
        print("gloo_broadcast.py: rank 1 received other bytes than rank 0 sent", file=sys.stderr)
        return 1
    if rank == 0:
        print(json.dumps({"bytes": nbytes, "seconds": seconds, "torch": torch.__version__}))
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bytes", type=int, required=True, help="tensor size (a multiple of 2)")
    p.add_argument("--reps", type=int, default=3, help="timed repetitions")
    p.add_argument("--warmup", type=int, default=1, help="untimed repetitions first")
    p.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--store", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.bytes <= 0 or args.bytes % 2 or args.reps < 1 or args.warmup < 0:
        p.error("--bytes must be a positive even number, --reps >= 1, --warmup >= 0")
    try:
        import torch
        import torch.distributed as dist
    except ImportError as e:
        print(f"gloo_broadcast.py: {sys.executable} cannot import torch: {e}", file=sys.stderr)
        return 3
    if not dist.is_available() or not dist.is_gloo_available():
        print(f"gloo_broadcast.py: torch {torch.__version__} at {sys.executable} has no gloo",
              file=sys.stderr)
        return 3
    if args.rank == 1:
        return run(1, args.store, args.bytes, args.reps, args.warmup)

    with tempfile.TemporaryDirectory(prefix="gloo_broadcast_") as tmp:
        store = os.path.join(tmp, "store")
        peer = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--rank", "1", "--store", store,
             "--bytes", str(args.bytes), "--reps", str(args.reps), "--warmup", str(args.warmup)]
        )
        try:
            rc = run(0, store, args.bytes, args.reps, args.warmup)
        finally:
            try:
                peer_rc = peer.wait(timeout=TIMEOUT.total_seconds())
            except subprocess.TimeoutExpired:
                peer.kill()
                peer_rc = 1
    return rc or (1 if peer_rc else 0)


if __name__ == "__main__":
    sys.exit(main())
