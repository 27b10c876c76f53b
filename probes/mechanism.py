"""Claim checks: one number per published mechanistic claim, per checkpoint (docs/SCIENCE.md
sections 1.5 and 2.5).

The small-init mechanism is a list of claims about the trained weights: reasoning-anchor
embeddings are ordered by value, memory anchors move together, the first attention layer
averages, its value-output map has one dominant direction that reads the reasoning anchors
and not the memory ones, the embedding matrix is low-rank, and (composite task) first-layer
W_Q neurons condense. The pure functions below turn each into a number; `mechanism_metrics`
collects them for one checkpoint in a tidy table, and the mechanism instrument
(analyses/instruments/mechanism.py) holds the thresholds that judge them. Everything is
computed in float64 on the CPU.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch
from jaxtyping import Float, Int

from initlens.models.errors import UserError
from initlens.models.forward import Weights, hook_name, run_with_cache
from initlens.probes.geometry import (
    condensation,
    cosine_matrix,
    effective_rank,
    pca,
    token_embeddings,
    token_roles,
)

MECHANISM_COLUMNS = ("claim", "metric", "head", "value")
# The mixture task's roles the anchor claims compare (models/tasks/mixture.py).
REASONING_ROLE, MEMORY_ROLE = "reasoning_anchor", "memory_anchor"
# The published grouping threshold of condensation (docs/SCIENCE.md section 2.5).
CONDENSATION_COSINE = 0.7
LOW_RANK_K = 3  # the embedding claim's top-k principal components (our choice)
# Claims, in report order, with the metric each rests on first.
CLAIM_METRICS = {
    "ordered": ("order_spearman", "pc1_spearman"),
    "memory_together": (
        "together_gap",
        "memory_cosine",
        "reasoning_cosine",
        "memory_cosine_change",
        "reasoning_cosine_change",
    ),
    "attention_averages": ("averaging_distance",),
    "value_direction": (
        "ov_top_ratio",
        "ov_read_reasoning",
        "ov_read_memory",
        "ov_write_reasoning",
        "ov_write_memory",
    ),
    "embedding_low_rank": (f"top{LOW_RANK_K}_variance", "effective_rank"),
    "wq_condensed": ("condensed_fraction", "largest_group_fraction", "n_directions"),
    "same_target_parallel": ("same_target_cosine", "other_target_cosine"),
}


def _f64(x: torch.Tensor) -> torch.Tensor:
    return x.detach().to("cpu", torch.float64)


# ---------------------------------------------------------------- tensor metrics


def _ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks 1..n of x, ties given their average rank."""
    order = torch.argsort(x, stable=True)
    sorted_x = x[order]
    ranks = torch.empty_like(x)
    ranks[order] = torch.arange(1, len(x) + 1, dtype=x.dtype)
    for value in torch.unique(sorted_x):  # average the ranks of tied values
        tied = x == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def spearman(x: Float[torch.Tensor, " n"], y: Float[torch.Tensor, " n"]) -> float:
    """Spearman rank correlation (ties: average ranks); NaN when either side is constant."""
    x, y = _f64(x), _f64(y)
    if x.ndim != 1 or x.shape != y.shape or len(x) < 2:
        raise UserError(
            f"spearman: need two 1-D tensors of one length >= 2; got shapes "
            f"{tuple(x.shape)} and {tuple(y.shape)}"
        )
    rx, ry = _ranks(x) - (len(x) + 1) / 2, _ranks(y) - (len(y) + 1) / 2
    scale = rx.norm() * ry.norm()
    return float((rx * ry).sum() / scale) if scale > 0 else float("nan")


def _values(values: Sequence[float], n: int, what: str) -> torch.Tensor:
    v = torch.as_tensor(list(values), dtype=torch.float64)
    if v.shape != (n,):
        raise UserError(f"{what}: {len(v)} values for {n} embeddings; give one value per row")
    return v


