"""Projection onto the graph of a dot product, `z = sum(a * b, -1)`, and of `z = a * b`.

The exact operator follows method.md section 2 and its float32 recipe. With `u = a + b`,
`v = a - b`, `U = |u|^2/4`, `V = |v|^2/4` and `c = 1/w`, the minimiser is
`a' = (alpha u + beta v)/2`, `b' = (alpha u - beta v)/2`, `z' = U alpha^2 - V beta^2` with
`alpha = 1/(1 - t)`, `beta = 1/(1 + t)`, and `t` the root in (-1, 1) of
`g = U alpha^2 - V beta^2 - z + c t`. The root is sought in `rho = log((1 - t)/(1 + t))`,
where `alpha = (1 + e^-rho)/2`, `beta = (1 + e^rho)/2` and `g` is decreasing.

The big arrays are read by two reductions (U, V) and by one output pass; the scalar solver
runs on the batch of `(U, V, z, c)` under a `lax.while_loop` (at most `_NEWTON_STEPS`), so
XLA does not fuse it into the passes over `n` (method.md section 4).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from projc.backends.jax.projections.blocks import flat_map

# |rho| bound: e^(2R) stays finite in the dtype, so alpha^2 does too (XLA may rewrite
# (sqrt(U) alpha)^2 as U alpha^2, and 0 * inf would be NaN). Beyond it t is within 2e^-R of
# +-1 and the boundary limit of `_boundary` is exact to that order.
_RHO_BOUND = {np.dtype(np.float32): 40.0, np.dtype(np.float64): 300.0}
_NEWTON_STEPS = 40  # safeguarded Newton from the best start needs 6-8; bisection fallbacks more
_COMPAT_STEPS = 10  # PJAX: 10 plain Newton steps from t = 0
# Elementwise mul: blocks of this many elements keep the solver's temporaries in cache (L3 on
# the 2-core EPYC: 65536 ran 1.6x faster than 4096, whose 784 blocks per MNIST-sized call paid
# the loop's per-iteration dispatch; `blocks.flat_map`, so on one CPU device only), and this
# many Newton steps settled all of 3.2M random queries (offsets ~1); a block that has not goes
# on for `_MUL_RETRY_STEPS` more (queries with a ~ -b converge slowly), the rest: the exact
# solver.
_MUL_BLOCK = 65536
_MUL_STEPS = 10
_MUL_RETRY_STEPS = 30
# Settled: the last step moved y by at most this fraction of y. The next step's error is
# about its square, far below the output's rounding (float32 outputs, float64 solve).
_MUL_TOL = {np.dtype(np.float32): 1e-6, np.dtype(np.float64): 1e-9}
_MUL_Y_MIN = 1e-15  # below it the root nears t = +-1: left to the exact solver's _boundary


def project_dot(a, b, z, w=1.0, *, compat=False):
    """Project `(a, b, z)` onto `{z = sum(a * b, -1)}` with output weight `w`.

    Args:
        a, b: inputs, shape `(..., n)`.
        z: outputs, shape `(...)`.
        w: output weight, a float or an array broadcastable to `z`.
        compat: reproduce PJAX's operator (weight 1, 10 plain Newton steps from t = 0 on the
            equation in `p = a.b`, `q = |a|^2 + |b|^2`), which can return a farther point.

    Returns:
        `(a2, b2, z2)`, the global minimiser of `|a'-a|^2 + |b'-b|^2 + w (a'.b' - z)^2`.
    """
    a, b, z = _as_arrays(a, b, z)
    if compat:
        return _dot_compat(a, b, z)
    return _dot_exact(a, b, z, jnp.asarray(w, a.dtype))


def project_mul(a, b, z, w=1.0, *, compat=False):
    """Project `(a, b, z)` onto `{z = a * b}` (elementwise): the dot projection with n = 1.

    Args:
        a, b, z: arrays of one shape.
        w: output weight, a float or an array broadcastable to `z`.
        compat: reproduce PJAX's operator (see `project_dot`).

    Returns:
        `(a2, b2, z2)` with the shape and dtype of `a`.
    """
    a, b, z = _as_arrays(a, b, z)
    if compat or not _mul_fast_ok(a.dtype):
        a2, b2, z2 = project_dot(a[..., None], b[..., None], z, w, compat=compat)
        return a2[..., 0], b2[..., 0], z2
    return _mul_exact(a, b, z, jnp.asarray(w, a.dtype))


def _as_arrays(a, b, z):
    a = jnp.asarray(a)
    return a, jnp.asarray(b, a.dtype), jnp.asarray(z, a.dtype)


# --- exact operator -----------------------------------------------------------------------


def _dot_exact(a, b, z, w):
    """The float32 recipe: reduce U, V from u, v; solve in rho; form the output from u, v."""
    # U and V straight from u and v: (q +- 2p)/4 is rounding noise when a ~ -+b. Written
    # `a - (-b)` and `b - a`: the values of `_assemble`'s a + b and a - b (negation is exact,
    # v enters squared) but other HLO, so XLA does not share them. Shared, each was written
    # out in full for its reduction and read back by both output passes (4 state-sized
    # arrays instead of 2; 15% of the operator's time at 256 x 128 x 784).
    big_u = 0.25 * jnp.sum(jnp.square(a - (-b)), axis=-1)
    big_v = 0.25 * jnp.sum(jnp.square(b - a), axis=-1)
    shape = jnp.broadcast_shapes(big_u.shape, z.shape, w.shape)
    args = (jnp.broadcast_to(x, shape) for x in (big_u, big_v, z, 1 / w))
    return _assemble(a, b, _solve(*args))


def _assemble(a, b, coef):
    """The output `(a', b', z')` of `_dot_exact` from the coefficients of `_solve`."""
    cu, eu, cv, ev, z2 = coef
    # e: a fixed unit vector, the direction chosen on the sphere of minimisers (U or V = 0)
    e = float(1 / np.sqrt(a.shape[-1]))
    u_part = cu[..., None] * (a + b) + (eu * e)[..., None]
    v_part = cv[..., None] * (a - b) + (ev * e)[..., None]
    return 0.5 * (u_part + v_part), 0.5 * (u_part - v_part), z2


def _terms(rho, su, sv, z, c):
    """`g(rho)`, `g'(rho)`, and `sqrt(U) alpha`, `sqrt(V) beta`, all cancellation-free."""
    em = jnp.exp(-rho)
    ep = 1 / em
    alpha, beta = 0.5 * (1 + em), 0.5 * (1 + ep)
    ua, vb = su * alpha, sv * beta
    s = 2 + em + ep  # = 4 alpha beta = 4 / (1 - t^2)
    g = ua * ua - vb * vb - z + c * (em - ep) / s  # t = (em - ep)/s = -tanh(rho/2)
    dg = -(su * ua * em + sv * vb * ep) - 2 * c / s
    return g, dg, ua, vb


def _starts(big_u, big_v, z, c, bound):
    """Three starting points in rho (method.md): Newton from t = 0 and the two asymptotes."""
    one = jnp.ones_like(z)
    t0 = (z - big_u + big_v) / (2 * (big_u + big_v) + c)  # one Newton step from t = 0
    t0 = jnp.clip(t0, -1 + 1e-3, 1 - 1e-3)
    r0 = jnp.log1p(-t0) - jnp.log1p(t0)
    # 1 - t ~ sqrt(U / (z + V/4 - c)) near t = 1; 1 + t ~ sqrt(V / (U/4 - z - c)) near t = -1
    m = jnp.minimum(jnp.sqrt(big_u / jnp.maximum(z + 0.25 * big_v - c, 0)), one)
    k = jnp.minimum(jnp.sqrt(big_v / jnp.maximum(0.25 * big_u - z - c, 0)), one)
    r1 = jnp.log(m) - jnp.log(2 - m)
    r2 = jnp.log(2 - k) - jnp.log(k)
    return [jnp.nan_to_num(jnp.clip(r, -bound, bound), nan=0.0) for r in (r0, r1, r2)]


def _bracket_and_start(su, sv, big_u, big_v, z, c, bound):
    """Tighten the bracket [-R, R] with the starts' signs; begin at the start of least |g|."""
    lo, hi = jnp.full_like(z, -bound), jnp.full_like(z, bound)
    best, best_g = jnp.zeros_like(z), jnp.full_like(z, jnp.inf)
    for r in _starts(big_u, big_v, z, c, bound):
        g = _terms(r, su, sv, z, c)[0]
        lo, hi = jnp.where(g > 0, jnp.maximum(lo, r), lo), jnp.where(g < 0, jnp.minimum(hi, r), hi)
        better = jnp.abs(g) < best_g
        best, best_g = jnp.where(better, r, best), jnp.where(better, jnp.abs(g), best_g)
    return best, lo, hi


