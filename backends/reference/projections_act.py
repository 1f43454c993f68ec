"""NumPy twins of the sum_act projection and the output-constraint operators (float64).

Written independently of the JAX kernels and as simply as possible, so that they check them:
the 1-D problem of a continuous activation is minimised on a dense grid refined by zooming, a
step function by trying every level's closed cell, and the cross-entropy prox by plain Newton
with a dense Hessian. Signatures match `projc.backends.jax.projections`.
"""

from __future__ import annotations

import numpy as np

_GRID = 2001  # points of the first grid over the search interval
_ZOOMS = 12  # each zoom shrinks the interval tenfold


def _sigmoid(s):
    e = np.exp(-np.abs(s))
    return np.where(s >= 0, 1 / (1 + e), e / (1 + e))


def _quantize_levels(levels=2, scale=1.0):
    q = -scale + 2 * scale * np.arange(levels) / (levels - 1)
    edges = np.concatenate([[-np.inf], (q[:-1] + q[1:]) / 2, [np.inf]])
    return q, list(zip(edges[:-1], edges[1:]))


def _quantize(s, levels=2, scale=1.0):
    j = np.clip(np.floor((s + scale) * (levels - 1) / (2 * scale) + 0.5), 0, levels - 1)
    return -scale + 2 * scale * j / (levels - 1)


# Step functions: (levels and their closed cells, forward with the kernels' tie rules).
_STEPWISE = {
    "sign": (lambda: (np.array([-1.0, 0.0, 1.0]), [(-np.inf, 0.0), (0.0, 0.0), (0.0, np.inf)]),
             np.sign),
    "step": (lambda: (np.array([0.0, 1.0]), [(-np.inf, 0.0), (0.0, np.inf)]),
             lambda s: (s >= 0).astype(float)),
    "quantize": (_quantize_levels, _quantize),
}

_CONTINUOUS = {
    "relu": lambda s: np.maximum(s, 0),
    "leaky_relu": lambda s, alpha=0.01: np.where(s >= 0, s, alpha * s),
    "clip": lambda s, lo=-1.0, hi=1.0: np.minimum(np.maximum(s, lo), hi),
    "identity": lambda s: s,
    "sigmoid": _sigmoid,
    "tanh": np.tanh,
    "softplus": lambda s: np.logaddexp(0, s),
}


def activation_forward(act, s, **params):
    """act(s), elementwise, with the tie rules of the JAX kernels (ties of quantize go up)."""
    s = np.asarray(s, float)
    if act in _STEPWISE:
        return _STEPWISE[act][1](s, **params)
    return _CONTINUOUS[act](s, **params)


def _grid_minimise(cost, s, radius):
    """argmin of cost(t) over [s - radius, s + radius] (per row), by a grid and zooms."""
    lo, hi = s - radius, s + radius
    n = _GRID
    for _ in range(_ZOOMS + 1):
        t = lo[:, None] + (hi - lo)[:, None] * np.linspace(0, 1, n)
        best = t[np.arange(len(s)), np.argmin(cost(t), axis=1)]
        cell = (hi - lo) / (n - 1)
        lo, hi, n = best - 2 * cell, best + 2 * cell, 41
    return best


def _solve_levels(s, y, k, w, act, params):
    q, cells = _STEPWISE[act][0](**params)
    t = np.stack([np.clip(s, a, b) for a, b in cells], axis=1)
    c = (t - s[:, None]) ** 2 / k + w[:, None] * (q - y[:, None]) ** 2
    j = np.argmin(c, axis=1)
    return t[np.arange(len(s)), j], q[j]


def _pjax_relu(s, y, k):
    """PJAX's sum_relu branch rule, on the sum: returns s'."""
    s1 = np.minimum(s, 0)
    d1 = y**2 + np.where(s < 0, 0, s**2 / k)
    t = (s + k * y) / (k + 1)
    s2 = np.maximum(t, 0)
    d2 = np.where(y == 0, y**2 + s**2 / k, (y - s) ** 2 / (k + 1))
    return np.where(d1 < d2, s1, s2)


