"""The least one-dimensional sum_act cost of smooth activations, by brute force (float64).

`min_t (t - s)^2 / k + w (f(t) - y)^2` per query, from dense grids over a bracket of the
minimiser refined by golden sections around their best node: slow, simple, and independent of
the Newton solvers in `projc.backends.jax.projections.sum_act`, which the tests and
`benchmarks/step_counts.py` check against it. Each function returns the least distance (the
square root of the cost) per query.
"""

from __future__ import annotations

import numpy as np

from projc.backends.reference.projections_act import activation_forward


def golden_min(cost, lo, hi, steps=80):
    """The least `cost` on each `[lo, hi]` by golden-section search (vectorised)."""
    ratio = (np.sqrt(5) - 1) / 2
    for _ in range(steps):
        m1, m2 = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        left = cost(m1) < cost(m2)
        lo, hi = np.where(left, lo, m1), np.where(left, m2, hi)
    return cost((lo + hi) / 2)


def tolerance(x, y, w, dtype, eps_units=None):
    """Rounding-level tolerance on a distance from the query `(x, y)`, from the magnitudes
    involved: `eps_units` (by default 64 for float32, 1000 for float64) eps of them."""
    units = (64 if np.dtype(dtype) == np.float32 else 1e3) if eps_units is None else eps_units
    return units * np.finfo(dtype).eps * (np.abs(x).sum(-1) + np.abs(y) * np.sqrt(w) + 1)


def _refined(cost, grid, steps):
    """The least cost over each row of a sorted `grid` and golden sections between the
    neighbours of its best node."""
    c = cost(grid)
    j = np.argmin(c, axis=1)[:, None]
    lo = np.take_along_axis(grid, np.maximum(j - 1, 0), 1)
    hi = np.take_along_axis(grid, np.minimum(j + 1, grid.shape[1] - 1), 1)
    return np.sqrt(np.minimum(golden_min(cost, lo, hi, steps), np.take_along_axis(c, j, 1)))[:, 0]


def _queries(s, y, w):
    return (np.asarray(v, float).reshape(-1, 1) for v in (s, y, w))


def sigmoidal(act, s, y, w, k):
    """tanh or sigmoid: a uniform grid of 20001 nodes over `|t - s| <= k w (|y| + 1) + 3`,
    which holds the minimiser (`|t* - s| <= k w |f(s) - y| sup f'`)."""
    s, y, w = _queries(s, y, w)
    cost = lambda t: (t - s) ** 2 / k + w * (activation_forward(act, t) - y) ** 2  # noqa: E731
    radius = k * w * (np.abs(y) + 1) + 3
    return _refined(cost, s + radius * np.linspace(-1, 1, 20001), 80)


def softplus(s, y, w, k):
    """softplus: grids over the bracket `[s, b]` uniform in t, uniform in softplus(t), and
    geometric towards both ends, where minimisers pile up in the saturated tail."""
    sp = lambda t: np.logaddexp(0, t)  # noqa: E731
    inv = lambda v: v + np.log(-np.expm1(-v))  # noqa: E731
    s, y, w = _queries(s, y, w)
    cost = lambda t: (t - s) ** 2 / k + w * (sp(t) - y) ** 2  # noqa: E731
    lip = s + k * w * (y - sp(s))  # |t* - s| <= k w |softplus(s) - y|
    with np.errstate(all="ignore"):
        r = np.where(y > 0, inv(np.maximum(y, 1e-300)), lip)
        b = np.where(np.abs(r - s) < np.abs(lip - s), r, lip)
        tau = np.linspace(0, 1, 4001)
        tf = inv(np.maximum(sp(s) + (sp(b) - sp(s)) * tau, 1e-300))
    off = np.logspace(-12, 0, 400)
    grid = np.concatenate([s + (b - s) * tau, np.where(np.isfinite(tf), tf, s),
                           s + (b - s) * off, b - (b - s) * off], axis=1)
    return _refined(cost, np.sort(grid, axis=1), 100)


__all__ = ["golden_min", "sigmoidal", "softplus", "tolerance"]
