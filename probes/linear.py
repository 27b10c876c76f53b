"""Linear probes: multinomial logistic regression from a cached activation to a variable.

The objective is scikit-learn's `LogisticRegression(C=C)` (lbfgs, multinomial): mean
cross-entropy + ||W||^2 / (2 C n), the intercept unpenalized. It is solved by a batched
L-BFGS in torch, so many probes (every hook and position, and their control tasks) fit in
one optimization, on CPU or CUDA. Two exact savings make a sweep cheap:
- rows whose activations are known to be equal (same token prefix, in a causal model) are
  fitted once, weighted by their label counts (`groups`);
- a sweep over checkpoints starts each fit from the previous checkpoint's solution.

Every probe comes with a control task (Hewitt & Liang 2019): the same probe on labels
that are a fixed random function of the input type at the probed position, and its
selectivity = accuracy - control accuracy. The type is the token there together with the
task's key and anchor tokens at or before it (`control_types`): the token alone takes a
handful of values at the label position (the anchors), and any probe memorizes a handful
of random labels, so a control on it sits at 100% everywhere. `probe_model` is the
researcher-facing call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float, Int
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted
from torch import Tensor

from initlens.models.errors import UserError
from initlens.models.forward import Weights, hook_name, run_with_cache
from initlens.models.tasks.base import dataset_arrays

TARGETS = ("key", "a1", "a2", "intermediate", "label", "task_type", "memorized")
# Block hooks with one d_model vector per position (attention-only models: no MLP hooks).
PROBE_COMPONENTS = ("resid_pre", "attn_out", "resid_mid", "mlp_out", "resid_post")
# sklearn's default max_iter=100 stops 3-9 accuracy points short of the optimum on our
# activations (BENCHMARKS.md); every fit here runs to its gradient tolerance instead.
MAX_ITER = 2000


# --------------------------------------------------------------------------- solver


@dataclass(frozen=True)
class ProbeFit:
    """Fitted probes (on the inputs as given) and their accuracies."""

    weight: Float[Tensor, "probe d k"]
    bias: Float[Tensor, "probe k"]
    accuracy: Float[Tensor, " probe"]  # held-out rows (nan when there are none)
    train_accuracy: Float[Tensor, " probe"]
    n_iter: Int[Tensor, " probe"]
    converged: Bool[Tensor, " probe"]

    def logits(self, X: Float[Tensor, "probe n d"]) -> Float[Tensor, "probe n k"]:
        return X @ self.weight + self.bias[:, None]


def _loss_grad(t: Tensor, X: Tensor, Y: Tensor, r: Tensor, lam: Tensor) -> tuple[Tensor, Tensor]:
    """Objective and gradient per probe: sum_ik Y_ik CE_ik + 1/2 sum lam * t^2."""
    Z = X @ t
    Z = Z - Z.amax(-1, keepdim=True)
    E = Z.exp()
    total = E.sum(-1, keepdim=True)
    # Cross-entropy as log(total) - Z per entry: no cancellation between large logits.
    loss = (Y * (total.log() - Z)).sum((1, 2)) + 0.5 * (lam * t * t).sum((1, 2))
    return loss, X.transpose(1, 2) @ (E * (r / total) - Y) + lam * t


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """Per-probe inner product of two [probe, e, k] tensors (one batched matmul)."""
    return (a.flatten(1)[:, None] @ b.flatten(1)[:, :, None]).view(-1)


def _line_search(t, d, loss, g, data, tries: int = 20):
    """Step along d from t for every probe: the first of 1, then interpolated shorter steps,
    that passes Armijo, or Hager-Zhang's approximate Wolfe test (which still works when a
    float32 loss can no longer resolve the decrease). Returns the new point, loss, gradient
    and which probes found a step."""
    slope = _dot(g, d)  # < 0
    step = torch.ones_like(loss)
    todo = torch.arange(len(t), device=t.device)
    out = None  # (t, loss, g, found) once some probe needs a shorter step
    for _ in range(tries):
        every = len(todo) == len(t)  # the usual case: no copies of the data
        pick = (lambda x: x) if every else (lambda x: x[todo])
        a = pick(step)[:, None, None]
        trial = pick(t) + a * pick(d)
        tl, tg = _loss_grad(trial, *(data if every else tuple(x[todo] for x in data)))
        f0, s0 = pick(loss), pick(slope)
        ok = (tl <= f0 + 1e-4 * pick(step) * s0) | (
            (tl <= f0 + 1e-6 * f0.abs()) & (_dot(tg, pick(d)) <= -0.8 * s0)
        )
        if every and bool(ok.all()):  # the full step, for every probe
            return trial, tl, tg, ok
        if out is None:
            out = t.clone(), loss.clone(), g.clone(), torch.zeros_like(ok)
        done = todo[ok]
        out[0][done], out[1][done], out[2][done], out[3][done] = trial[ok], tl[ok], tg[ok], True
        # Minimizer of the quadratic through f0, s0 and the trial value, kept in [0.1, 0.5].
        cur = pick(step)
        curv = (tl - f0 - s0 * cur).clamp(min=1e-30)
        step[todo] = (-s0 * cur**2 / (2 * curv)).clamp(0.1 * cur, 0.5 * cur)
        todo = todo[~ok]
        if len(todo) == 0:
            break
    return out


def _lbfgs(
    X: Float[Tensor, "p m e"],
    Y: Float[Tensor, "p m k"],
    lam: Float[Tensor, " p"],
    theta: Float[Tensor, "p e k"],
    max_iter: int,
    tol: float,
    memory: int = 10,
) -> tuple[Tensor, Tensor, Tensor]:
    """Minimize sum_ik Y_ik CE_ik + lam/2 ||theta[:-1]||^2 per probe (rows of X end in 1).

    Y holds each row's label weights, summing to 1 per probe (so the loss is a mean).
    L-BFGS batched over probes; a probe stops when its largest gradient entry is <= tol
    (scipy's pgtol, as sklearn uses it), and finished probes leave the batch.
    Returns theta, iterations and convergence per probe."""
    theta = theta.clone()
    n_iter = torch.zeros(len(X), dtype=torch.long, device=X.device)
    pen = torch.ones_like(theta[0])
    pen[-1] = 0  # the intercept row is not penalized
    data = (X, Y, Y.sum(-1, keepdim=True), lam[:, None, None] * pen)
    idx = torch.arange(len(X), device=X.device)  # probes still running
    t = theta
    loss, g = _loss_grad(t, *data)
    gmax = g.abs().amax((1, 2))  # per probe, updated until it leaves the batch
    found = torch.ones_like(gmax, dtype=torch.bool)
    hist: list[tuple[Tensor, Tensor, Tensor]] = []  # (s, y, rho), oldest first
    gamma = 1 / g.flatten(1).norm(dim=1).clamp(min=1)  # first step: a short one
    for _ in range(max_iter):
        keep = (g.abs().amax((1, 2)) > tol) & found  # stop when no step decreases the loss
        if not keep.all():  # drop finished probes from every batched tensor
            theta[idx[~keep]], gmax[idx[~keep]] = t[~keep], g[~keep].abs().amax((1, 2))
            idx, t, loss, g, gamma = idx[keep], t[keep], loss[keep], g[keep], gamma[keep]
            data = tuple(a[keep] for a in data)
            hist = [(s[keep], y[keep], rho[keep]) for s, y, rho in hist]
        if len(idx) == 0:
            break
        # Two-loop recursion; pairs that failed the curvature test have rho = 0 (no-ops).
        q, alphas = g.clone(), []
        for s, y, rho in reversed(hist):
            a = rho * _dot(s, q)
            q -= a[:, None, None] * y
            alphas.append(a)
        q *= gamma[:, None, None]
        for (s, y, rho), a in zip(hist, reversed(alphas)):
            q += s * (a - rho * _dot(y, q))[:, None, None]
        d = -torch.where((_dot(g, q) <= 0)[:, None, None], g, q)  # keep a descent direction
        new_t, loss, new_g, found = _line_search(t, d, loss, g, data)
        n_iter[idx] += 1
        s, y = new_t - t, new_g - g
        sy = _dot(s, y)
        valid = sy > 1e-10
        hist = (hist + [(s, y, torch.where(valid, 1 / sy.clamp(min=1e-30), 0))])[-memory:]
        gamma = torch.where(valid, sy / _dot(y, y).clamp(min=1e-30), gamma)
        t, g = new_t, new_g
    theta[idx], gmax[idx] = t, g.abs().amax((1, 2))
    return theta, n_iter, gmax <= tol


def fit_probes(
    X: Float[Tensor, "probe n d"],
    y: Int[Tensor, "probe n"] | Int[Tensor, " n"],
    train_mask: Bool[Tensor, " n"],
    C: float = 1.0,
    *,
    groups: Int[Tensor, " n"] | None = None,
    init: ProbeFit | None = None,
    n_classes: int | None = None,
    max_iter: int = MAX_ITER,
    tol: float = 1e-4,
) -> ProbeFit:
    """Fit one L2 multinomial logistic regression per probe, all in one batched solve.

    y: class indices 0..k-1 (shared by all probes or one row per probe); negative = row
    undefined for that probe (left out of both splits). groups: rows with the same group id
    have equal features in every probe (e.g. the same token prefix in a causal model); they
    are fitted once, weighted by their label counts: the same objective, far fewer rows.
    init: a previous fit of the same shapes to start from (warm start)."""
    p, n, d = X.shape
    dev, dtype = X.device, X.dtype
    y = torch.as_tensor(y, device=dev).expand(p, n)
    train_mask = torch.as_tensor(train_mask, device=dev)
    k = int(n_classes or int(y.max()) + 1)
    if groups is None:
        inverse, rep = torch.arange(n, device=dev), torch.arange(n, device=dev)
    else:
        groups = torch.as_tensor(groups, device=dev)
        _, inverse = torch.unique(groups, return_inverse=True)
        rep = torch.full((int(inverse.max()) + 1,), n, device=dev).scatter_reduce(
            0, inverse, torch.arange(n, device=dev), "amin"
        )  # first row of each group
    m = len(rep)
    train = train_mask & (y >= 0)
    counts = torch.zeros(p, m, k, dtype=dtype, device=dev)
    counts.view(p, m * k).index_put_(
        (torch.arange(p, device=dev)[:, None].expand(p, n), inverse * k + y.clamp(min=0)),
        train.to(dtype),
        accumulate=True,
    )
    n_train = counts.sum((1, 2))
    Xa = torch.cat([X[:, rep], torch.ones(p, m, 1, dtype=dtype, device=dev)], -1)
    theta = torch.zeros(p, d + 1, k, dtype=dtype, device=dev)
    if init is not None:
        if init.weight.shape != (p, d, k):
            raise ValueError(
                f"init has weight shapes {tuple(init.weight.shape)}, these probes need {(p, d, k)}"
            )
        theta = torch.cat([init.weight, init.bias[:, None]], 1).to(dev, dtype)
    with torch.no_grad():
        theta, n_iter, converged = _lbfgs(
            Xa,
            counts / n_train.clamp(min=1)[:, None, None],
            1 / (C * n_train.clamp(min=1)),
            theta,
            max_iter,
            tol,
        )
        correct = ((Xa @ theta).argmax(-1)[:, inverse] == y).to(dtype)
        test = ~train_mask & (y >= 0)
        acc = (correct * test).sum(1) / test.sum(1)
        train_acc = (correct * train).sum(1) / train.sum(1)
    return ProbeFit(theta[:, :-1], theta[:, -1], acc, train_acc, n_iter, converged)


# ------------------------------------------------------------------ sklearn estimator


class LinearProbe(ClassifierMixin, BaseEstimator):
    """scikit-learn classifier with LogisticRegression(C)'s objective, fitted in torch.

    Accepts numpy arrays or torch tensors; `classes_` keeps the original label values.
    Two classes are fitted in the multinomial form (sklearn uses the binomial one, whose
    penalty is twice as strong for the same C)."""

    def __init__(
        self, C: float = 1.0, max_iter: int = MAX_ITER, tol: float = 1e-4, device: str = "cpu"
    ):
        self.C = C
        self.max_iter = max_iter
        self.tol = tol
        self.device = device

    def _X(self, X) -> Tensor:
        return torch.as_tensor(
            np.asarray(X) if not isinstance(X, Tensor) else X, dtype=torch.float32
        ).to(self.device)

    def fit(self, X, y) -> LinearProbe:
        X = self._X(X)
        y = y.cpu().numpy() if isinstance(y, Tensor) else np.asarray(y)
        self.classes_, y_idx = np.unique(y, return_inverse=True)
        y_idx = torch.as_tensor(y_idx, device=self.device)
        fit = fit_probes(
            X[None],
            y_idx,
            torch.ones(len(y_idx), dtype=torch.bool, device=self.device),
            self.C,
            n_classes=len(self.classes_),
            max_iter=self.max_iter,
            tol=self.tol,
        )
        self.coef_ = fit.weight[0].T.cpu().numpy()
        self.intercept_ = fit.bias[0].cpu().numpy()
        self.n_iter_ = int(fit.n_iter[0])
        self.n_features_in_ = X.shape[1]
        return self

    def decision_function(self, X) -> np.ndarray:
        check_is_fitted(self)
        X = self._X(X)
        W = torch.as_tensor(self.coef_, device=X.device)
        return (X @ W.T + torch.as_tensor(self.intercept_, device=X.device)).cpu().numpy()

    def predict_proba(self, X) -> np.ndarray:
        z = self.decision_function(X)
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    def predict(self, X) -> np.ndarray:
        scores = self.decision_function(X)
        return self.classes_[scores.argmax(1)]


# ---------------------------------------------------------------- targets, controls


def _rows(rows) -> dict[str, np.ndarray]:
    return rows if isinstance(rows, dict) else dataset_arrays(rows)


def target_values(rows, task, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(values, defined) of a probe target on every row, from the task's metadata.

    intermediate: the value after the first rule (mixture key + a1 on reasoning rows;
    composite key + shift(a1)), undefined where no rule applies (memory / twist rows).
    memorized: 1 on rows only a lookup can answer (mixture memory, composite twist)."""
    rows = _rows(rows)
    n = len(rows["label"])
    every = np.ones(n, dtype=bool)
    if name in ("key", "a1", "a2", "label"):
        return rows[name].astype(np.int64), every
    if name == "intermediate":
        values, defined = task.intermediate(rows)
        return values.astype(np.int64), defined
    order, lookup = task.task_types, task.memorized_type
    if (name == "task_type" and len(order) < 2) or (name == "memorized" and not lookup):
        need = (
            "several task types" if name == "task_type" else "a task type only a lookup can answer"
        )
        raise UserError(
            f"target {name!r} needs {need}; task {task.name!r} has none: use "
            f"one of key, a1, a2, label"
        )
    types = rows["task_type"]
    if name == "task_type":
        unknown = set(np.unique(types)) - set(order)
        if unknown:
            raise UserError(
                f"rows have task_type {sorted(unknown)}, not one of the "
                f"{task.name} task's {order}; pass rows generated by that task"
            )
        return np.select([types == t for t in order], range(len(order))).astype(np.int64), every
    if name == "memorized":
        return (types == lookup).astype(np.int64), every
    raise UserError(f"unknown probe target {name!r}; choose from {', '.join(TARGETS)}")


def control_types(rows, pos: int) -> Int[np.ndarray, " n"]:
    """The input type of each row at position `pos`, for its control task: the token at
    `pos` with the task's key and two anchor tokens (at key_pos, key_pos + 1, key_pos + 2)
    that lie at or before `pos` (a causal model has seen them there), as one id per
    distinct combination. Rows of one type always get the same control label, so a probe
    can reach the control only by memorizing a random type -> label map: easy over the
    handful of anchor tokens alone, hard over (key, a1, a2) combinations. Rows without a
    key position (`key_pos`) fall back to the token at `pos`."""
    rows = _rows(rows)
    tokens = np.asarray(rows["tokens"])
    n, seq = tokens.shape
    parts = [tokens[:, pos]]
    if "key_pos" in rows:
        where = np.asarray(rows["key_pos"], dtype=np.int64)[:, None] + np.arange(3)
        seen = where <= pos
        content = tokens[np.arange(n)[:, None], np.clip(where, 0, seq - 1)]
        parts += list(np.where(seen, content, -1).T)
    _, types = np.unique(np.stack(parts, 1), axis=0, return_inverse=True)
    return types.ravel().astype(np.int64)


def control_labels(
    tokens: Int[np.ndarray, " n"], values: np.ndarray, defined: np.ndarray, seed: int = 0
) -> np.ndarray:
    """Control task (Hewitt & Liang 2019): each type (a token id, or a `control_types`
    id) gets one fixed random label, drawn from the empirical distribution of the real
    target's values."""
    rng = np.random.default_rng([seed, 7])
    table = rng.choice(values[defined], size=int(tokens.max()) + 1)
    return table[tokens]


def holdout_mask(n: int, test_fraction: float = 0.2, seed: int = 0) -> np.ndarray:
    """True for training rows: a random (1 - test_fraction) of n rows, fixed by seed."""
    if not 0 < test_fraction < 1:
        raise UserError(f"test_fraction={test_fraction} must lie strictly between 0 and 1")
    n_test = int(round(test_fraction * n))
    if n_test < 1 or n_test >= n:
        raise UserError(
            f"{n} rows are too few to hold out test_fraction={test_fraction}; pass more rows"
        )
    train = np.ones(n, dtype=bool)
    train[np.random.default_rng([seed, 3]).permutation(n)[:n_test]] = False
    return train


# ------------------------------------------------------------------ researcher call


def check_request(targets: Sequence[str], components: Sequence[str]) -> None:
    """At least one target and one component, all known, before any work."""
    for what, given, known in (
        ("target", targets, TARGETS),
        ("component", components, PROBE_COMPONENTS),
    ):
        bad = [x for x in given if x not in known]
        if bad or not given:
            problem = f"unknown probe {what}(s) {bad}" if bad else f"no probe {what} given"
            raise UserError(f"{problem}; choose from {', '.join(known)}", option=what)


def _components(model, components) -> list[str]:
    w = Weights.of(model)
    valid = [c for c in PROBE_COMPONENTS if w.has(c)]
    bad = [c for c in components if c not in valid]
    if bad:
        kind = (
            " (attention-only model)"
            if w.attn_only
            else " (Emb-MLP)"
            if w.kind == "emb_mlp"
            else ""
        )
        raise UserError(f"cannot probe component(s) {bad}; choose from {', '.join(valid)}{kind}")
    return list(components)


def _classes(name: str, values: np.ndarray, defined: np.ndarray, train: np.ndarray):
    """Class index per row (-1 where undefined), checking every class can be trained."""
    if not defined.any():
        raise UserError(
            f"target {name!r} is undefined on every row passed (e.g. intermediate "
            f"on memory rows only); pass rows where it applies"
        )
    classes, idx = np.unique(values[defined], return_inverse=True)
    if len(classes) < 2:
        raise UserError(
            f"target {name!r} takes a single value ({classes[0]}) on these rows; "
            f"a probe needs at least two classes"
        )
    y = np.full(len(values), -1, dtype=np.int64)
    y[defined] = idx
    in_train = np.bincount(y[defined & train], minlength=len(classes))
    if in_train.min() == 0:
        rare = classes[in_train == 0]
        total = np.bincount(idx, minlength=len(classes))[in_train == 0]
        raise UserError(
            f"target {name!r}: class(es) {rare.tolist()[:5]} have {total.tolist()[:5]}"
            f" row(s) and none in the training split ({int(defined.sum())} rows, "
            f"{len(classes)} classes); pass more rows or a smaller test_fraction"
        )
    return y, len(classes)


def _distinct(acts: Float[Tensor, "hook n seq d"]) -> tuple[list[int], list[int]]:
    """The first hook of each set of equal activations, and each hook's index among them."""
    distinct: list[int] = []
    slot = []
    for i in range(len(acts)):
        same = [k for k, j in enumerate(distinct) if torch.equal(acts[i], acts[j])]
        if not same:
            distinct.append(i)
        slot.append(same[0] if same else len(distinct) - 1)
    return distinct, slot


def probe_model(
    model,
    rows,
    task,
    targets=("key",),
    components=("resid_pre", "resid_mid", "resid_post"),
    positions=None,
    test_fraction: float = 0.2,
    seed: int = 0,
    C: float = 1.0,
    device=None,
    state: dict | None = None,
    max_iter: int = MAX_ITER,
    tol: float = 1e-4,
    dedupe: bool = True,
) -> pd.DataFrame:
    """Probe every (component, layer, position) of `model` for each target, with controls.

    rows: a task Dataset or `dataset_arrays` dict. Activations come from one functional
    forward pass; each (hook, position) is standardized once on the training rows; all
    probes of a (target, position), and their controls, fit in one batched solve. Rows with
    the same token prefix share their activations (causal model) and are fitted once
    (`dedupe=False` fits every row: the same result, slower).
    state: pass the same dict for successive checkpoints of a run; each fit then starts
    from the previous checkpoint's solution (it is updated in place).
    One row per (hook, position, target): accuracy (held-out), control_accuracy (labels
    drawn per `control_types` type), selectivity = accuracy - control_accuracy,
    train_accuracy, n_train, n_test, n_classes, control_types (how many input types the
    control's labels are drawn over: a probe memorizes a few), and converged (probe and
    control reached tol within max_iter)."""
    rows = _rows(rows)
    check_request(targets, components)
    components = _components(model, components)
    w = Weights.of(model)
    dev = torch.device(device) if device is not None else next(iter(w.params.values())).device
    tokens = torch.as_tensor(rows["tokens"])
    seq = tokens.shape[1]
    positions = list(range(seq)) if positions is None else list(positions)
    if any(not -seq <= p < seq for p in positions):
        raise UserError(f"positions {positions} out of range for sequences of length {seq}")
    positions = list(dict.fromkeys(p % seq for p in positions))
    train = holdout_mask(len(tokens), test_fraction, seed)
    tr = torch.as_tensor(train, device=dev)
    with torch.inference_mode():
        _, cache = run_with_cache(w, tokens.to(w["embed.weight"].device), names=components)
    # Hooks of one shape are probed together (the Emb-MLP's hidden layer is wider than its
    # embedding, and it has one position: the label's).
    groups: dict[tuple, list[tuple[str, int]]] = {}
    for c, layer in [(c, layer) for c in components for layer in range(w.n_layers)]:
        groups.setdefault(tuple(cache[hook_name(c, layer)].shape[1:]), []).append((c, layer))
    labels = {t: target_values(rows, task, t) for t in targets}
    out = []
    for shape, hooks in groups.items():
        with torch.inference_mode():
            acts = torch.stack([cache[hook_name(c, layer)] for c, layer in hooks]).to(
                dev, torch.float32
            )  # [hook, n, seq, d]
            # Hooks holding the same activations (resid_post of layer L is resid_pre of
            # L + 1) are fitted once: slot[i] is hook i's probe among the distinct ones.
            distinct, slot = _distinct(acts)
            acts = acts[distinct]
            mean = acts[:, tr].mean(1, keepdim=True)
            std = acts[:, tr].std(1, unbiased=False, keepdim=True)
            acts = (acts - mean) / torch.where(std > 0, std, 1)
        first = seq - shape[0]  # the position of the activations' first one
        for target in targets:
            values, defined = labels[target]
            y, k = _classes(target, values, defined, train)
            classes = np.unique(values[defined])
            for pos in [p for p in positions if p >= first]:
                _, prefix = np.unique(rows["tokens"][:, : pos + 1], axis=0, return_inverse=True)
                types = control_types(rows, pos)
                n_types = len(np.unique(types[defined]))
                ctrl = np.searchsorted(classes, control_labels(types, values, defined, seed))
                h = len(distinct)
                y_both = torch.as_tensor(
                    np.stack([y] * h + [np.where(y >= 0, ctrl, -1)] * h), device=dev
                )
                X = acts[:, :, pos - first].repeat(2, 1, 1)  # real probes, then controls
                key = (target, pos, shape)
                init = (state or {}).get(key)
                if init is not None and init.weight.shape != (len(X), X.shape[-1], k):
                    init = None  # other rows or components than last time: start cold
                fit = fit_probes(
                    X,
                    y_both,
                    tr,
                    C,
                    groups=torch.as_tensor(prefix.ravel()) if dedupe else None,
                    init=init,
                    n_classes=k,
                    max_iter=max_iter,
                    tol=tol,
                )
                if state is not None:
                    state[key] = fit
                for (comp, layer), i in zip(hooks, slot):
                    acc, ctrl_acc = fit.accuracy[i].item(), fit.accuracy[h + i].item()
                    out.append(
                        dict(
                            hook=hook_name(comp, layer),
                            component=comp,
                            layer=layer,
                            position=pos,
                            target=target,
                            accuracy=acc,
                            control_accuracy=ctrl_acc,
                            selectivity=acc - ctrl_acc,
                            train_accuracy=fit.train_accuracy[i].item(),
                            n_train=int((defined & train).sum()),
                            n_test=int((defined & ~train).sum()),
                            n_classes=k,
                            control_types=n_types,
                            converged=bool(fit.converged[i] & fit.converged[h + i]),
                        )
                    )
    return pd.DataFrame(out)