def order_by_value(E: Float[torch.Tensor, "n d"], values: Sequence[float]) -> dict[str, float]:
    """How well embeddings follow their tokens' values: order_spearman = Spearman of pairwise
    cosine against |value difference| (-1: cosine falls off with distance, a banded matrix),
    pc1_spearman = |Spearman| of the first principal coordinate against value (1: PCA
    orders them)."""
    E = _f64(E)
    if E.ndim != 2 or E.shape[0] < 3:
        raise UserError(
            f"order_by_value: need at least 3 embeddings [n, d]; got shape {tuple(E.shape)}"
        )
    v = _values(values, E.shape[0], "order_by_value")
    upper = torch.ones(len(v), len(v), dtype=torch.bool).triu(1)
    distance = (v[:, None] - v[None, :]).abs()[upper]
    pc1 = pca(E, k=1)[0][:, 0]
    return {
        "order_spearman": spearman(cosine_matrix(E)[upper], distance),
        "pc1_spearman": abs(spearman(pc1, v)),
    }


def within_cosine(E: Float[torch.Tensor, "n d"]) -> float:
    """Mean cosine over distinct pairs of rows: how alike a group of embeddings is."""
    if E.ndim != 2 or E.shape[0] < 2:
        raise UserError(
            f"within_cosine: need at least 2 embeddings [n, d]; got shape {tuple(E.shape)}"
        )
    C = cosine_matrix(E)
    return float(C[~torch.eye(len(C), dtype=torch.bool)].mean())


def same_target_cosine(
    vectors: Float[torch.Tensor, "n d"], labels: Int[torch.Tensor, " n"]
) -> dict[str, float]:
    """Mean cosine between rows with the same label (same_target_cosine) and between rows
    with different labels (other_target_cosine), after centering: a direction every row
    shares says nothing about the target. 1 and about -1/(k-1) when each target's rows are
    parallel (k targets); near 0 for both when the rows ignore the target."""
    X, y = _f64(vectors), torch.as_tensor(labels).cpu()
    if X.ndim != 2 or y.shape != X.shape[:1] or len(y) < 2:
        raise UserError(
            f"same_target_cosine: need vectors [n, d] and one label per row, n >= 2; got "
            f"shapes {tuple(X.shape)} and {tuple(y.shape)}"
        )
    C = cosine_matrix(X - X.mean(0))
    same = (y[:, None] == y[None, :]) & ~torch.eye(len(y), dtype=torch.bool)
    other = y[:, None] != y[None, :]
    return {
        "same_target_cosine": float(C[same].mean()) if same.any() else float("nan"),
        "other_target_cosine": float(C[other].mean()) if other.any() else float("nan"),
    }


def averaging_distance(
    pattern: Float[torch.Tensor, "batch head dest src"],
) -> Float[torch.Tensor, " head"]:
    """Mean total-variation distance of each attention row (destinations q >= 1) from the
    uniform causal average over positions 0..q: 0 for an averaging layer, near 1 - 1/(q+1)
    for one that attends to a single position."""
    p = _f64(pattern)
    if p.ndim != 4 or p.shape[2] != p.shape[3] or p.shape[2] < 2:
        raise UserError(
            f"averaging_distance: need a full pattern [batch, head, dest, src] with dest = src "
            f">= 2 positions; got shape {tuple(p.shape)}"
        )
    n = p.shape[2]
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    uniform = causal / causal.sum(1, keepdim=True)
    tv = 0.5 * (p - uniform).abs().sum(-1)  # [batch, head, dest]
    return tv[:, :, 1:].mean((0, 2))


def ov_matrices(w: Weights, layer: int = 0) -> Float[torch.Tensor, "head d d"]:
    """Each head's value-output map W_V W_O of block `layer` (d_model x d_model, acting on
    row vectors as in TransformerLens: x @ W_V @ W_O is what the head writes for x)."""
    w.require_attention("the value-output map")
    if not 0 <= layer < w.n_layers:
        raise UserError(f"ov_matrices: layer {layer} is outside the model's {w.n_layers} layers")
    W_V = _f64(w[f"blocks.{layer}.attn.v.weight"]).view(w.n_heads, w.d_head, -1)  # [h, e, d]
    W_O = _f64(w[f"blocks.{layer}.attn.o.weight"]).view(-1, w.n_heads, w.d_head)  # [d, h, e]
    return torch.einsum("hed,fhe->hdf", W_V, W_O)


def _abs_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    scale = a.norm() * b.norm()
    return float((a @ b).abs() / scale) if scale > 0 else float("nan")


