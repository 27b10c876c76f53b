"""Activation patching: ours vs transformer_lens.patching (and nnsight), against the floor.

Usage: .venv/bin/python benchmarks/patching.py [--device cpu|cuda] [--repeats 3]
           [--shapes demo,research] [--nnsight]
Shapes: "demo" (RunConfig() defaults, random init at gamma 0.5), "research" (3 layers,
d_model 128, 4 heads, d_mlp 512, seq 9) and "gpu" (8 layers, d_model 512, 16 heads, seq 32;
run by default only with --device cuda). Pairs: 256 real mixture pairs with the key
corrupted (probes.corruptions.make_pairs); metric: logit difference of the two labels.

The floor: a patch at layer L whose first patched position is p must recompute layers L..
at positions p.. (resid_post: layers L+1..), whatever the method. Summed over the patches
of a sweep, in units of one full forward (n_layers x seq layer-positions over the batch),
it is the multiple of a forward that an exact sweep cannot avoid; "changing" counts only
the patches that replace some entry that differs between the runs (the others are no-ops).
"tight" also computes the final block at the label position only and finishes a patch after
attention (z, attn_out, mlp_out) at its own position in its own layer: the work our engine
cannot skip. Time estimates are those multiples times one forward over the batch, measured
amortized (our functional forward over 16 copies of the batch at once, divided by 16);
"ours / floor" is against the tight one. Attention's quadratic cost and the forward's
fixed per-call costs are not in the layer-position count.

--nnsight also times nnsight's batched interventions (one invoke per patch, all invokes
of a chunk in one batched forward) on the same bridge model; nnsight must be importable
(it is not a dependency: install it in a scratch environment).
Each time is the best and worst of --repeats runs; the timed calls take turns, run by run.
"""

import argparse
import time

import torch
from transformer_lens import patching as tlp

from initlens.models import MixtureTask, ModelConfig, RunConfig, build_model
from initlens.models.forward import Weights, hook_name, run_with_cache
from initlens.probes.corruptions import make_pairs
from initlens.probes.patching import AFTER_ATTENTION, _variant_masks, activation_patch, logit_diff

SHAPES = {
    "demo": RunConfig(),
    "research": RunConfig(
        task=MixtureTask(seq_len=9, samples_per_pair=20),
        model=ModelConfig(n_layers=3, d_model=128, n_heads=4, d_mlp=512),
    ),
    "gpu": RunConfig(
        task=MixtureTask(seq_len=32, samples_per_pair=4),
        model=ModelConfig(n_layers=8, d_model=512, n_heads=16),
    ),
}
# name -> (TransformerLens function, our component); all per position
CASES = {
    "resid_pre": (tlp.get_act_patch_resid_pre, "resid_pre"),
    "attn_out": (tlp.get_act_patch_attn_out, "attn_out"),
    "mlp_out": (tlp.get_act_patch_mlp_out, "mlp_out"),
    "attn_head_out_by_pos": (tlp.get_act_patch_attn_head_out_by_pos, "z"),
    "attn_head_v_by_pos": (tlp.get_act_patch_attn_head_v_by_pos, "v"),
}
AMORTIZE = 16  # copies of the batch in the forward whose time sets the floor's


def sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def best_of(fns, repeats, device):
    """Best and worst time of each function, their runs interleaved so that a slow spell
    of the machine hits all of them alike; and each one's last result."""
    times, outs = [[] for _ in fns], [None] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            sync(device)
            t = time.perf_counter()
            outs[i] = fn()
            sync(device)
            times[i].append(time.perf_counter() - t)
    return [(min(t), max(t)) for t in times], outs