def project_sum_act(x, y, act, w=1.0, *, compat=False, **act_params):
    """Twin of `project_sum_act`: returns float64 `(x2, y2)`."""
    x = np.asarray(x, float)
    batch, k = x.shape[:-1], x.shape[-1]
    xs = x.reshape(-1, k)
    s = xs.sum(axis=1)
    y = np.broadcast_to(np.asarray(y, float), batch).reshape(-1)
    w = np.ones_like(s) if compat else np.broadcast_to(np.asarray(w, float), batch).reshape(-1)
    if compat and act == "relu":
        s2 = _pjax_relu(s, y, k)
        y2 = np.maximum(s2, 0)
    elif act in _STEPWISE:
        s2, y2 = _solve_levels(s, y, k, w, act, act_params)
    else:
        f = _CONTINUOUS[act]
        # cost(t*) <= cost(s) bounds |t* - s| by sqrt(k w) |f(s) - y|.
        radius = np.sqrt(k * w) * np.abs(f(s, **act_params) - y) + 1e-300
        cost = lambda t: ((t - s[:, None]) ** 2 / k
                          + w[:, None] * (f(t, **act_params) - y[:, None]) ** 2)
        s2 = _grid_minimise(cost, s, radius)
        y2 = f(s2, **act_params)
    x2 = xs + ((s2 - s) / k)[:, None]
    return x2.reshape(x.shape), y2.reshape(batch)


def sum_act_cost(x, y, x2, y2, w=1.0):
    """The weighted squared distance `|x2 - x|^2 + w (y2 - y)^2`, per constraint (float64)."""
    x, x2 = np.asarray(x, float), np.asarray(x2, float)
    dy = np.asarray(y2, float) - np.asarray(y, float)
    return np.sum((x2 - x) ** 2, axis=-1) + np.asarray(w, float) * dy**2


def _softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def ce_objective(x, v, y, lam):
    """`lam CE(softmax(x), y) + |x - v|^2 / 2`, per row (float64)."""
    x, v, y = (np.asarray(a, float) for a in (x, v, y))
    m = x.max(axis=-1, keepdims=True)
    lse = (m + np.log(np.exp(x - m).sum(axis=-1, keepdims=True)))[..., 0]
    ce = y.sum(axis=-1) * lse - (y * x).sum(axis=-1)
    return lam * ce + 0.5 * ((x - v) ** 2).sum(axis=-1)


def _newton_prox(v, y, lam):
    x = v.copy()
    for _ in range(100):
        p = _softmax(x)
        g = x - v + lam * (y.sum() * p - y)
        if np.abs(g).max() <= 1e-14 * (1 + np.abs(x).max()):
            break
        h = np.eye(len(x)) + lam * y.sum() * (np.diag(p) - np.outer(p, p))
        d = -np.linalg.solve(h, g)
        # Backtrack on the objective, up to its rounding (which would stall the last steps).
        a, f0 = 1.0, ce_objective(x, v, y, lam) + 1e-13 * (1 + abs(ce_objective(x, v, y, lam)))
        while ce_objective(x + a * d, v, y, lam) > f0 and a > 1e-12:
            a /= 2
        x = x + a * d
    return x


def prox_cross_entropy(v, y, lam=5.0, *, compat=False):
    """Twin of `prox_cross_entropy` (float64)."""
    v, y = np.asarray(v, float), np.asarray(y, float)
    y = np.broadcast_to(y, v.shape)
    if compat:
        x = v
        for _ in range(10):
            x = v + lam * (y - _softmax(x))
        return x
    rows = [_newton_prox(a, b, lam) for a, b in zip(v.reshape(-1, v.shape[-1]),
                                                   y.reshape(-1, v.shape[-1]))]
    return np.array(rows).reshape(v.shape)


def project_margin(v, y):
    """Twin of `project_margin`: true class (y > 0) at least 1, the others at most 0."""
    v, y = np.asarray(v, float), np.asarray(y, float)
    return np.where(y > 0, np.maximum(v, 1.0), np.minimum(v, 0.0))


def prox_mse(v, y, lam=1.0):
    """Twin of `prox_mse`: argmin (lam/2)|x - y|^2 + |x - v|^2/2."""
    return (np.asarray(v, float) + lam * np.asarray(y, float)) / (1 + lam)