def value_direction(
    OV: Float[torch.Tensor, "d d"],
    reasoning: Float[torch.Tensor, " d"],
    memory: Float[torch.Tensor, " d"],
) -> dict[str, float]:
    """Whether a value-output map has one dominant direction and what it reads and writes:
    ov_top_ratio = s1 / s2 (inf at rank 1), ov_read_* = |cosine| of the top input (left)
    singular vector with the `reasoning` / `memory` direction, ov_write_* the same for the
    top output (right) singular vector."""
    OV, reasoning, memory = _f64(OV), _f64(reasoning), _f64(memory)
    U, S, Vh = torch.linalg.svd(OV)
    top_ratio = float(S[0] / S[1]) if S[1] > 0 else float("inf") if S[0] > 0 else float("nan")
    read, write = U[:, 0], Vh[0]
    return {
        "ov_top_ratio": top_ratio,
        "ov_read_reasoning": _abs_cosine(read, reasoning),
        "ov_read_memory": _abs_cosine(read, memory),
        "ov_write_reasoning": _abs_cosine(write, reasoning),
        "ov_write_memory": _abs_cosine(write, memory),
    }


def top_variance_fraction(E: Float[torch.Tensor, "n d"], k: int = LOW_RANK_K) -> float:
    """Share of the centered rows' variance in their top-k principal components (1 when the
    rows span at most k dimensions around their mean)."""
    if E.ndim != 2 or k < 1:
        raise UserError(
            f"top_variance_fraction: need a matrix [n, d] and k >= 1; got shape "
            f"{tuple(E.shape)} and k={k}"
        )
    E = _f64(E)
    lam = torch.linalg.svdvals(E - E.mean(0)) ** 2
    return float(lam[:k].sum() / lam.sum()) if lam.sum() > 0 else float("nan")


def condensed_fraction(
    W: Float[torch.Tensor, "n_vectors d"], threshold: float = CONDENSATION_COSINE
) -> float:
    """Fraction of the rows (neurons) of W with another row at |cosine| > threshold: the
    share that has condensed onto a shared direction."""
    if not 0 <= threshold < 1 or W.ndim != 2 or W.shape[0] < 2:
        raise UserError(
            f"condensed_fraction: need at least 2 rows [n, d] and a threshold in [0, 1); "
            f"got shape {tuple(W.shape)} and threshold={threshold}"
        )
    C = cosine_matrix(W).abs().fill_diagonal_(0)
    return float((C > threshold).any(1).double().mean())


# ---------------------------------------------------------------- one checkpoint


def unmeasured(model, task) -> dict[str, str]:
    """{claim: why} for the claims `mechanism_metrics` cannot measure on this model and
    task (no anchor roles, too few anchors, no attention)."""
    roles = token_roles(task)
    out = {}
    if REASONING_ROLE not in roles or MEMORY_ROLE not in roles:
        why = (
            f"task {task.name!r} has no {REASONING_ROLE} and {MEMORY_ROLE} roles "
            "(mixture task only)"
        )
        out.update(dict.fromkeys(("ordered", "memory_together", "value_direction"), why))
    else:
        if len(roles[REASONING_ROLE]) < 3:
            out["ordered"] = "needs at least 3 reasoning anchors"
        if min(len(roles[REASONING_ROLE]), len(roles[MEMORY_ROLE])) < 2:
            out["memory_together"] = "needs at least 2 anchors of each kind"
    if task.name != "composite":
        out["same_target_parallel"] = "composite task only"
    if Weights.of(model).kind != "transformer":
        why = "the Emb-MLP has no attention"
        out.update(dict.fromkeys(("attention_averages", "value_direction", "wq_condensed"), why))
        out["same_target_parallel"] = "the Emb-MLP has no last-layer token vectors"
    return out


def _rows(claim: str, values: dict[str, float], head: int | None = None) -> list[dict]:
    return [{"claim": claim, "metric": m, "head": head, "value": v} for m, v in values.items()]


def _anchor_cosines(model, roles: dict[str, list[int]]) -> dict[str, float]:
    memory = within_cosine(token_embeddings(model, roles[MEMORY_ROLE]))
    reasoning = within_cosine(token_embeddings(model, roles[REASONING_ROLE]))
    return {"memory_cosine": memory, "reasoning_cosine": reasoning}


