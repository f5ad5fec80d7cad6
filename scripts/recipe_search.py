#!/usr/bin/env python3
"""Trains each recipe for several seeds and prints validation bits/char as a table.

Each recipe is a name and the `sympathy train` flags that differ from the `small` preset.
Every run trains the same number of steps (so the same tokens) or, with `--minutes`,
for the same wall-clock budget; both end with the budget schedule's linear decay, so
every model is annealed when it is measured. Runs go one after the other, never side by
side, and each keeps its folder under `--out` so a table can be rebuilt without
retraining (`--table-only`).

    scripts/recipe_search.py --steps 1200 --seeds 1,2,3 --out runs/recipes
    scripts/recipe_search.py --minutes 3 --seeds 1,2,3 --recipes gpt2,modern
"""

import argparse
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

# Each step adds one change to the one before it, so each row's gain is that change's.
# Every recipe names its architecture and optimizer, whatever the preset's default.
ADAMW = ["--optimizer", "adamw"]
RECIPES = {
    "gpt2": ["--arch", "gpt2", *ADAMW],
    "rope": ["--arch", "gpt2", "--pos", "rope", *ADAMW],
    "rmsnorm+qknorm": ["--arch", "gpt2", "--pos", "rope", "--norm", "rmsnorm", "--qk-norm", *ADAMW],
    "relu2": ["--arch", "modern", "--untied-head", "false", "--zero-init", "false", *ADAMW],
    "untied+zero": ["--arch", "modern", *ADAMW],
    "muon": ["--arch", "modern", "--optimizer", "muon"],
}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bin", default="target/release/sympathy")
    p.add_argument("--out", default="runs/recipes")
    p.add_argument("--seeds", default="1,2,3")
    p.add_argument("--recipes", default=",".join(RECIPES))
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--steps", type=int, help="train every run this many steps")
    budget.add_argument("--minutes", type=float, help="train every run this long")
    p.add_argument("--extra", default="", help="flags added to every run")
    p.add_argument("--table-only", action="store_true", help="read the runs, train none")
    return p.parse_args()


def recipe_flags(name):
    """A recipe from RECIPES, or NAME=FLAGS given on the command line."""
    if "=" in name:
        name, flags = name.split("=", 1)
        return name, flags.split()
    if name not in RECIPES:
        sys.exit(f"error: --recipes: unknown recipe {name!r}; known: {', '.join(RECIPES)}")
    return name, RECIPES[name]


def train(args, name, flags, seed):
    out = Path(args.out) / f"{name}-s{seed}"
    if out.exists():
        return out  # already trained: the table reads it
    budget = (
        # A deadline no run reaches: the steps alone end (and anneal) it.
        ["--max-steps", str(args.steps), "--schedule", "budget", "--max-minutes", "10000"]
        if args.steps
        else ["--max-steps", "1000000", "--max-minutes", str(args.minutes)]
    )
    cmd = [args.bin, "train", "--preset", "small", "--out", str(out), "--seed", str(seed),
           "--eval-every", "1000000", "--checkpoint-every", "1000000",
           *budget, *flags, *args.extra.split()]
    print("$", " ".join(cmd), flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{out}.log", "w") as log:  # the progress bar and summary, kept aside
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT)
    return out


def last_record(out):
    lines = (out / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    evaluated = [r for r in records if r.get("val_loss") is not None]
    return records[-1], evaluated[-1]


def row(name, outs):
    bpc, steps, tps = [], [], []
    for out in outs:
        last, ev = last_record(out)
        bpc.append(ev["val_loss"] / math.log(2))
        steps.append(last["step"])
        tps.append(statistics.median(
            json.loads(l)["tokens_per_s"] for l in (out / "metrics.jsonl").read_text().splitlines()
            if l.strip()))
    spread = max(bpc) - min(bpc)
    return (f"| {name} | {statistics.mean(bpc):.4f} | {spread:.4f} | "
            f"{' / '.join(f'{b:.4f}' for b in bpc)} | {statistics.median(steps):.0f} | "
            f"{statistics.median(tps):,.0f} |")


def main():
    args = parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    recipes = [recipe_flags(n) for n in args.recipes.split(",")]
    done = {name: [] for name, _ in recipes}
    # Seed by seed, every recipe in turn: a machine that slows down for a while slows
    # every recipe alike, which matters when runs are cut by the clock.
    for s in seeds:
        for name, flags in recipes:
            done[name].append(Path(args.out) / f"{name}-s{s}" if args.table_only
                              else train(args, name, flags, s))
    print(f"\n| recipe | val bits/char, mean of {len(seeds)} | spread (max − min) "
          "| per seed | steps | median tokens/s |")
    print("|---|---|---|---|---|---|")
    for name, outs in done.items():
        print(row(name, outs))


if __name__ == "__main__":
    main()