def floor(w: Weights, clean, corrupted, component: str) -> tuple[int, float, float, float]:
    """Patches of a per-position denoising sweep of `component`, and the layer-position
    work it must redo as a multiple of one forward: (patches, all, changing, tight).
    all: every patch recomputes layers L.. at positions p.. (resid_post: L+1..);
    changing: the same over the patches that replace an entry that differs; tight: those,
    with the final block at the label position only and a patch after attention (z,
    attn_out, mlp_out) finishing its own layer at its own position only."""
    _, cache = run_with_cache(w, torch.cat([clean, corrupted]), (component,))
    (batch, seq), last = clean.shape, w.n_layers - 1
    first = cache[hook_name(component, 0)]
    masks, _, _ = _variant_masks(component, tuple(first.shape[1:]), True, first.device)
    pos = masks.flatten(2).any(-1).float().argmax(-1)  # first patched position [variant]
    start = 1 if component == "resid_post" else 0
    total = changing = tight = 0.0
    for layer in range(w.n_layers):
        act = cache[hook_name(component, layer)]
        differs = (act[:batch] - act[batch:]).abs().amax(0) != 0
        moves = (masks & differs).flatten(1).any(-1)
        work = (w.n_layers - layer - start) * (seq - pos)  # layer-positions per patch
        total += float(work.sum())
        changing += float(work[moves].sum())
        for p in pos[moves].tolist():
            layers = range(layer + start, w.n_layers)
            cost = [
                1 if lay == last or (lay == layer and component in AFTER_ATTENTION) else seq - p
                for lay in layers
            ]
            if layer == last and component in AFTER_ATTENTION and p != seq - 1:
                cost = []  # cannot reach the label logits
            tight += sum(cost)
    unit = w.n_layers * seq
    return w.n_layers * len(masks), total / unit, changing / unit, tight / unit


def forward_time(w: Weights, tokens, repeats: int, device) -> float:
    """Seconds of one full forward over `tokens`, amortized over AMORTIZE copies."""
    many = tokens.repeat(AMORTIZE, 1)
    [(best, _)], _ = best_of([lambda: run_with_cache(w, many, ())], repeats, device)
    return best / AMORTIZE


class NNsightPatcher:
    """Patching with nnsight's batched interventions: one invoke per patch."""

    def __init__(self, model, chunk: int = 32):
        from nnsight import NNsight

        class Batched(NNsight):  # the base class runs one invoke per trace
            def _batch_size(self, *inputs, **kwargs):
                return inputs[0].shape[0] if inputs else 0

            def _batch(self, invokes, fn):
                return (torch.cat([args[0] for args, _ in invokes]),), {}

        self.model, self.nn, self.chunk = model, Batched(model), chunk
        names = {id(m): n for n, m in model.named_modules()}
        self.path = {h: names[id(m)] for h, m in model.hook_dict.items() if id(m) in names}

    def envoy(self, hook: str):
        e = self.nn
        for part in self.path[hook].split("."):
            e = e[int(part)] if part.isdigit() else getattr(e, part)
        return e

    @torch.inference_mode()
    def __call__(self, corrupted, clean_cache, metric, component):
        """[layer, pos] or [layer, pos, head] mean metric, as TransformerLens returns."""
        cfg = self.model.cfg
        per_head = component in ("z", "v")
        patches = [
            (layer, p, h)
            for layer in range(cfg.n_layers)
            for p in range(corrupted.shape[1])
            for h in (range(cfg.n_heads) if per_head else [None])
        ]
        values = []
        for start in range(0, len(patches), self.chunk):
            saved = []
            with self.nn.trace() as tracer:
                for layer, p, h in patches[start : start + self.chunk]:
                    name = hook_name(component, layer)
                    new = clean_cache[name][:, p].flatten(1)
                    with tracer.invoke(corrupted):
                        out = self.envoy(name).output
                        if h is None:
                            out[:, p] = new
                        else:
                            cols = slice(h * cfg.d_head, (h + 1) * cfg.d_head)
                            out[:, p, cols] = new[:, cols]
                        saved.append(self.nn.output[:, -1].save())
            values += [metric(lg).mean() for lg in saved]
        shape = (cfg.n_layers, corrupted.shape[1]) + ((cfg.n_heads,) if per_head else ())
        return torch.stack(values).view(shape)


def ms(times) -> str:
    lo, hi = times
    return f"{lo * 1e3:.1f}-{hi * 1e3:.1f}"


