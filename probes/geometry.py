"""Representation geometry: the read-outs of the small-init mechanism (docs/SCIENCE.md
sections 1.5, 2.5, 5 and 6).

At small init the embeddings of tokens that take part in a rule differentiate early and in
order while memorization tokens stay alike; first-layer attention starts as a uniform
causal average; weight vectors condense onto few directions. The pure tensor metrics below
measure each of these (cosine matrices, PCA, effective rank, CKA, condensation, attention
entropy, relative weight change); `geometry_metrics` collects the scalar ones for one
checkpoint in a tidy table. Everything is computed in float64 on the CPU.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import pandas as pd
import torch
from jaxtyping import Float, Int

from initlens.models.errors import UserError
from initlens.models.forward import BLOCK_HOOKS, Weights, hook_name, run_with_cache

GEOMETRY_COLUMNS = ("metric", "hook", "layer", "head", "group", "position", "value")
# Hooks whose activation is [batch, seq, ...] (pattern is [batch, head, dest, src]).
POSITION_HOOKS = tuple(c for c in BLOCK_HOOKS if c != "pattern")
CONDENSED = ("attn.q", "attn.k", "attn.v", "mlp.in")  # weights whose rows condensation reads


def _f64(x: torch.Tensor) -> torch.Tensor:
    return x.detach().to("cpu", torch.float64)


def _matrix(X: torch.Tensor, name: str = "X") -> torch.Tensor:
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
        raise UserError(f"{name} must be a non-empty 2-D matrix [n, d]; got shape {tuple(X.shape)}")
    return _f64(X)


# ---------------------------------------------------------------- tensor metrics


def cosine_matrix(X: Float[torch.Tensor, "n d"]) -> Float[torch.Tensor, "n n"]:
    """Pairwise cosine similarity of the rows of X (a zero row has cosine 0 with all)."""
    X = _matrix(X)
    U = X / X.norm(dim=1, keepdim=True).clamp_min(1e-300)
    return U @ U.T


def pca(
    X: Float[torch.Tensor, "n d"], k: int = 2
) -> tuple[Float[torch.Tensor, "n k"], Float[torch.Tensor, " k"]]:
    """Coordinates of the centered rows on the top-k principal axes, and each axis's share
    of the variance. Sign convention: each axis's largest-|loading| entry is positive."""
    X = _matrix(X)
    if not 1 <= k <= min(X.shape):
        raise UserError(f"pca: k={k} must be between 1 and min(n, d)={min(X.shape)}")
    U, S, Vh = torch.linalg.svd(X - X.mean(0), full_matrices=False)
    sign = torch.sign(Vh[:k].gather(1, Vh[:k].abs().argmax(1, keepdim=True))).squeeze(1)
    total = (S**2).sum()
    ratio = (S[:k] ** 2) / total if total > 0 else torch.zeros(k, dtype=S.dtype)
    return U[:, :k] * S[:k] * sign, ratio


def _spectrum(X: torch.Tensor, center: bool) -> torch.Tensor:
    X = _matrix(X)
    return torch.linalg.svdvals(X - X.mean(0) if center else X)


def effective_rank(X: Float[torch.Tensor, "n d"], center: bool = False) -> float:
    """exp of the entropy of the L1-normalized singular values (Roy & Vetterli 2007);
    `center` subtracts the row mean first (then it is a rank of the covariance)."""
    s = _spectrum(X, center)
    if s.sum() == 0:
        return 0.0
    p = s / s.sum()
    return float(torch.exp(-torch.special.xlogy(p, p).sum()))


def participation_ratio(X: Float[torch.Tensor, "n d"], center: bool = False) -> float:
    """(sum lam)^2 / sum lam^2 over lam = squared singular values of X, i.e. the eigenvalues
    of X^T X (of the covariance, up to scale, when `center`)."""
    lam = _spectrum(X, center) ** 2
    return float(lam.sum() ** 2 / (lam**2).sum()) if lam.sum() > 0 else 0.0


def components_for_variance(X: Float[torch.Tensor, "n d"], fraction: float = 0.9) -> int:
    """How many principal components (of the centered X) explain `fraction` of its
    variance: the feature-compressibility read-out of the grokking literature."""
    if not 0 < fraction < 1:
        raise UserError(f"components_for_variance: fraction={fraction} must lie in (0, 1)")
    lam = _spectrum(X, center=True) ** 2
    if lam.sum() == 0:
        return 0
    explained = torch.cumsum(lam, 0) / lam.sum()  # sklearn's PCA(n_components=fraction)
    return min(int((explained <= fraction).sum()) + 1, len(lam))


