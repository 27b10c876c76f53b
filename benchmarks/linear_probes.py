"""Linear probes: `probe_model` vs a loop of sklearn LogisticRegression fits, same probes.

Usage: .venv/bin/python benchmarks/linear_probes.py [--run DIR] [--checkpoints 10] [--threads N]
       [--sklearn-max-iter 100 5000] [--ideas]

Workload (issue 4): the demo architecture (RunConfig() defaults: 2 layers, d_model 64,
seq_len 3), probed at resid_pre, resid_mid and resid_post of every layer and position
(18 probes per checkpoint) for the final label, at the last 10 checkpoints of one run, on
20,000 rows of the run's task (its data seed, more samples per pair). Same C, same held-out
split (probes.linear.holdout_mask), same per-(hook, position) standardization on both sides.
sklearn fits only the 18 probes; ours also fits their 18 control probes.
Without --run, trains the demo config at gamma 0.8 with 10 checkpoints into a temp dir.
Each sklearn setting is timed as a full loop; the accuracy check is against the last
(largest) max_iter, which should be run to convergence.
"""

import argparse
import dataclasses
import math
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])  # the repo root, as for the package

import numpy as np
import pandas as pd
import threadpoolctl
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from models import ModelConfig, Run, RunConfig, TrainConfig, train
from models.tasks.base import dataset_arrays
from probes.forward import Weights, hook_name, run_with_cache
from probes.linear import holdout_mask, probe_model

COMPONENTS = ("resid_pre", "resid_mid", "resid_post")
KEY = ["step", "hook", "position"]


def sklearn_loop(models, rows, train, max_iter, C, dedupe=False):
    """Held-out accuracy of every probe, fitted one by one; (table, seconds).

    dedupe: fit each distinct (token prefix, label) once, weighted by its count (the same
    objective: sklearn scales its penalty by the sum of the sample weights)."""
    y = rows["label"]
    out = []
    start = time.perf_counter()
    for step, model in models.items():
        w = Weights.of(model)
        with torch.inference_mode():
            _, cache = run_with_cache(w, torch.as_tensor(rows["tokens"]), names=COMPONENTS)
        for comp in COMPONENTS:
            for layer in range(w.n_layers):
                acts = cache[hook_name(comp, layer)].numpy()
                for pos in range(acts.shape[1]):
                    scaler = StandardScaler().fit(acts[train, pos])
                    X = scaler.transform(acts[:, pos])
                    lr = LogisticRegression(C=C, max_iter=max_iter)
                    if dedupe:
                        key = np.column_stack([rows["tokens"][train, : pos + 1], y[train]])
                        _, first, count = np.unique(key, axis=0, return_index=True,
                                                    return_counts=True)
                        lr.fit(X[train][first], y[train][first], sample_weight=count)
                    else:
                        lr.fit(X[train], y[train])
                    out.append(dict(step=step, hook=hook_name(comp, layer), position=pos,
                                    accuracy=lr.score(X[~train], y[~train]),
                                    n_iter=int(lr.n_iter_[0])))
    return pd.DataFrame(out), time.perf_counter() - start


def ours(models, rows, task, C, warm=True, **kw):
    """probe_model over the checkpoints, each warm-started from the last; (table, seconds)."""
    state = {} if warm else None
    out = []
    start = time.perf_counter()
    for step, model in models.items():
        df = probe_model(model, rows, task, targets=("label",), components=COMPONENTS,
                         C=C, state=state, **kw)
        out.append(df.assign(step=step))
    return pd.concat(out), time.perf_counter() - start


