#!/usr/bin/env python3
"""How much changes between consecutive snapshots written by make_snapshots.py.

For every consecutive pair of step_*.bin files in DIR (dtype from its
manifest.json) prints the fraction of elements whose bits changed and, of
those, the fraction that moved by exactly one unit in the last place (the two
values are neighbours among representable numbers), and an order-0 entropy
bound on the compression ratio of an ideal sparse XOR code (a changed/unchanged
bit per element at entropy H(density), plus the entropy of the XOR patterns of
the changed elements); the same bound with the signed distance in ulps instead
of the XOR pattern (the receiver has the base, so an ulp distance is as good
as an XOR, and a +-1 ulp step has one pattern instead of one per carry length);
then the medians. This is
what decides how well a sparse XOR delta can do, so it is the first thing to
check when tuning a workload.
"""
import argparse
import glob
import json
import os

import numpy as np

BITS = {"bf16": (np.uint16, 15), "f32": (np.uint32, 31)}


def ordered(bits, sign_shift):
    """Map float bit patterns to integers that count representable values, so
    neighbouring floats differ by 1 (+0 and -0 both map to 0)."""
    b = bits.astype(np.int64)
    mag = b & ((1 << sign_shift) - 1)
    return np.where(b >> sign_shift, -mag, mag)


def entropy_bits(counts):
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("dir", help="directory with manifest.json and step_*.bin")
    args = ap.parse_args()
    with open(os.path.join(args.dir, "manifest.json")) as f:
        manifest = json.load(f)
    utype, sign_shift = BITS[manifest["dtype"]]
    files = sorted(glob.glob(os.path.join(args.dir, "step_*.bin")))
    dens, ulp1, ratios, ulp_ratios = [], [], [], []
    bits = np.dtype(utype).itemsize * 8
    prev = np.fromfile(files[0], dtype=np.dtype(utype).newbyteorder("<"))
    for path in files[1:]:
        cur = np.fromfile(path, dtype=np.dtype(utype).newbyteorder("<"))
        changed = prev != cur
        n = int(changed.sum())
        signed = ordered(cur[changed], sign_shift) - ordered(prev[changed], sign_shift)
        step = np.abs(signed)
        dens.append(n / cur.size)
        ulp1.append(float((step == 1).mean()) if n else 0.0)
        xor_h = entropy_bits(np.unique(cur[changed] ^ prev[changed], return_counts=True)[1]) \
            if n else 0.0
        ulp_h = entropy_bits(np.unique(signed, return_counts=True)[1]) if n else 0.0
        pos_h = entropy_bits(np.array([n, cur.size - n]))
        for out, h in ((ratios, xor_h), (ulp_ratios, ulp_h)):
            per_elem = pos_h + dens[-1] * h
            out.append(bits / per_elem if per_elem else float("inf"))
        print(f"{os.path.basename(path)}: changed {dens[-1]:.4%}  "
              f"of which +-1 ulp {ulp1[-1]:.2%}  median ulps {int(np.median(step)) if n else 0}  "
              f"max ulps {int(step.max()) if n else 0}  order-0 bound xor {ratios[-1]:.1f}x ulp {ulp_ratios[-1]:.1f}x")
        prev = cur
    print(f"median: changed {np.median(dens):.4%}  of which +-1 ulp {np.median(ulp1):.2%}  "
          f"order-0 bound xor {np.median(ratios):.1f}x ulp {np.median(ulp_ratios):.1f}x  "
          f"({len(dens)} pairs, {prev.size} elements, {manifest['dtype']})")


if __name__ == "__main__":
    main()