def _centered_gram(X: torch.Tensor, debiased: bool) -> torch.Tensor:
    """Linear Gram matrix, centered (debiased: the U-statistic form of Song et al. 2012)."""
    K = X @ X.T
    n = K.shape[0]
    if not debiased:
        H = torch.eye(n, dtype=K.dtype) - 1.0 / n
        return H @ K @ H
    K = K.clone().fill_diagonal_(0)
    means = K.sum(0) / (n - 2)
    means = means - means.sum() / (2 * (n - 1))
    return (K - means[:, None] - means[None, :]).fill_diagonal_(0)


def cka_matrix(
    reps: Sequence[Float[torch.Tensor, "n _"]], debiased: bool = True
) -> Float[torch.Tensor, "r r"]:
    """Linear CKA (Kornblith et al. 2019) between every pair of representations of the
    same n inputs; debiased uses the unbiased HSIC estimator (Song et al. 2012; Nguyen et
    al. 2021). Each centered Gram matrix is computed once and every pair is one dot
    product, so r representations cost r Gram matrices, not r^2.

    1 for identical inputs, invariant to orthogonal maps and isotropic scaling; NaN when
    an input has no variance. The debiased value can be slightly negative."""
    reps = [_matrix(X, f"representation {i}") for i, X in enumerate(reps)]
    rows = {X.shape[0] for X in reps}
    if len(rows) > 1:
        raise UserError(
            f"linear CKA: the representations must have the same rows (inputs); got {sorted(rows)}"
        )
    if debiased and rows.pop() < 4:
        raise UserError(
            "linear CKA: the debiased estimator needs at least 4 rows; "
            "pass more inputs or debiased=False"
        )
    grams = torch.stack([_centered_gram(X, debiased).flatten() for X in reps])
    norms = grams.norm(dim=1, keepdim=True)
    unit = torch.where(norms > 0, grams / norms.clamp_min(1e-300), float("nan"))
    upper = torch.triu(unit @ unit.T)
    return upper + torch.triu(upper, 1).T  # exactly symmetric


def linear_cka(
    X: Float[torch.Tensor, "n d1"], Y: Float[torch.Tensor, "n d2"], debiased: bool = True
) -> float:
    """Linear CKA between two representations of the same n inputs (see `cka_matrix`)."""
    return float(cka_matrix([X, Y], debiased)[0, 1])


def condensation(W: Float[torch.Tensor, "n_vectors d"], threshold: float = 0.7) -> dict:
    """How many directions the rows of W collapse onto (docs/SCIENCE.md section 2.5: W_Q at 0.7).

    Greedy rule: the ungrouped row with the most ungrouped neighbours (|cosine| > threshold;
    ties: lowest index) opens a group with those neighbours; repeat until all are grouped.
    Returns n_directions (groups, singletons included), largest_group_fraction and
    mean_abs_cosine over distinct pairs (0 for a single row)."""
    if not 0 <= threshold < 1:
        raise UserError(f"condensation: threshold={threshold} must be in [0, 1)")
    C = cosine_matrix(W).abs()
    n = C.shape[0]
    close = C > threshold
    ungrouped = torch.ones(n, dtype=torch.bool)
    sizes = []
    while ungrouped.any():
        degree = (close & ungrouped[None, :] & ungrouped[:, None]).sum(1)
        centre = int(torch.where(ungrouped, degree, -1).argmax())
        members = (close[centre] | (torch.arange(n) == centre)) & ungrouped
        sizes.append(int(members.sum()))
        ungrouped &= ~members
    off = C[~torch.eye(n, dtype=torch.bool)]
    return {
        "n_directions": len(sizes),
        "largest_group_fraction": max(sizes) / n,
        "mean_abs_cosine": float(off.mean()) if n > 1 else 0.0,
    }


def _pattern(pattern: torch.Tensor) -> torch.Tensor:
    if pattern.ndim != 4 or pattern.shape[-1] < pattern.shape[-2]:
        raise UserError(
            f"attention pattern must be [batch, head, dest, src] with src >= "
            f"dest; got shape {tuple(pattern.shape)}"
        )
    return _f64(pattern)