def _newton_step(rho, lo, hi, su, sv, z, c):
    """One Newton step in rho, replaced by bisection when it leaves the bracket.

    Also says whether the element has settled: a step below 8 ulp of rho, or |g| down to the
    rounding noise of its own evaluation (further steps would chase that noise).
    """
    g, dg, ua, vb = _terms(rho, su, sv, z, c)
    lo, hi = jnp.where(g > 0, rho, lo), jnp.where(g < 0, rho, hi)
    step = rho - g / dg
    # closed bracket: a converged step may land on its end; False for NaN (g overflowed)
    inside = (step >= lo) & (step <= hi)
    new = jnp.where(inside, step, 0.5 * (lo + hi))
    eps = jnp.finfo(rho.dtype).eps
    noise = 4 * eps * (ua * ua + vb * vb + jnp.abs(z) + c)
    settled = (jnp.abs(new - rho) <= 8 * eps * (1 + jnp.abs(rho))) | (jnp.abs(g) <= noise)
    return new, lo, hi, settled


def _iterate(rho, lo, hi, su, sv, z, c):
    """Newton steps under a `lax.while_loop` until every element has settled.

    At most `_NEWTON_STEPS`; adversarial batches settle after about 10 (float32).
    """

    def cond(state):
        return (state[0] < _NEWTON_STEPS) & ~state[1]

    def body(state):
        k, _, rho, lo, hi = state
        new, lo, hi, settled = _newton_step(rho, lo, hi, su, sv, z, c)
        return k + 1, jnp.all(settled), new, lo, hi

    return lax.while_loop(cond, body, (0, False, rho, lo, hi))[2]