def gap(df, ref):
    """Per-probe accuracy difference (ours - reference), in points."""
    both = df.merge(ref, on=KEY, suffixes=("", "_ref"))
    return 100 * (both.accuracy - both.accuracy_ref)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", help="run directory (default: train the demo config)")
    ap.add_argument("--checkpoints", type=int, default=10)
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--C", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--sklearn-max-iter", type=int, nargs="+", default=[100, 5000])
    ap.add_argument("--ideas", action="store_true", help="also time each speed-up alone")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    threadpoolctl.threadpool_limits(args.threads)
    warnings.filterwarnings("ignore", category=ConvergenceWarning)

    if args.run:
        run = Run.open(args.run)
    else:
        cfg = RunConfig(model=ModelConfig(gamma=0.8), train=TrainConfig(n_checkpoints=10))
        print("training the demo config (gamma 0.8) ...", flush=True)
        run = train(cfg, tempfile.mkdtemp() + "/run", progress=False)
    task = run.config.task
    seed = run.config.train.data_seed
    per_pair = math.ceil(args.rows * task.samples_per_pair / len(task.generate(seed)))
    task = dataclasses.replace(task, samples_per_pair=per_pair)
    rows = dataset_arrays(task.generate(seed))
    train_rows = holdout_mask(len(rows["label"]), 0.2, seed=0)
    steps = run.checkpoint_steps()[-args.checkpoints:]
    models = {s: run.load_model(s, device="cpu") for s in steps}
    print(f"{len(rows['label'])} rows, {len(np.unique(rows['label']))} classes, checkpoints "
          f"{steps}, {args.threads} threads (torch and sklearn)", flush=True)

    refs = {}
    for max_iter in args.sklearn_max_iter:
        refs[max_iter] = sklearn_loop(models, rows, train_rows, max_iter, args.C)
        df, t = refs[max_iter]
        print(f"sklearn max_iter={max_iter}: {t:.1f} s, {len(df)} probes, "
              f"{(df.n_iter >= max_iter).sum()} stopped at max_iter", flush=True)
    mine, t_ours = ours(models, rows, task, args.C)
    print(f"ours: {t_ours:.1f} s, {len(mine)} probes (+ as many controls), "
          f"{(~mine.converged).sum()} not converged", flush=True)

    final = args.sklearn_max_iter[-1]
    print(f"\n| side | time, {len(steps)} checkpoints | ratio | accuracy gap to sklearn "
          f"max_iter={final} (points) |")
    print("|---|---|---|---|")
    ref = refs[final][0]
    for max_iter, (df, t) in refs.items():
        g = gap(df, ref)
        print(f"| sklearn loop, lbfgs, max_iter={max_iter} (18 probes/ckpt) | {t:.1f} s | "
              f"{t / t_ours:.1f}x ours | max {g.abs().max():.2f}, mean {g.mean():+.2f} |")
    g = gap(mine, ref)
    print(f"| ours: probe_model, warm start (18 probes + 18 controls/ckpt) | {t_ours:.1f} s | "
          f"1 | max {g.abs().max():.2f}, mean {g.mean():+.2f} |")

    if args.ideas:
        print("\n| variant (probe_model, with controls) | time | max gap (points) |")
        print("|---|---|---|")
        last = {steps[-1]: models[steps[-1]]}
        df, t = ours(last, rows, task, args.C, warm=False, dedupe=False)
        print(f"| all rows, cold, last checkpoint only, x{len(steps)} | "
              f"{t * len(steps):.1f} s | {gap(df, ref).abs().max():.2f} |", flush=True)
        for name, kw in [("prefix dedupe, cold", dict(warm=False)),
                         ("prefix dedupe, warm start", {}),
                         ("prefix dedupe, warm start, tol 1e-3", dict(tol=1e-3))]:
            df, t = ours(models, rows, task, args.C, **kw)
            print(f"| {name} | {t:.1f} s | {gap(df, ref).abs().max():.2f} |", flush=True)
        df, t = sklearn_loop(models, rows, train_rows, final, args.C, dedupe=True)
        print(f"| sklearn loop (no controls), max_iter={final}, on distinct (prefix, label) "
              f"rows with sample_weight | {t:.1f} s | {gap(df, ref).abs().max():.2f} |")

    worst = g.abs().max()
    assert worst <= 1.0, f"ours differs from sklearn (max_iter={final}) by {worst:.2f} points"


if __name__ == "__main__":
    main()