def run_shape(name: str, cfg: RunConfig, args) -> None:
    model = build_model(cfg, args.device)
    nnsight = NNsightPatcher(model) if args.nnsight else None
    w = Weights.of(model)
    pairs = make_pairs(cfg.task, "key", n=args.pairs).to(args.device)
    clean, corrupted = pairs.clean, pairs.corrupted
    metric = logit_diff(pairs.clean_label, pairs.corrupted_label)
    tl_metric = lambda lg: metric(lg[:, -1]).mean()  # noqa: E731
    m = cfg.model
    t_fwd = forward_time(w, corrupted, args.repeats, args.device)
    print(
        f"\n### {name}: {m.n_layers} layers, d_model {m.d_model}, {m.n_heads} heads, "
        f"d_mlp {m.mlp_dim}, seq {clean.shape[1]}, {len(clean)} pairs, {args.device}; "
        f"one forward over the batch {t_fwd * 1e3:.2f} ms (amortized over {AMORTIZE})\n"
    )
    cols = (
        [
            "patching",
            "patches",
            "floor (x forward): all / changing / tight",
            "floor est. ms: changing / tight",
            "ours ms",
            "TL call ms",
        ]
        + (["nnsight ms"] if nnsight else [])
        + ["ours / floor", "TL / ours"]
        + (["nnsight / ours"] if nnsight else [])
        + ["max abs diff"]
    )
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for case, (ref_fn, component) in CASES.items():
        if m.mlp_dim == 0 and component == "mlp_out":
            continue
        _, clean_cache = model.run_with_cache(clean)
        fns = [
            lambda: ref_fn(model, corrupted, clean_cache, tl_metric),
            lambda: activation_patch(model, clean, corrupted, metric, component).values,
        ]
        if nnsight:
            fns.append(lambda: nnsight(corrupted, clean_cache, metric, component))
        times, outs = best_of(fns, args.repeats, args.device)
        ref = outs[0].to(outs[1].device)
        diffs = [(ref - o.to(ref.device)).abs().max().item() for o in outs[1:]]
        assert max(diffs) <= 1e-4, f"{name} {case}: results differ by {diffs}"
        n, f_all, f_changing, f_tight = floor(w, clean, corrupted, component)
        t_floor = f_tight * t_fwd
        row = (
            [
                case,
                str(n),
                f"{f_all:.2f} / {f_changing:.2f} / {f_tight:.2f}",
                f"{f_changing * t_fwd * 1e3:.1f} / {t_floor * 1e3:.1f}",
                ms(times[1]),
                ms(times[0]),
            ]
            + ([ms(times[2])] if nnsight else [])
            + [f"{times[1][0] / t_floor:.1f}x", f"{times[0][0] / times[1][0]:.1f}x"]
            + ([f"{times[2][0] / times[1][0]:.1f}x"] if nnsight else [])
            + [" / ".join(f"{d:.1e}" for d in diffs)]
        )
        print("| " + " | ".join(row) + " |", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--pairs", type=int, default=256)
    ap.add_argument(
        "--shapes",
        default=None,
        help="comma-separated, of: "
        + ", ".join(SHAPES)
        + " (default: all on cuda, demo,research otherwise)",
    )
    ap.add_argument("--nnsight", action="store_true")
    args = ap.parse_args()
    shapes = (
        args.shapes.split(",")
        if args.shapes
        else list(SHAPES)
        if args.device.startswith("cuda")
        else ["demo", "research"]
    )
    tlp.tqdm = lambda it, *a, **k: it  # quiet TransformerLens's per-patch progress bars
    torch.set_grad_enabled(False)
    print(
        "TL call: transformer_lens.patching given the clean cache. Ours: from tokens "
        "(its own clean and corrupted runs included). nnsight: batched invokes, given the "
        "same clean cache. Times: best-worst of the interleaved repeats."
    )
    for name in shapes:
        run_shape(name, SHAPES[name], args)


if __name__ == "__main__":
    main()
