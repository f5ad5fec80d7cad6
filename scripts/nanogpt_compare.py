#!/usr/bin/env python3
"""Trains the same GPT-2 with nanoGPT's train.py (eager and torch.compile) and with
sympathy on the same tokens, side by side, and prints tokens/s and their ratios.

nanoGPT is not a package: pass a checkout of it (https://github.com/karpathy/nanoGPT)
with --nanogpt; this script downloads nothing. Its train.py reads raw uint16 token files,
which is what sympathy's char token cache is, so both read the very same
`RUN/tokens/train.u16` and `val.u16`. The model is the `small` preset's shape with
`--arch gpt2 --optimizer adamw` (nanoGPT's architecture and optimizer): 4 layers, 4
heads, C = 192, T = 128, batch 16, AdamW (0.9, 0.99), weight decay 0.1, clip 1.0,
fp32 on the CPU. Runs alternate (sympathy, eager, compile, sympathy, ...) so a machine
that slows down slows all three alike.

    .venv/bin/python scripts/nanogpt_compare.py --nanogpt ~/src/nanoGPT --run runs/default
"""

import argparse
import json
import pickle
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

SHAPE = dict(n_layer=4, n_head=4, n_embd=192, block_size=128, batch_size=16)
VOCAB = 131  # sympathy's char tokenizer


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nanogpt", required=True, type=Path, help="a nanoGPT checkout")
    p.add_argument("--run", default="runs/default", type=Path,
                   help="a sympathy run with the char tokenizer, for its token cache")
    p.add_argument("--bin", default="target/release/sympathy")
    p.add_argument("--iters", type=int, default=60, help="training steps per measurement")
    p.add_argument("--skip", type=int, default=10, help="first steps left out (warm-up, compile)")
    p.add_argument("--repeats", type=int, default=2)
    return p.parse_args()


def check(args):
    if not (args.nanogpt / "train.py").is_file():
        sys.exit(f"error: --nanogpt: {args.nanogpt} has no train.py; clone nanoGPT there")
    tokens = args.run / "tokens"
    if not (tokens / "train.u16").is_file():
        sys.exit(f"error: --run: {tokens}/train.u16 is missing; train a char run there first "
                 "(make demo)")
    manifest = json.loads((tokens / "manifest.json").read_text())
    if "char" not in json.dumps(manifest):
        sys.exit(f"error: --run: {args.run} does not use the char tokenizer")
    return tokens


def nanogpt_workdir(args, tokens):
    """A folder where train.py finds its configurator and data/sympathy/{train,val}.bin."""
    work = Path(tempfile.mkdtemp(prefix="nanogpt-"))
    shutil.copy(args.nanogpt / "configurator.py", work)
    data = work / "data" / "sympathy"
    data.mkdir(parents=True)
    (data / "train.bin").symlink_to((tokens / "train.u16").resolve())
    (data / "val.bin").symlink_to((tokens / "val.u16").resolve())
    with open(data / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": VOCAB}, f)
    return work


def nanogpt(args, work, compile_):
    """Median ms per step of train.py, after the first --skip steps."""
    flags = dict(SHAPE, dataset="sympathy", device="cpu", dtype="float32", compile=compile_,
                 bias=True, dropout=0.0, learning_rate=2e-3, min_lr=2e-4, beta2=0.99,
                 weight_decay=0.1, grad_clip=1.0, warmup_iters=10, max_iters=args.iters,
                 lr_decay_iters=args.iters, gradient_accumulation_steps=1,
                 eval_interval=10**9, eval_iters=1, log_interval=1,
                 always_save_checkpoint=False, out_dir=str(work / "out"))
    cmd = [sys.executable, str(args.nanogpt / "train.py"),
           *(f"--{k}={v}" for k, v in flags.items())]
    out = subprocess.run(cmd, cwd=work, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"error: nanoGPT's train.py failed:\n{out.stderr[-2000:]}")
    ms = [(int(i), float(t)) for i, t in re.findall(r"iter (\d+): loss [\d.]+, time ([\d.]+)ms",
                                                    out.stdout)]
    return statistics.median(t for i, t in ms if i >= args.skip)


def sympathy(args, tokens):
    """Median ms per step of `sympathy train` on the same shape, after --skip steps."""
    out = Path(tempfile.mkdtemp(prefix="sympathy-"))
    shutil.copytree(tokens, out / "tokens")  # the cache, so nothing is re-tokenised
    cmd = [args.bin, "train", "--out", str(out), "--preset", "small", "--arch", "gpt2",
           "--optimizer", "adamw", "--schedule", "cosine", "--max-steps", str(args.iters),
           "--warmup-steps", "10", "--eval-every", str(10**9), "--checkpoint-every", str(10**9),
           *(f for k, v in SHAPE.items() for f in (f"--{k.replace('_', '-')}", str(v)))]
    subprocess.run(cmd, check=True, capture_output=True)
    lines = (out / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    shutil.rmtree(out)
    tokens_per_step = SHAPE["batch_size"] * SHAPE["block_size"]
    return statistics.median(1e3 * tokens_per_step / r["tokens_per_s"] for r in records
                             if r["step"] > args.skip and r.get("val_loss") is None)


def main():
    args = parse_args()
    tokens = check(args)
    work = nanogpt_workdir(args, tokens)
    tokens_per_step = SHAPE["batch_size"] * SHAPE["block_size"]
    ms = {"sympathy": [], "nanoGPT eager": [], "nanoGPT compile": []}
    for r in range(args.repeats):
        ms["sympathy"].append(sympathy(args, tokens))
        ms["nanoGPT eager"].append(nanogpt(args, work, False))
        ms["nanoGPT compile"].append(nanogpt(args, work, True))
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f} ms" for k, v in ms.items()),
              flush=True)
    shutil.rmtree(work)
    base = statistics.median(ms["sympathy"])
    print("\n| trainer | ms/step (median) | tokens/s | sympathy's speed over it |")
    print("|---|---|---|---|")
    for name, runs in ms.items():
        m = statistics.median(runs)
        print(f"| {name} | {m:.1f} | {tokens_per_step / m * 1e3:,.0f} | {m / base:.2f}× |")


if __name__ == "__main__":
    main()