def _solve(big_u, big_v, z, c):
    """Per-constraint output coefficients `(cu, eu, cv, ev, z2)` of `_dot_exact`.

    Solved on flat vectors: XLA-CPU compiles each of the solver's many small kernels with
    LLVM, which unrolls a short inner axis completely (a (256, 10) batch compiled in 2.0 s,
    the same 2560 queries as one vector in 1.3 s).
    """
    shape = z.shape
    coef = _solve_flat(*(x.reshape(-1) for x in (big_u, big_v, z, c)))
    return tuple(x.reshape(shape) for x in coef)


def _solve_flat(big_u, big_v, z, c):
    bound = _RHO_BOUND[np.dtype(z.dtype)]
    su, sv = jnp.sqrt(big_u), jnp.sqrt(big_v)
    rho, lo, hi = _bracket_and_start(su, sv, big_u, big_v, z, c, bound)
    rho = _iterate(rho, lo, hi, su, sv, z, c)
    _, _, ua, vb = _terms(rho, su, sv, z, c)
    alpha, beta = 0.5 * (1 + jnp.exp(-rho)), 0.5 * (1 + jnp.exp(rho))
    coef = (alpha, jnp.zeros_like(z), beta, jnp.zeros_like(z), ua * ua - vb * vb)
    return _boundary(coef, su, sv, big_u, big_v, z, c, bound)


