"""Activation patching: ours vs transformer_lens.patching, same model, same 256 pairs.

Usage: .venv/bin/python benchmarks/patching.py [--device cpu|cuda] [--repeats 3]
Model: the demo's default architecture (RunConfig() defaults), random init at gamma 0.5.
Pairs: 256 mixture prompts with the key corrupted. Checks agreement, prints the ratios.
Each time is the best of --repeats runs; the three timed calls take turns, run by run.
"""

import argparse
import time

import torch
from transformer_lens import patching as tlp

from initlens.models import RunConfig, build_model
from initlens.probes.patching import activation_patch, logit_diff

CASES = {"resid_pre": (tlp.get_act_patch_resid_pre, "resid_pre"),
         "attn_head_out_by_pos": (tlp.get_act_patch_attn_head_out_by_pos, "z")}


def best_of(fns, repeats):
    """Best time of each function, their runs interleaved so that a slow spell of the
    machine hits all of them alike; and each one's last result."""
    times, outs = [[] for _ in fns], [None] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            t = time.perf_counter()
            outs[i] = fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times[i].append(time.perf_counter() - t)
    return [min(t) for t in times], outs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--pairs", type=int, default=256)
    args = ap.parse_args()
    cfg = RunConfig()
    model = build_model(cfg, args.device)
    g = torch.Generator().manual_seed(0)
    lo, hi = cfg.task.keys
    import transformer_lens.patching as tl_patching  # quiet its per-patch progress bars
    tl_patching.tqdm = lambda it, *a, **k: it
    rows = cfg.task.generate(0).with_format("torch").shuffle(seed=0)[: args.pairs]
    clean = rows["tokens"].to(args.device)
    corrupted = clean.clone()
    corrupted[:, 0] = torch.randint(lo, hi + 1, (args.pairs,), generator=g).to(args.device)
    correct = rows["label"].to(args.device)
    alternative = (correct + 1) % cfg.task.vocab_size
    metric = logit_diff(correct, alternative)
    print(f"device {args.device}, {args.pairs} pairs, model {cfg.model}")
    print("TransformerLens is timed twice: its patching call alone (given the clean cache), "
          "and from tokens (run_with_cache on the clean tokens + the call), which is what "
          "ours is always timed on.")
    print("| patching | TL call | TL from tokens | ours from tokens | speed-up vs call | "
          "speed-up from tokens | max abs diff |")
    print("|---|---|---|---|---|---|---|")
    tl_metric = lambda lg: metric(lg[:, -1]).mean()  # noqa: E731
    for name, (ref_fn, component) in CASES.items():
        _, clean_cache = model.run_with_cache(clean)
        (t_call, t_tokens, t_ours), (ref, _, ours) = best_of([
            lambda: ref_fn(model, corrupted, clean_cache, tl_metric),
            lambda: ref_fn(model, corrupted, model.run_with_cache(clean)[1], tl_metric),
            lambda: activation_patch(model, clean, corrupted, metric, component).values,
        ], args.repeats)
        diff = (ref.to(ours.device) - ours).abs().max().item()
        assert diff <= 1e-5, f"{name}: results differ by {diff}"
        print(f"| {name} | {t_call * 1e3:.1f} ms | {t_tokens * 1e3:.1f} ms | "
              f"{t_ours * 1e3:.1f} ms | {t_call / t_ours:.1f}x | {t_tokens / t_ours:.1f}x | "
              f"{diff:.1e} |")


if __name__ == "__main__":
    main()