def attention_entropy(
    pattern: Float[torch.Tensor, "batch head dest src"],
) -> Float[torch.Tensor, "head dest"]:
    """Mean over the batch of each row's entropy -sum p log p (masked sources have p = 0);
    uniform attention over n causal sources gives log n."""
    p = _pattern(pattern)
    return -torch.special.xlogy(p, p).sum(-1).mean(0)


def information_flow(
    pattern: Float[torch.Tensor, "batch head dest src"], dest: int = -1
) -> Float[torch.Tensor, "head src"]:
    """Mean attention from destination `dest` (default: the label position) to each source."""
    p = _pattern(pattern)
    if not -p.shape[2] <= dest < p.shape[2]:
        raise UserError(f"information_flow: dest={dest} is outside the {p.shape[2]} positions")
    return p[:, :, dest, :].mean(0)


def relative_weight_change(
    params_t: Mapping[str, torch.Tensor], params_0: Mapping[str, torch.Tensor]
) -> dict[str, float]:
    """||W_t - W_0|| / ||W_0|| (Frobenius) per parameter: the rich-vs-lazy read-out
    (docs/SCIENCE.md section 5). NaN where W_0 is zero (biases start at 0)."""
    if set(params_t) != set(params_0):
        diff = sorted(set(params_t) ^ set(params_0))
        raise UserError(
            f"relative_weight_change: parameter names differ "
            f"({', '.join(diff[:5])}); compare checkpoints of the same model"
        )
    out = {}
    for name, w0 in params_0.items():
        w0, wt = _f64(w0), _f64(params_t[name])
        if wt.shape != w0.shape:
            raise UserError(
                f"relative_weight_change: {name} has shapes {tuple(wt.shape)} "
                f"and {tuple(w0.shape)}; compare checkpoints of the same model"
            )
        norm0 = w0.norm()
        out[name] = float((wt - w0).norm() / norm0) if norm0 > 0 else float("nan")
    return out


def distinguishability(E: Float[torch.Tensor, "n d"], groups: Sequence) -> dict:
    """How distinct groups of vectors are: mean within-group cosine (distinct pairs) per
    group, mean between-group cosine, and separability = leave-one-out accuracy of the
    nearest class centroid on unit-normalized rows (a linear, deterministic classifier),
    with `chance` = the largest group's share."""
    E = _matrix(E, "E")
    labels = list(groups)
    if len(labels) != E.shape[0]:
        raise UserError(f"distinguishability: {len(labels)} labels for {E.shape[0]} vectors")
    names = sorted(set(labels), key=labels.index)
    member = torch.tensor([[lab == g for lab in labels] for g in names])  # [groups, n]
    counts = member.sum(1)
    if len(names) < 2 or counts.min() < 2:
        raise UserError(
            "distinguishability: need at least 2 groups of at least 2 vectors; "
            f"got sizes {dict(zip(names, counts.tolist()))}"
        )
    C = cosine_matrix(E)
    eye = torch.eye(len(labels), dtype=torch.bool)
    within = {g: float(C[m[:, None] & m[None, :] & ~eye].mean()) for g, m in zip(names, member)}
    same = (member[:, :, None] & member[:, None, :]).any(0)
    U = E / E.norm(dim=1, keepdim=True).clamp_min(1e-300)
    own = member.T.double()  # [n, groups]: 1 where vector i is in group g
    # Centroid of each group without vector i, for every (i, g): drop i from its own group.
    centroids = (member.double() @ U - own[..., None] * U[:, None]) / (counts - own)[..., None]
    predicted = (U[:, None] - centroids).norm(dim=-1).argmin(1)
    truth = own.argmax(1)
    return {
        "within": within,
        "between": float(C[~same].mean()),
        "separability": float((predicted == truth).double().mean()),
        "chance": float(counts.max() / len(labels)),
    }


# ---------------------------------------------------------------- model and task helpers


def token_roles(task) -> dict[str, list[int]]:
    """Token ids of each role of a task, ascending (`Task.token_roles`): mixture has key,
    memory_anchor and reasoning_anchor; composite has key and anchor."""
    if not callable(getattr(task, "token_roles", None)):
        raise UserError(f"token_roles: unknown task {type(task).__name__}; pass a Task")
    return task.token_roles()