def _boundary(coef, su, sv, big_u, big_v, z, c, bound):
    """Where the root lies beyond |rho| = R (t -> +-1), return the limit point on the graph.

    At t = 1 (g(-R) <= 0: U = 0, or U tiny) the minimisers have a' - b' = v/2 and
    |a' + b'|^2/4 = x = z + V/4 - c, any direction of a' + b': take u's, or e when u = 0.
    At t = -1 symmetrically a' + b' = u/2 and |a' - b'|^2/4 = y = U/4 - z - c.
    """
    cu, eu, cv, ev, z2 = coef
    g_top = _terms(jnp.full_like(z, -bound), su, sv, z, c)[0]
    g_bot = _terms(jnp.full_like(z, bound), su, sv, z, c)[0]
    top, bot = g_top <= 0, g_bot >= 0
    x = jnp.maximum(z + 0.25 * big_v - c, 0)
    y = jnp.maximum(0.25 * big_u - z - c, 0)
    half = jnp.full_like(z, 0.5)
    cu_top, eu_top = _radial(x, su)
    cv_bot, ev_bot = _radial(y, sv)
    cu = jnp.where(top, cu_top, jnp.where(bot, half, cu))
    eu = jnp.where(top, eu_top, eu)
    cv = jnp.where(bot, cv_bot, jnp.where(top, half, cv))
    ev = jnp.where(bot, ev_bot, ev)
    z2 = jnp.where(top, x - 0.25 * big_v, jnp.where(bot, 0.25 * big_u - y, z2))
    return cu, eu, cv, ev, z2


def _radial(r2, s):
    """Coefficients `(of u, of e)` giving a vector of norm `2 sqrt(r2)` along u (|u| = 2 s)."""
    pos, root = s > 0, jnp.sqrt(r2)
    return jnp.where(pos, root / jnp.where(pos, s, 1), 0), jnp.where(pos, 0, 2 * root)


# --- elementwise operator (n = 1) ----------------------------------------------------------
#
# With one entry per constraint the reductions are gone and the scalar solver is the whole
# cost. Under a while_loop over full-size arrays XLA-CPU runs each operation of it as its own
# pass over memory, and exp dominates the arithmetic. So: no exp (a rational Newton in a
# variable that stays exact near t = +-1), a fixed number of steps, and blocks of
# `_MUL_BLOCK` elements under `lax.map`, so that the passes re-read cached data. A block
# where any element has not settled is redone by the exact solver above (`_solve`).


def _mul_fast_ok(dtype):
    """The fast path solves in float64: only when JAX has it, for float32/float64 data."""
    return jax.config.jax_enable_x64 and np.dtype(dtype) in _MUL_TOL


def _mul_exact(a, b, z, w):
    """`project_mul`'s exact operator: the blocked fast solver with per-block fallback."""
    shape = jnp.broadcast_shapes(a.shape, b.shape, z.shape, w.shape)
    if int(np.prod(shape)) == 0:
        return tuple(jnp.zeros(shape, a.dtype) for _ in range(3))
    # padding (a, b, z, c) = (0, 0, 0, 1) is a query whose root y = 1 settles at once
    return flat_map(lambda *q: _mul_block(q), (a, b, z, 1 / w), (0, 0, 0, 1), _MUL_BLOCK)


def _mul_block(args):
    """One block: the fast solve; where an element has not settled, more steps from where it
    stopped, then the exact solver."""
    a, b, z, c = args
    fast, ok, state = _mul_solve(a, b, z, c, _MUL_STEPS)

    def retry():
        more, settled, _ = _mul_solve(a, b, z, c, _MUL_RETRY_STEPS, state)
        return lax.cond(jnp.all(settled), lambda: more, lambda: _mul_fallback(a, b, z, c))

    return lax.cond(jnp.all(ok), lambda: fast, retry)


def _mul_fallback(a, b, z, c):
    """The exact solver of `project_dot` with n = 1, in the data's dtype."""
    big_u, big_v = 0.25 * jnp.square(a + b), 0.25 * jnp.square(a - b)
    a2, b2, z2 = _assemble(a[..., None], b[..., None], _solve(big_u, big_v, z, c))
    return a2[..., 0], b2[..., 0], z2


def _mul_canonical(a, b, z):
    """Orient each query so that its root has t <= 0 (method.md's t).

    With m = -t, the root solves `U/(1 + m)^2 - V/(1 - m)^2 - z - c m = 0`, decreasing in m;
    when its value at m = 0, `U - V - z = a b - z`, is negative, m -> -m with
    (U, V, z) -> (V, U, -z) gives the same equation. The state is then `y = 1 - m` in (0, 1],
    and `1 + m = 2 - y` is exact: neither end loses digits to cancellation (near t = +-1 one
    of them is tiny).
    """
    u, v = a + b, a - b
    # U - V = a b. Tested as `a b < z`, not as U - V - z < 0: XLA recomputes `flip` in each
    # fusion that reads it and may contract the latter into an FMA in some copies only, so
    # that near U - V = z the copies could disagree (P from one orientation, Z from the
    # other); a product and a comparison round the same way everywhere.
    flip = a * b < z
    big_u, big_v = 0.25 * u * u, 0.25 * v * v
    big_p, big_q = jnp.where(flip, big_v, big_u), jnp.where(flip, big_u, big_v)
    return u, v, flip, big_p, big_q, jnp.where(flip, -z, z)