def mechanism_metrics(
    model,
    task,
    tokens: Int[torch.Tensor, "batch seq"] | None = None,
    init=None,
    labels: Int[torch.Tensor, " batch"] | None = None,
) -> pd.DataFrame:
    """Each claim's numbers for one checkpoint, as a tidy table (claim, metric, head, value).

    - ordered: `order_by_value` of the reasoning-anchor embeddings.
    - memory_together: mean pairwise cosine among memory and among reasoning anchors,
      together_gap = memory - reasoning, and with `init` (the step-0 model) each one's
      change from init.
    - attention_averages (with `tokens`): `averaging_distance` of layer 0 per head, and
      their mean (head empty).
    - value_direction: `value_direction` of each layer-0 head's W_V W_O against the mean
      reasoning- and memory-anchor embeddings; head empty: the head with the largest top
      singular value (the dominant one).
    - embedding_low_rank: top-k variance share and effective rank (centered) of the
      embeddings of every input token of the task.
    - wq_condensed: `condensed_fraction` and `condensation` of the layer-0 W_Q neurons (rows
      of the query weight, all heads) at the published 0.7.
    - same_target_parallel (composite; with `tokens` and their `labels`):
      `same_target_cosine` of the last block's resid_post at the last position.
    Claims listed by `unmeasured` are left out.
    """
    skip = unmeasured(model, task)
    w = Weights.of(model)
    roles = token_roles(task)
    out: list[dict] = []
    if "ordered" not in skip:
        E = token_embeddings(model, roles[REASONING_ROLE])
        out += _rows("ordered", order_by_value(E, task.role_values(REASONING_ROLE)))
    if "memory_together" not in skip:
        cosines = _anchor_cosines(model, roles)
        values = {"together_gap": cosines["memory_cosine"] - cosines["reasoning_cosine"]}
        values.update(cosines)
        if init is not None:
            before = _anchor_cosines(init, roles)
            values.update({f"{k}_change": cosines[k] - before[k] for k in cosines})
        out += _rows("memory_together", values)
    last = hook_name("resid_post", w.n_layers - 1)
    if tokens is not None and not {"attention_averages", "same_target_parallel"} <= set(skip):
        tokens = torch.as_tensor(tokens)
        with torch.inference_mode():
            _, cache = run_with_cache(
                w, tokens.to(w["embed.weight"].device), names=("pattern", "resid_post")
            )
    if "same_target_parallel" not in skip and tokens is not None and labels is not None:
        out += _rows("same_target_parallel", same_target_cosine(cache[last][:, -1], labels))
    if "attention_averages" not in skip and tokens is not None:
        distance = averaging_distance(cache[hook_name("pattern", 0)])
        for head, d in enumerate(distance.tolist()):
            out += _rows("attention_averages", {"averaging_distance": d}, head)
        out += _rows("attention_averages", {"averaging_distance": float(distance.mean())})
    if "value_direction" not in skip:
        reasoning = token_embeddings(model, roles[REASONING_ROLE]).mean(0)
        memory = token_embeddings(model, roles[MEMORY_ROLE]).mean(0)
        OV = ov_matrices(w, 0)
        per_head = [value_direction(M, reasoning, memory) for M in OV]
        for head, values in enumerate(per_head):
            out += _rows("value_direction", values, head)
        dominant = int(torch.linalg.matrix_norm(OV, ord=2).argmax())
        out += _rows("value_direction", per_head[dominant])
    ids = sorted({t for members in roles.values() for t in members})
    E = token_embeddings(model, ids)
    out += _rows(
        "embedding_low_rank",
        {
            f"top{LOW_RANK_K}_variance": top_variance_fraction(E, LOW_RANK_K),
            "effective_rank": effective_rank(E, center=True),
        },
    )
    if "wq_condensed" not in skip:
        W_Q = w["blocks.0.attn.q.weight"]
        grouped = condensation(W_Q, CONDENSATION_COSINE)
        values = {"condensed_fraction": condensed_fraction(W_Q, CONDENSATION_COSINE)}
        values.update({k: float(grouped[k]) for k in ("largest_group_fraction", "n_directions")})
        out += _rows("wq_condensed", values)
    return pd.DataFrame(out, columns=list(MECHANISM_COLUMNS)).astype(
        {"head": "Int64", "value": float}
    )