def token_embeddings(
    model, tokens: Sequence[int] | Int[torch.Tensor, " n"]
) -> Float[torch.Tensor, "n d"]:
    """The rows of W_E for `tokens` (float64, CPU)."""
    W_E = Weights.of(model)["embed.weight"]
    tokens = torch.as_tensor(tokens, dtype=torch.long).cpu()
    if tokens.ndim != 1 or len(tokens) == 0 or tokens.min() < 0 or tokens.max() >= len(W_E):
        raise UserError(
            f"token_embeddings: tokens must be a non-empty list of ids in 0..{len(W_E) - 1}"
        )
    return _f64(W_E.cpu()[tokens])


def _component(w: Weights, hook: str) -> str:
    """The block component a TransformerLens hook name refers to, or a UserError."""
    valid = [hook_name(c, layer) for layer in range(w.n_layers) for c in POSITION_HOOKS if w.has(c)]
    if hook not in valid:
        raise UserError(f"unknown hook {hook!r}; valid hooks: {', '.join(valid)}")
    return hook.rsplit("hook_", 1)[1]


def mean_activations(
    model, tokens_batch: Int[torch.Tensor, "batch seq"], hook: str, position: int
) -> tuple[Int[torch.Tensor, " n_ids"], Float[torch.Tensor, "n_ids d"]]:
    """Mean activation at `hook` and `position`, per distinct input token at that position
    (ids ascending); head dimensions (q, k, v, z) are flattened into d."""
    w = Weights.of(model)
    component = _component(w, hook)
    tokens = torch.as_tensor(tokens_batch)
    if tokens.ndim != 2 or not -tokens.shape[1] <= position < tokens.shape[1]:
        raise UserError(
            f"mean_activations: need tokens [batch, seq] and a position inside "
            f"seq; got shape {tuple(tokens.shape)} and position {position}"
        )
    with torch.inference_mode():
        device = w["embed.weight"].device
        _, cache = run_with_cache(w, tokens.to(device), names=(component,))
    acts = _f64(cache[hook][:, position].flatten(1))
    ids, inverse = torch.unique(tokens[:, position].cpu(), return_inverse=True)
    sums = torch.zeros(len(ids), acts.shape[1], dtype=torch.float64)
    sums.index_add_(0, inverse, acts)
    return ids, sums / torch.bincount(inverse, minlength=len(ids))[:, None]


def _rows(**fields) -> dict:
    return {c: fields.get(c) for c in GEOMETRY_COLUMNS}


def _tokens(rows) -> torch.Tensor:
    tokens = rows["tokens"] if isinstance(rows, Mapping) else rows
    tokens = torch.as_tensor(tokens)
    if tokens.ndim != 2 or len(tokens) == 0:
        raise UserError(
            f"geometry_metrics: rows must be a token batch [batch, seq] (or rows "
            f"with a 'tokens' column); got shape {tuple(tokens.shape)}"
        )
    return tokens


def _order_correlation(E: torch.Tensor, values: Sequence[float]) -> float:
    """Pearson correlation, over distinct pairs, of cosine with |value difference|:
    negative when cosine falls off with numeric distance (a banded, ordered matrix)."""
    v = torch.tensor(values, dtype=torch.float64)
    upper = torch.ones(len(v), len(v), dtype=torch.bool).triu(1)
    pairs = torch.stack([cosine_matrix(E)[upper], (v[:, None] - v[None, :]).abs()[upper]])
    return float(torch.corrcoef(pairs)[0, 1])