def _mul_h(y, big_p, big_q, big_z, c):
    """`h(y) = P/(2 - y)^2 - Q/y^2 - Z - c (1 - y)` and `h'(y) > 0` (h is increasing)."""
    ix, iy = 1 / (2 - y), 1 / y
    pa, qb = big_p * ix * ix, big_q * iy * iy
    return pa - qb - big_z - c * (1 - y), 2 * (pa * ix + qb * iy) + c


def _mul_start(big_p, big_q, big_z, c):
    """Bracket `[lo, hi]` of the root in y and a start: the candidate of least |h|.

    h(1) = P - Q - Z >= 0, and h < 0 below `sqrt(Q / (P - Z))`. Candidates: one Newton step
    from y = 1 (t = 0); the pole's asymptote `Q/y^2 ~ P/4 - Z - c`; and, where c dominates,
    the root with the pole dropped and 2 - y ~ 2, `y ~ 1 - (P/4 - Z)/c`.
    """
    one = jnp.ones_like(big_p)
    lo = jnp.minimum(jnp.sqrt(big_q / jnp.maximum(big_p - big_z, 1e-300)), one)
    lo, hi = jnp.maximum(lo, _MUL_Y_MIN), one
    h1 = big_p - big_q - big_z
    y, best = one, jnp.abs(h1)
    candidates = (1 - h1 / (2 * (big_p + big_q) + c),
                  jnp.sqrt(big_q / (0.25 * big_p - big_z - c)),
                  1 - (0.25 * big_p - big_z) / c)
    for cand in candidates:
        cand = jnp.clip(jnp.where(jnp.isnan(cand), 1, cand), lo, hi)
        h, _ = _mul_h(cand, big_p, big_q, big_z, c)
        lo, hi = jnp.where(h < 0, cand, lo), jnp.where(h > 0, cand, hi)
        better = jnp.abs(h) < best
        y, best = jnp.where(better, cand, y), jnp.where(better, jnp.abs(h), best)
    return y, lo, hi


def _mul_newton(y, lo, hi, big_p, big_q, big_z, c):
    """One Newton step in y; a geometric bisection of the bracket when it leaves it
    (the root can be anywhere in [1e-15, 1]: scale, not distance, must shrink)."""
    h, dh = _mul_h(y, big_p, big_q, big_z, c)
    lo, hi = jnp.where(h < 0, y, lo), jnp.where(h > 0, y, hi)
    new = y - h / dh
    # a converged step can leave the bracket by rounding: stay, do not bisect
    converged = jnp.abs(new - y) <= 1e-13 * y
    inside = (new >= lo) & (new <= hi)
    new = jnp.where(inside, new, jnp.where(converged, y, jnp.sqrt(lo * hi)))
    return new, lo, hi, jnp.abs(new - y)


def _mul_clipped(y, lo, hi, big_p, big_q, big_z, c):
    """One Newton step clipped to the start's bracket, which stays as it is: the fast path's
    step. Updating the bracket made XLA recompute h (two divisions) in each of the fusions
    that write y, lo and hi (1.7x slower over 10 steps); and the bracket held no more queries
    to the fast path's `ok` (the same unsettled counts on 1M normal, scaled, a ~ -b, weighted
    and large-offset queries). A clip cannot fake convergence: h <= 0 at lo and h >= 0 at
    hi (`_mul_start`), so a step from either end moves inward or stays at the root (lo held
    at `_MUL_Y_MIN` is never `ok`); what cycles is left unsettled, for the bracketed retry."""
    h, dh = _mul_h(y, big_p, big_q, big_z, c)
    new = jnp.clip(y - h / dh, lo, hi)
    return new, lo, hi, jnp.abs(new - y)


