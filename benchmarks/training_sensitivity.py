"""How far float32 rounding alone moves a run: train the same config twice, the second
time from initial weights nudged by a relative 1e-7 (about one rounding), and print the
largest difference of the recorded train loss.

Usage: .venv/bin/python benchmarks/training_sensitivity.py [--batch 1024] [--steps 60]
The yardstick for the ensemble's agreement with standalone runs (BENCHMARKS.md).
"""

import argparse
import sys
import tempfile
from pathlib import Path

import torch

import initlens.models.train  # noqa: F401  (the module, for its build_model)
from initlens.analyses.studies.preference import curves
from initlens.models import RunConfig, train

parser = argparse.ArgumentParser()
parser.add_argument("--batch", type=int, default=1024)
parser.add_argument("--steps", type=int, default=60)
parser.add_argument("--gammas", default="0.4,0.5,0.6,0.7,0.9")
args = parser.parse_args()

module = sys.modules[
    "initlens.models.train"
]  # `initlens.models.train` the attribute is the function
build = module.build_model


def _loss(run):
    return curves(run.metrics(), "loss")["train"]


def nudged(cfg, device=None):
    model = build(cfg, device)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1 + 1e-7 * torch.randn(p.shape, generator=g))
    return model


base = RunConfig().replace(
    train={
        "steps": args.steps,
        "batch_size": args.batch,
        "eval_every": args.steps,
        "eval_size": 200,
    }
)
with tempfile.TemporaryDirectory() as tmp:
    for gamma in (float(g) for g in args.gammas.split(",")):
        cfg = base.replace(model={"gamma": gamma})
        a = train(cfg, Path(tmp) / f"a{gamma}", progress=False)
        module.build_model = nudged
        b = train(cfg, Path(tmp) / f"b{gamma}", progress=False)
        module.build_model = build
        print(
            f"gamma {gamma:g}: init nudged by 1e-7 -> train loss differs by "
            f"{(_loss(a) - _loss(b)).abs().max():.1e}",
            flush=True,
        )
