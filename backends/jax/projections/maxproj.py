"""Projection onto the graph of a maximum, `z = max(a, -1)` (max pooling, ReduceMax)."""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax


def project_max(a, z, w=1.0):
    """Project `(a, z)` onto `{z = max(a, -1)}` with output weight `w` (method.md section 2).

    Sort `a` in decreasing order; setting its `k` largest entries to their weighted mean with
    `z`, `m_k = (s_1 + ... + s_k + w z) / (k + w)`, is a candidate when `s_{k+1} <= m_k`. The
    cost is convex in the common value, so the first valid `k` is the minimiser. O(n log n):
    one sort and one prefix sum, no n x n candidate matrix.

    Args:
        a: inputs, shape `(..., n)`.
        z: outputs, shape `(...)`.
        w: output weight, a float or an array broadcastable to `z`.

    Returns:
        `(a2, z2)`: `a2 = min(a, m)` with one largest entry set to `m` (it rises when
        `m > max(a)`), and `z2 = m`.
    """
    a = jnp.asarray(a)
    dt = a.dtype
    z, w = jnp.asarray(z, dt), jnp.asarray(w, dt)
    m = _common_value(a, z, w)
    top = jnp.argmax(a, axis=-1)  # with ties, exactly one entry is raised
    is_top = lax.broadcasted_iota(jnp.int32, a.shape, a.ndim - 1) == top[..., None]
    a2 = jnp.where(is_top, m[..., None], jnp.minimum(a, m[..., None]))
    return a2, jnp.broadcast_to(m, a.shape[:-1])


def _common_value(a, z, w):
    """The optimal value `m` of the max: the first valid candidate `m_k`."""
    if a.shape[-1] <= _NETWORK_MAX:
        return _common_value_small(a, z, w)
    n = a.shape[-1]
    s = -jnp.sort(-a, axis=-1)
    # associative_scan is O(n log n); jnp.cumsum lowers to an O(n^2) reduce_window on CPU
    prefix = lax.associative_scan(jnp.add, s, axis=-1)
    k = jnp.arange(1, n + 1, dtype=a.dtype)
    wz = (w * z)[..., None]
    cand = (prefix + wz) / (k + w[..., None])
    nxt = jnp.concatenate([s[..., 1:], jnp.full_like(s[..., :1], -jnp.inf)], axis=-1)
    first = jnp.argmax(nxt <= cand, axis=-1)  # k = n is always valid
    return jnp.take_along_axis(cand, first[..., None], axis=-1)[..., 0]


# Pooling windows (n = 4, 9) sort faster with a compare-exchange network on the n slices of
# the last axis: elementwise min/max that XLA fuses into one pass (its sort is generic and
# slow on CPU). Odd-even transposition: n rounds, so O(n^2) work, for small n only.
_NETWORK_MAX = 16


def _common_value_small(a, z, w):
    """`_common_value` for small n: network sort, then the candidates in order, all fused."""
    s = [a[..., i] for i in range(a.shape[-1])]
    for r in range(len(s)):
        for i in range(r % 2, len(s) - 1, 2):
            s[i], s[i + 1] = jnp.maximum(s[i], s[i + 1]), jnp.minimum(s[i], s[i + 1])
    wz = w * z
    total, m, found = wz, None, None
    for k, sk in enumerate(s, start=1):
        total = total + sk
        cand = total / (k + w)
        valid = s[k] <= cand if k < len(s) else jnp.ones_like(cand, dtype=bool)
        m = cand if m is None else jnp.where(found, m, cand)
        found = valid if found is None else found | valid
    return m