def _mul_query(a, b, z, c):
    """The canonical query `(u, v, flip, P, Q, Z, c)` of `_mul_canonical`, in float64."""
    return (*_mul_canonical(*(x.astype(np.float64) for x in (a, b, z))), c.astype(np.float64))


def _mul_begin(query):
    """The solver's state `(y, lo, hi, moved)` before its first step."""
    y, lo, hi = _mul_start(*query[3:])
    return y, lo, hi, jnp.full_like(y, jnp.inf)


def _mul_iterate(state, query, steps, *, unroll):
    """`steps` Newton steps: unrolled and clipped (`_mul_clipped`; each step a pass or two
    over the cached block; 10 steps ran about 1.2x faster than under `lax.fori_loop`) or
    rolled and bracketed (`_mul_newton`; one loop body to compile: unrolled, the retry's 30
    steps were ~110 of the ~180 kernels of a mul group)."""
    if not unroll:
        return lax.fori_loop(0, steps, lambda _, st: _mul_newton(*st[:3], *query[3:]), state)
    for _ in range(steps):
        state = _mul_clipped(*state[:3], *query[3:])
    return state


def _mul_output(state, query, dtype):
    """`((a', b', z'), ok)` from the solver's state; `ok` is False where the last step was not
    below `_MUL_TOL` (relative) or the root is within `_MUL_Y_MIN` of t = +-1."""
    y, _, _, moved = state
    u, v, flip = query[:3]
    # back to the query's orientation: 1 + m and 1 - m
    one_plus, one_minus = jnp.where(flip, y, 2 - y), jnp.where(flip, 2 - y, y)
    pu, pv = u / one_plus, v / one_minus  # a' + b' and a' - b'
    out = (0.5 * (pu + pv), 0.5 * (pu - pv), 0.25 * (pu * pu - pv * pv))
    ok = (moved <= _MUL_TOL[np.dtype(dtype)] * y) & (y > _MUL_Y_MIN)
    ok &= jnp.isfinite(out[0]) & jnp.isfinite(out[1]) & jnp.isfinite(out[2])
    return tuple(o.astype(dtype) for o in out), ok


def _mul_solve(a, b, z, c, steps, state=None):
    """`((a', b', z'), ok, state)` of one block after `steps` Newton steps, solved in float64
    (see `_mul_output` for `ok`): from the start, unrolled; or from an earlier `state`, rolled
    (the rarely taken retry; its query is recomputed, as sharing it with the fast path wrote
    its float64 arrays out and made the fast path 1.4x slower)."""
    query = _mul_query(a, b, z, c)
    fresh = state is None
    state = _mul_iterate(_mul_begin(query) if fresh else state, query, steps, unroll=fresh)
    return (*_mul_output(state, query, a.dtype), state)


def _mul_fast(a, b, z, c, steps):
    """`((a', b', z'), ok)` of one block from `steps` Newton steps from the start."""
    return _mul_solve(a, b, z, c, steps)[:2]


# --- PJAX-compatible operator ----------------------------------------------------------------


def _dot_compat(a, b, z):
    """PJAX's operator: 10 plain Newton steps from t = 0 on g(t) from p and q, weight 1."""
    p = jnp.sum(a * b, axis=-1)
    q = jnp.sum(a * a + b * b, axis=-1)
    t = lax.fori_loop(0, _COMPAT_STEPS, lambda _, t: _compat_newton(t, p, q, z), jnp.zeros_like(z))
    t = jnp.broadcast_to(t, jnp.broadcast_shapes(t.shape, p.shape))[..., None]
    d = 1 - t * t
    return (a + t * b) / d, (b + t * a) / d, z - t[..., 0]


def _compat_newton(t, p, q, z):
    """One plain Newton step on `g(t) = ((1 + t^2) p + t q)/(1 - t^2)^2 - z + t`."""
    d = 1 - t * t
    num = (1 + t * t) * p + t * q
    g = num / (d * d) - z + t
    dg = (2 * t * p + q) / (d * d) + 4 * t * num / (d * d * d) + 1
    return t - g / dg
