#!/usr/bin/env python3
"""Produce consecutive weight snapshots of a small transformer being trained.

The delta codecs are judged on what a real optimizer does to real weights, so
this trains a byte-level decoder-only transformer (torch.nn only) on real text
that exists on any machine with Python: the top-level *.py files of the running
interpreter's standard library (sysconfig "stdlib" dir), sorted by name and
concatenated. Nothing is downloaded.

Regimes (--regime):
  rl        RL-style fine-tuning: a short pretraining phase (lr 1e-3, not
            exported) gives realistic weights; then a fresh AdamW at lr 1e-6
            (fp32 master weights, betas 0.9/0.999, weight decay 0.01, grad
            clip 1.0: verl's actor defaults) and a bfloat16 export after every
            step. lr 1e-6 gives ~2% changed bf16 elements per step on this
            model; 2e-6 gives ~3.4%, 3e-6 ~4.8% (see README).
  pretrain  Mid-pretraining: the same short phase with the regime's own
            schedule (linear warmup to lr 6e-4), then every following step is
            exported as bfloat16 (bf16/) and float32 (f32/).

Each export is one raw little-endian file holding ALL parameters, flattened and
concatenated in named_parameters() order: step_000000.bin is the weights before
the first exported step (the base), step_000001.bin after it, and so on.
manifest.json lists dtype, element count, parameter names/shapes/offsets and
the settings that produced the files. Output is deterministic for a given
seed, thread count and torch build.
"""
import argparse
import glob
import hashlib
import json
import os
import sysconfig
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

DEFAULTS = {  # regime -> (lr, weight decay)
    "rl": (1e-6, 0.01),
    "pretrain": (6e-4, 0.1),
}


def load_text(text_dir):
    """Concatenate the top-level *.py files of text_dir, in sorted order."""
    files = sorted(glob.glob(os.path.join(text_dir, "*.py")))
    if not files:
        raise SystemExit(f"no *.py files in {text_dir}")
    blob = b"".join(open(f, "rb").read() for f in files)
    source = {
        "description": "top-level *.py files of the Python standard library, "
                       "sorted by name, concatenated, byte-level tokens",
        "dir": text_dir, "files": len(files), "bytes": len(blob),
        "sha256": hashlib.sha256(blob).hexdigest(),
    }
    return torch.frombuffer(bytearray(blob), dtype=torch.uint8).long(), source


class Block(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.fc1, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class TinyLM(nn.Module):
    """GPT-style pre-LN decoder over bytes (vocab 256), untied output head."""

    def __init__(self, layers=4, d=256, heads=4, ctx=128, vocab=256):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(ctx, d)
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        # GPT-2 style init: small normal weights, which is what keeps bf16
        # exponents spread the way they are in real checkpoints.
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, idx):
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.ln_f(x))


def batches(data, ctx, batch, gen):
    """Endless random windows of the corpus; the generator makes them repeatable."""
    while True:
        starts = torch.randint(len(data) - ctx - 1, (batch,), generator=gen)
        x = torch.stack([data[s:s + ctx] for s in starts])
        y = torch.stack([data[s + 1:s + ctx + 1] for s in starts])
        yield x, y


def train_step(model, opt, xy, lr):
    for g in opt.param_groups:
        g["lr"] = lr
    x, y = xy
    loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return loss.item()


