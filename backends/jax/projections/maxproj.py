"""Projection onto the graph of a maximum, `z = max(a, -1)` (max pooling, ReduceMax)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax import lax

from projc.backends.jax.projections.blocks import cache_blocking


def project_max(a, z, w=1.0):
    """Project `(a, z)` onto `{z = max(a, -1)}` with output weight `w` (method.md section 2).

    The minimiser sets every entry above a common value `m` to `m` (and raises the largest
    entry to `m` when `m` is above it). In the sorted order, setting the `k` largest entries
    to `m_k = (s_1 + ... + s_k + w z) / (k + w)` is a candidate when `s_{k+1} <= m_k`; the
    cost is convex in `m`, so the first valid `k` is the minimiser. Small `n` (pooling
    windows) sort with a fused compare-exchange network; long rows find the same `m` by
    Newton's method on the convex piecewise-linear optimality condition (`_newton_rows`),
    with no sort and no n x n candidate matrix.

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
    batch, n = a.shape[:-1], a.shape[-1]
    z = jnp.broadcast_to(jnp.asarray(z, dt), batch)
    w = jnp.broadcast_to(jnp.asarray(w, dt), batch)
    if n > _NETWORK_MAX and np.prod(batch, dtype=int) > 0:
        a2, m = _project_long(a.reshape(-1, n), z.reshape(-1), w.reshape(-1))
        return a2.reshape(a.shape), m.reshape(batch)
    if n <= _NETWORK_MAX:
        m = _common_value_small(a, z, w)
        return _apply(a, m, _first_max_small(a)), m
    m = _common_value_sorted(a, z, w)
    return _apply(a, m, lax.argmax(a, a.ndim - 1, jnp.int32)), m


def _apply(a, m, top):
    """`min(a, m)` with the entry `top` (one largest entry) set to `m`."""
    is_top = lax.broadcasted_iota(jnp.int32, a.shape, a.ndim - 1) == top[..., None]
    return jnp.where(is_top, m[..., None], jnp.minimum(a, m[..., None]))


def _first_max_small(a):
    """The index of the first largest entry (argmax's choice), from the n slices: elementwise,
    so XLA fuses it into `_apply`'s pass; `argmax` is a reduction that XLA writes out (an
    int64 array half the size of `a` for 2x2 pooling) and reads back."""
    s = [a[..., i] for i in range(a.shape[-1])]
    amax = s[0]
    for x in s[1:]:
        amax = jnp.maximum(amax, x)
    first = jnp.full(amax.shape, len(s), jnp.int32)
    for i in reversed(range(len(s))):
        first = jnp.where(s[i] == amax, i, first)
    return first


# --- long rows: Newton on the common value, in row blocks that stay in cache ----------------

_BLOCK_ROWS = 128  # 128 rows of 784 float32 are 400 KB: the Newton passes reread them from L2
_MIN_BLOCK_ROWS = 16  # below this, per-block overhead dominates: one block of all rows instead
_NEWTON_CAP = 64  # Newton needs about 10 passes on random rows; beyond the cap, sort the block


def _block_rows(rows):
    """The largest divisor of `rows` up to `_BLOCK_ROWS` (blocks must tile the rows exactly:
    padding would cost a copy of the whole array), or all rows when that divisor is small."""
    best = max(d for d in range(1, min(rows, _BLOCK_ROWS) + 1) if rows % d == 0)
    return best if best >= _MIN_BLOCK_ROWS or best == rows else rows


def _project_long(a, z, w):
    """`project_max` on rows `(R, n)`: `lax.map` over row blocks, each solved in cache."""
    rows, n = a.shape
    blk = _block_rows(rows) if cache_blocking() else rows  # see `blocks`: CPU only
    if blk == rows:
        return _project_block(a, z, w)
    a2, m = lax.map(lambda x: _project_block(*x), (a.reshape(-1, blk, n), z.reshape(-1, blk),
                                                    w.reshape(-1, blk)))
    return a2.reshape(rows, n), m.reshape(rows)


def _project_block(a, z, w):
    """One block of rows: Newton for the common value; the sort where it did not converge."""
    m, done = _newton_rows(a, z, w)
    m = lax.cond(done, lambda: m, lambda: _common_value_sorted(a, z, w))
    return _apply(a, m, lax.argmax(a, 1, jnp.int32)), m


def _newton_rows(a, z, w):
    """The common value `m` of each row by Newton's method, and whether all rows converged.

    With the largest entry always moved to `m` and the others moved when above it, `m` is the
    root of `h(m) = sum_i (a_i - m)_+ + [m >= max a] (max a - m) - w (m - z)`, which is convex,
    piecewise linear and decreasing. From `m_1 = (max a + w z) / (1 + w)`, where `h >= 0`,
    Newton's steps `m <- (sum of the moved entries + w z) / (count + w)` increase to the root
    without overshooting and stop exactly: when the moved set repeats, `m` is that set's
    candidate and the set is `{a_i > m}`, the first valid candidate of the sorted method.
    The sums use `max(a - m, 0)` and its sign, which XLA-CPU vectorises (a masked `where`
    reduction is 10x slower).
    """
    amax = jnp.max(a, axis=-1)
    wz = w * z

    def update(m):
        excess = jnp.maximum(a - m[:, None], 0)
        count = jnp.sum(jnp.sign(excess), axis=-1)  # entries above m
        top_out = amax <= m  # the largest entry moves to m in every case: count it once
        total = jnp.sum(excess, axis=-1) + count * m + jnp.where(top_out, amax, 0)
        count = count + top_out
        return (total + wz) / (count + w), count

    def cond(state):
        k, _, _, done = state
        return (k < _NEWTON_CAP) & ~done

    def body(state):
        k, m, count, _ = state
        m2, count2 = update(m)
        return k + 1, m2, count2, jnp.all(count2 == count)

    start = (amax + wz) / (1 + w)
    state = (0, start, jnp.full_like(z, -1), False)
    _, m, _, done = lax.while_loop(cond, body, state)
    return m, done


def _common_value_sorted(a, z, w):
    """The optimal value `m` of the max: the first valid candidate `m_k`, by a full sort."""
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
    """The common value for small n: network sort, then the candidates in order, all fused."""
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
