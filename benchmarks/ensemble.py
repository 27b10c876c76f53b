"""K members of the demo architecture: one ensemble against K runs one after another.

Usage: .venv/bin/python benchmarks/ensemble.py [--k 8] [--steps 60] [--batch 100,1024]
Same configs, same steps, same evaluations, in one process; checks that the members agree
with their standalone runs (largest difference of the recorded training loss; held-out
metrics of large-init members drift further, as float rounding is amplified by training),
then prints one Markdown row per batch size for BENCHMARKS.md.
"""

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from initlens.analyses.studies.preference import curves
from initlens.models import RunConfig, train
from initlens.models.build import resolve_device
from initlens.models.ensemble import train_ensemble

parser = argparse.ArgumentParser()
parser.add_argument("--k", type=int, default=8)
parser.add_argument("--steps", type=int, default=60)
parser.add_argument("--batch", default="100,1024")
parser.add_argument("--device", default="auto")
args = parser.parse_args()

device = resolve_device(args.device)


def _train_loss(run):
    return curves(run.metrics(), "loss")["train"]


gammas = [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
with tempfile.TemporaryDirectory() as tmp:  # warm-up: first kernel launches, allocator
    warm = RunConfig().replace(
        train={"steps": 2, "eval_every": 2, "eval_size": 50, "device": str(device)}
    )
    train(warm, Path(tmp) / "alone", progress=False)
    train_ensemble(
        [warm, warm.replace(train={"seed": 1})], [Path(tmp) / "a", Path(tmp) / "b"], progress=False
    )
for batch in (int(b) for b in args.batch.split(",")):
    base = RunConfig().replace(
        train={
            "steps": args.steps,
            "batch_size": batch,
            "eval_every": args.steps,
            "eval_size": 200,
            "device": str(device),
        }
    )
    cfgs = [
        base.replace(model={"gamma": gammas[i % len(gammas)]}, train={"seed": i // len(gammas)})
        for i in range(args.k)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        alone = [train(c, root / f"alone{i}", progress=False) for i, c in enumerate(cfgs)]
        sequential = time.perf_counter() - t0
        t0 = time.perf_counter()
        runs = train_ensemble(cfgs, [root / f"m{i}" for i in range(args.k)], progress=False)
        together = time.perf_counter() - t0
        diffs = [(_train_loss(a) - _train_loss(b)).abs().max() for a, b in zip(alone, runs)]
        worst = max(diffs)
    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} cores"
    )
    print(
        f"| K={args.k}, batch {batch}, {args.steps} steps | {sequential:.1f} s | "
        f"{together:.1f} s | {sequential / together:.2f}x | {worst:.1e} | {where} |",
        flush=True,
    )
    print(
        "  train-loss difference by member: "
        + ", ".join(
            f"gamma {c.model.gamma:g} seed {c.train.seed}: {d:.1e}" for c, d in zip(cfgs, diffs)
        )
    )