def export(model, path, dtype):
    """Write all parameters as one flat little-endian array."""
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).to(dtype)
    # numpy has no bfloat16: write its bit pattern as little-endian uint16.
    if dtype == torch.bfloat16:
        arr = flat.view(torch.int16).numpy().astype("<u2", copy=False)
    else:
        arr = flat.numpy().astype("<f4", copy=False)
    arr.tofile(path)


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--regime", choices=sorted(DEFAULTS), default="rl")
    ap.add_argument("--steps", type=int, default=20, help="exported steps (default 20)")
    ap.add_argument("--lr", type=float, help="lr of the exported steps "
                    "(default: rl 1e-6, pretrain 6e-4)")
    ap.add_argument("--weight-decay", type=float,
                    help="AdamW weight decay (default: rl 0.01, pretrain 0.1)")
    ap.add_argument("--pre-steps", type=int, default=300,
                    help="unexported pretraining steps before the exports (default 300)")
    ap.add_argument("--pre-lr", type=float, default=1e-3,
                    help="peak lr of the rl regime's pretraining phase (default 1e-3)")
    ap.add_argument("--warmup", type=int, default=30, help="linear lr warmup steps (default 30)")
    ap.add_argument("--batch", type=int, default=16, help="sequences per step (default 16)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--text-dir", default=sysconfig.get_paths()["stdlib"],
                    help="directory whose top-level *.py files are the corpus "
                         "(default: this interpreter's standard library)")
    args = ap.parse_args()

    lr = args.lr if args.lr is not None else DEFAULTS[args.regime][0]
    wd = args.weight_decay if args.weight_decay is not None else DEFAULTS[args.regime][1]
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)

    data, source = load_text(args.text_dir)
    model = TinyLM()
    ctx = model.pos.num_embeddings
    gen = torch.Generator().manual_seed(args.seed)
    stream = batches(data, ctx, args.batch, gen)

    # Short pretraining so the weights have moved away from their init. The
    # pretrain regime uses its own lr here and keeps the optimizer state, so
    # the exported steps are simply the next steps of the same run.
    pre_lr = args.pre_lr if args.regime == "rl" else lr
    opt = torch.optim.AdamW(model.parameters(), lr=pre_lr, weight_decay=0.1,
                            betas=(0.9, 0.95))
    t0 = time.time()
    for i in range(args.pre_steps):
        loss = train_step(model, opt, next(stream), pre_lr * min(1.0, (i + 1) / max(1, args.warmup)))
        if i % 50 == 0 or i == args.pre_steps - 1:
            print(f"pre-train step {i + 1}/{args.pre_steps} loss {loss:.3f} "
                  f"({time.time() - t0:.0f}s)", flush=True)
    if args.regime == "rl":
        # RL fine-tuning starts from a checkpoint with a fresh optimizer, and
        # Adam's moments in fp32 next to the fp32 master weights.
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd,
                                betas=(0.9, 0.999))
    else:
        for g in opt.param_groups:
            g["weight_decay"] = wd

    dtypes = {"bf16": torch.bfloat16}
    if args.regime == "pretrain":
        dtypes["f32"] = torch.float32
    dirs = {k: os.path.join(args.out, k) if len(dtypes) > 1 else args.out for k in dtypes}
    for d in dirs.values():
        os.makedirs(d, exist_ok=True)

    def export_all(step):
        for k, dt in dtypes.items():
            export(model, os.path.join(dirs[k], f"step_{step:06d}.bin"), dt)

    export_all(0)
    for s in range(1, args.steps + 1):
        # The pretrain regime's warmup may still be running if --pre-steps is small.
        step_lr = lr * min(1.0, (args.pre_steps + s) / max(1, args.warmup)) \
            if args.regime == "pretrain" else lr
        loss = train_step(model, opt, next(stream), step_lr)
        export_all(s)
        print(f"export step {s}/{args.steps} loss {loss:.3f} ({time.time() - t0:.0f}s)",
              flush=True)

    params, offset = [], 0
    for name, p in model.named_parameters():
        params.append({"name": name, "shape": list(p.shape), "offset": offset})
        offset += p.numel()
    for k, dt in dtypes.items():
        manifest = {
            "dtype": k, "elements": offset, "byte_order": "little",
            "files": [f"step_{s:06d}.bin" for s in range(args.steps + 1)],
            "regime": args.regime, "lr": lr, "weight_decay": wd,
            "optimizer": "AdamW", "master_weights": "float32",
            "pre_steps": args.pre_steps, "pre_lr": pre_lr, "warmup": args.warmup,
            "batch": args.batch, "context": ctx, "seed": args.seed,
            "threads": args.threads, "torch": torch.__version__,
            "model": "byte-level decoder, 4 layers, d_model 256, 4 heads",
            "text_source": source, "parameters": params,
        }
        with open(os.path.join(dirs[k], "manifest.json"), "w") as f:
            json.dump(manifest, f, indent=1)
    print(f"wrote {args.steps + 1} snapshots of {offset} elements to {args.out} "
          f"in {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
