"""Path patching: ours (probes.paths, batched) vs a loop of TransformerLens hook runs.

Usage: .venv/bin/python benchmarks/path_patching.py [--repeats 3] [--pairs 256]
           [--run DIR [--step N]] [--per-position] [--direction denoising|noising]
           [--device cpu|cuda]
Model: by default a randomly initialised model of the demo's shape (RunConfig() defaults:
2 layers, 1 head, d_model 64, seq 3, gamma 0.5); `--run DIR` loads a trained run's
checkpoint instead (default: its last). Pairs: --pairs real mixture pairs with the key
corrupted (probes.corruptions.make_pairs); metric: logit difference of the two labels.

The reference is tests/test_paths.py's `reference_path_patch`, written the way the method
is usually written with TransformerLens hooks on the bridge model: the target and source
runs' caches once (two forwards), then for each path one forward with every head and MLP
output frozen at the target run but the sender's taken from the source run, recording the
receiver's input, and one forward on the target with that receiver input patched in (a path
into the logits needs only the first). It runs over every sender x receiver pair in which
the receiver reads the sender (and, with --per-position, every sender position too). Ours:
`path_patch` from tokens (its own clean and corrupted runs included), every path in one
batched call; `edge_attribution`, its first-order estimate, is timed beside them and its
agreement with the exact values printed as information. Ours must equal the loop to 1e-5
(asserted). Below the table: the matrix-multiply work of one call of each (torch.profiler's
FLOP count), the ratio arithmetic alone would give.
Each time is the best and worst of --repeats runs; the timed calls take turns, run by run.
Torch threads: torch's default; INITLENS_THREADS=N sets them.
"""

import argparse
import sys
from pathlib import Path

import torch

from initlens.models import RunConfig, build_model
from initlens.models.forward import Weights
from initlens.models.run import Run
from initlens.probes.attribution import agreement
from initlens.probes.corruptions import make_pairs
from initlens.probes.patching import logit_diff
from initlens.probes.paths import edge_attribution, path_patch, receivers, senders

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from patching import best_of  # noqa: E402  (benchmarks/patching.py, this script's folder)

from test_paths import TOL, reference_path_patch  # noqa: E402


@torch.inference_mode()
def tl_loop(model, target, source, metric, per_position: bool) -> torch.Tensor:
    """Every path by `reference_path_patch`: the two caches once, then its forwards per path
    (and sender position). [sender, receiver(, pos)], NaN where the receiver does not read
    the sender."""
    w = Weights.of(model)
    sent, received = senders(w), receivers(w)
    caches = model.run_with_cache(target)[1], model.run_with_cache(source)[1]
    positions = list(range(target.shape[1])) if per_position else [None]
    values = torch.full((len(sent), len(received), len(positions)), float("nan"))
    for i, s in enumerate(sent):
        for j, r in enumerate(received):
            if s.order >= r.order:
                continue
            for k, p in enumerate(positions):
                values[i, j, k] = reference_path_patch(
                    model, target, source, metric, s, r, p, caches=caches
                )
    return values if per_position else values[..., 0]


def matmul_gflop(fn) -> float:
    """Matrix-multiply work of one call of `fn` (torch.profiler's FLOP count: the linear
    layers and attention's matmuls; elementwise ops, LayerNorm and softmax not counted)."""
    cpu = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=cpu, with_flops=True) as prof:
        fn()
    return sum(e.flops for e in prof.key_averages()) / 1e9


def seconds(times) -> str:
    lo, hi = times
    return f"{lo:.4f} / {hi:.4f}"


def load(args):
    """The model, its task config and a line saying what it is."""
    if args.run:
        run = Run.open(args.run)
        step = run.resolve_step(args.step)
        model = run.load_model(step, device=args.device)
        return model, run.config, f"run {args.run}, step {step}"
    cfg = RunConfig()
    return build_model(cfg, args.device), cfg, f"random init, gamma {cfg.model.gamma}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--pairs", type=int, default=256)
    ap.add_argument("--run", default=None, help="a trained run's folder (default: random init)")
    ap.add_argument("--step", default=None, help="with --run: the checkpoint (default: last)")
    ap.add_argument("--direction", default="denoising", choices=["denoising", "noising"])
    ap.add_argument(
        "--per-position", action="store_true", help="also one patch per sender position"
    )
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    model, cfg, what = load(args)
    m = cfg.model
    pairs = make_pairs(cfg.task, "key", n=args.pairs).to(args.device)
    clean, corrupted = pairs.clean, pairs.corrupted
    metric = logit_diff(pairs.clean_label, pairs.corrupted_label)
    target, source = (corrupted, clean) if args.direction == "denoising" else (clean, corrupted)
    print(
        f"### {what}: {m.n_layers} layers, d_model {m.d_model}, {m.n_heads} heads, "
        f"d_mlp {m.mlp_dim}, seq {clean.shape[1]}, {len(clean)} pairs, {args.device}, "
        f"{args.direction}, torch threads {torch.get_num_threads()}\n"
    )
    cols = ["case", "n paths", "TL loop s (best / worst)", "ours s (best / worst)", "TL / ours"]
    print("| " + " | ".join(cols + ["max abs diff"]) + " |")
    print("|" + "---|" * (len(cols) + 1))
    work = []
    for per_position in [False, True] if args.per_position else [False]:
        kw = dict(per_position=per_position, direction=args.direction)
        fns = [
            lambda: tl_loop(model, target, source, metric, per_position),
            lambda: path_patch(model, clean, corrupted, metric, **kw),
            lambda: edge_attribution(model, clean, corrupted, metric, **kw),
        ]
        times, (ref, exact, estimate) = best_of(fns, args.repeats, args.device)
        ours = exact.values.cpu()
        assert torch.equal(ours.isnan(), ref.isnan()), "the paths measured differ"
        n = int((~ref.isnan()).sum())
        diff = (ours - ref).nan_to_num().abs().max().item()
        assert diff < TOL, f"ours and the TransformerLens loop differ by {diff:.1e}"
        agree = agreement(exact, estimate, k=5)
        est_diff = (estimate.values.cpu() - ref).nan_to_num().abs().max().item()
        case = "per sender position" if per_position else "all positions"
        tl = times[0][0]
        print(
            f"| path_patch, {case} | {n} | {seconds(times[0])} | {seconds(times[1])} | "
            f"{tl / times[1][0]:.1f}x | {diff:.1e} |"
        )
        print(
            f"| edge_attribution (estimate), {case} | {n} | (exact loop above) | "
            f"{seconds(times[2])} | {tl / times[2][0]:.1f}x | {est_diff:.1e} vs exact: "
            f"Pearson {agree['pearson']:.3f}, Spearman {agree['spearman']:.3f}, "
            f"top-5 overlap {agree['top5_overlap']:.1f} |",
            flush=True,
        )
        loop, ours = matmul_gflop(fns[0]), matmul_gflop(fns[1])
        work.append(f"{case}: TL loop {loop:.2f}, ours {ours:.2f} ({loop / ours:.1f}x)")
    print(f"\nmatmul GFLOP per call (torch.profiler): {'; '.join(work)}")
    print(
        f"metric (mean logit difference): clean {exact.clean:.4f}, corrupted {exact.corrupted:.4f}"
    )


if __name__ == "__main__":
    main()