def geometry_metrics(
    model, task, rows=None, hooks: Sequence[str] = (), threshold: float = 0.7
) -> pd.DataFrame:
    """The scalar geometry read-outs of one checkpoint, as a tidy table.

    Columns: metric, hook (hook or parameter name), layer, head, group, position, value.
    - embed.weight over the task's input tokens (group "all" and each role): effective_rank,
      participation_ratio (uncentered); per role: within_cosine, order_correlation
      (against token value; composite anchors: against their shift).
    - the task's compared roles (mixture: reasoning vs memory anchors; composite: anchors
      vs keys):
      between_cosine, separability, separability_chance (see `distinguishability`).
    - each layer's attn.q/k/v and mlp.in weight rows: n_directions, largest_group_fraction,
      mean_abs_cosine (`condensation` at `threshold`).
    - with rows (a token batch [batch, seq], or rows with 'tokens'): attention_entropy per
      layer and head at the label (last) position (uniform: log seq), and information_flow
      from the label position per source `position`; per hook in `hooks`: effective_rank,
      participation_ratio and components_90 (principal components for 90% of the variance)
      of the label-position activations (feature compressibility).
    """
    w = Weights.of(model)
    roles = token_roles(task)
    out = []
    all_ids = sorted({t for ids in roles.values() for t in ids})
    for group, ids in [("all", all_ids), *roles.items()]:
        E = token_embeddings(model, ids)
        out += [
            _rows(
                metric="effective_rank", hook="embed.weight", group=group, value=effective_rank(E)
            ),
            _rows(
                metric="participation_ratio",
                hook="embed.weight",
                group=group,
                value=participation_ratio(E),
            ),
        ]
        if group != "all" and len(ids) >= 2:
            C = cosine_matrix(E)
            out.append(
                _rows(
                    metric="within_cosine",
                    hook="embed.weight",
                    group=group,
                    value=float(C[~torch.eye(len(ids), dtype=torch.bool)].mean()),
                )
            )
        if group != "all" and len(ids) >= 3:
            values = task.role_values(group)  # composite anchors: their shifts
            out.append(
                _rows(
                    metric="order_correlation",
                    hook="embed.weight",
                    group=group,
                    value=_order_correlation(E, values),
                )
            )
    compared = task.compared_roles
    if compared:
        ids = [t for r in compared for t in roles[r]]
        d = distinguishability(
            token_embeddings(model, ids), [r for r in compared for _ in roles[r]]
        )
        pair = " vs ".join(compared)
        out += [
            _rows(metric=m, hook="embed.weight", group=pair, value=d[key])
            for m, key in (
                ("between_cosine", "between"),
                ("separability", "separability"),
                ("separability_chance", "chance"),
            )
        ]

    for layer in range(w.n_layers):
        for part in CONDENSED:
            name = f"blocks.{layer}.{part}.weight"
            if name in w.params:
                c = condensation(w[name], threshold)
                out += [
                    _rows(metric=m, hook=name, layer=layer, value=float(v)) for m, v in c.items()
                ]

    if rows is None:
        if hooks:
            raise UserError("geometry_metrics: hooks need rows (a token batch) to run on")
        return _table(out)
    tokens = _tokens(rows)
    components = tuple(dict.fromkeys(["pattern"] + [_component(w, h) for h in hooks]))
    with torch.inference_mode():
        _, cache = run_with_cache(w, tokens.to(w["embed.weight"].device), names=components)
    for layer in range(w.n_layers if w.n_heads else 0):  # the Emb-MLP has no attention
        name = hook_name("pattern", layer)
        entropy = attention_entropy(cache[name])[:, -1]
        flow = information_flow(cache[name])
        for head in range(w.n_heads):
            out.append(
                _rows(
                    metric="attention_entropy",
                    hook=name,
                    layer=layer,
                    head=head,
                    value=float(entropy[head]),
                )
            )
            out += [
                _rows(
                    metric="information_flow",
                    hook=name,
                    layer=layer,
                    head=head,
                    position=src,
                    value=float(v),
                )
                for src, v in enumerate(flow[head])
            ]
    for hook in hooks:
        acts = _f64(cache[hook][:, -1].flatten(1))
        layer = int(re.match(r"blocks\.(\d+)\.", hook).group(1))
        spread = {
            "effective_rank": effective_rank(acts),
            "participation_ratio": participation_ratio(acts),
            "components_90": components_for_variance(acts, 0.9),
        }
        out += [
            _rows(metric=metric, hook=hook, layer=layer, group="label", value=value)
            for metric, value in spread.items()
        ]
    return _table(out)


def _table(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=list(GEOMETRY_COLUMNS)).astype(
        {"layer": "Int64", "head": "Int64", "position": "Int64", "value": float}
    )


def weight_change_table(model_t, model_0) -> pd.DataFrame:
    """Per parameter: layer, norm_0, norm_t, change = ||W_t - W_0|| and relative_change
    (`relative_weight_change`; NaN where W_0 is zero)."""
    p_t, p_0 = Weights.of(model_t).params, Weights.of(model_0).params
    relative = relative_weight_change(p_t, p_0)
    rows = []
    for name, w0 in p_0.items():
        w0, wt = _f64(w0), _f64(p_t[name])
        layer = re.match(r"blocks\.(\d+)\.", name)
        rows.append(
            dict(
                parameter=name,
                layer=int(layer.group(1)) if layer else None,
                norm_0=float(w0.norm()),
                norm_t=float(wt.norm()),
                change=float((wt - w0).norm()),
                relative_change=relative[name],
            )
        )
    return pd.DataFrame(rows).astype({"layer": "Int64"})
