"""Output constraints on the logits: cross-entropy prox, margin box, squared-error prox.

See method.md section 2, "Output constraints". All operators act on the last axis (classes or
outputs) and are vectorised over the leading axes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

_CE_STEPS = 12  # damped Newton iterations at most (10 leave lam = 20, |v| ~ 30 short in float64)
_HALVINGS = 8  # step sizes 1, 1/2, ..., 1/128 tried by the line search
_ARMIJO = 1e-4


def _newton_direction(x, v, y, sy, lam, p):
    """`-H^-1 grad` for `H = I + a (diag p - p p^T)`, `a = lam sum(y)`, by Sherman-Morrison."""
    a = lam * sy
    grad = x - v + lam * (sy * p - y)
    dinv = 1 / (1 + a * p)  # D = I + a diag p is the diagonal part
    # 1 - a p^T D^-1 p equals sum(p D^-1) when sum(p) = 1: no cancellation.
    denom = jnp.sum(p * dinv, axis=-1, keepdims=True)
    pdg = jnp.sum(p * dinv * grad, axis=-1, keepdims=True)
    return -(dinv * grad + a * dinv * p * pdg / denom), grad


def _objective_change(alpha, p, logp, d, gd, dd, sy, lam):
    """`F(x + alpha d) - F(x)` without cancellation, for one step size per row.

    It is `lam sum(y) [lse(x + alpha d) - lse(x) - alpha p.d] + alpha g.d + alpha^2 |d|^2 / 2`
    with `p = softmax(x)` and `g` the gradient; the bracket is the second-order part of the
    logsumexp, computed as `log1p(sum p expm1(alpha d)) - alpha p.d` for small steps.
    """
    ad = alpha * d
    pd = jnp.sum(p * d, axis=-1, keepdims=True)
    small = jnp.max(jnp.abs(ad), axis=-1, keepdims=True) <= 1
    near = jnp.log1p(jnp.sum(p * jnp.expm1(jnp.minimum(ad, 1)), axis=-1, keepdims=True))
    # the far form costs as much again and is rarely needed after the first steps
    curv = lax.cond(jnp.all(small), lambda: near, lambda: jnp.where(
        small, near, jax.nn.logsumexp(logp + ad, axis=-1, keepdims=True))) - alpha * pd
    return lam * sy * curv + alpha * gd + alpha**2 * dd / 2


def _line_search(p, logp, d, gd, dd, sy, lam, rows):
    """The step size of each row in ``rows`` (a mask; the others get 0): the first of 1, 1/2,
    ..., 1/128 that decreases `F` enough (Armijo); else the one of least change if that is a
    decrease; else 0.

    The step sizes are tried one at a time, and only while some row is still searching:
    nearly every row takes the full Newton step, so this usually costs one evaluation (trying
    all eight at once cost eight).
    """

    def cond(state):
        k, searching = state[0], state[1]
        return (k < _HALVINGS) & jnp.any(searching)

    def body(state):
        k, searching, step, best, best_change = state
        alpha = jnp.asarray(0.5, d.dtype) ** k
        change = _objective_change(alpha, p, logp, d, gd, dd, sy, lam)
        ok = searching & (change <= _ARMIJO * alpha * gd)
        step = jnp.where(ok, alpha, step)
        better = searching & (change < best_change)  # first on ties, as argmin
        best = jnp.where(better, alpha, best)
        best_change = jnp.where(better, change, best_change)
        return k + 1, searching & ~ok, step, best, best_change

    zero = jnp.zeros_like(gd)
    state = (0, rows, zero, zero, jnp.full_like(gd, jnp.inf))
    _, searching, step, best, best_change = lax.while_loop(cond, body, state)
    return jnp.where(searching, jnp.where(best_change <= 0, best, 0), step)


def _newton_step(x, v, y, sy, lam, rows):
    """One damped Newton step of the rows in ``rows``; also each row's largest move."""
    logp = jax.nn.log_softmax(x, axis=-1)
    p = jnp.exp(logp)
    d, grad = _newton_direction(x, v, y, sy, lam, p)
    gd = jnp.sum(grad * d, axis=-1, keepdims=True)
    move = _line_search(p, logp, d, gd, jnp.sum(d * d, -1, keepdims=True), sy, lam, rows) * d
    return x + move, jnp.max(jnp.abs(move), axis=-1, keepdims=True)


def _newton(v, y, sy, lam):
    """Damped Newton from ``v``, each row until a step moves none of its entries by more than
    ``eps^(3/4)`` of its scale: convergence is quadratic there, so the row is settled to
    rounding (typically after 4-6 steps instead of the ``_CE_STEPS`` bound, each a few
    kernels and a loop). A settled row stays as it is, so a row's answer does not depend on
    the batch it came in."""
    tol = jnp.finfo(v.dtype).eps ** 0.75 * (1 + jnp.max(jnp.abs(v), axis=-1, keepdims=True))

    def cond(state):
        k, _, active = state
        return (k < _CE_STEPS) & jnp.any(active)

    def body(state):
        k, x, active = state
        x, move = _newton_step(x, v, y, sy, lam, active)
        return k + 1, x, active & (move > tol)

    return lax.while_loop(cond, body, (0, v, jnp.ones(v.shape[:-1] + (1,), bool)))[1]


def _pjax_fixed_point(v, y, lam):
    """PJAX's 10 fixed-point steps `x <- v + lam (y - softmax(x))`."""
    return lax.fori_loop(0, 10, lambda _, x: v + lam * (y - jax.nn.softmax(x, axis=-1)), v)


def _prox_ce(v, y, lam, compat):
    v = jnp.asarray(v)
    y = jnp.broadcast_to(jnp.asarray(y, v.dtype), v.shape)
    lam = jnp.asarray(lam, v.dtype)
    if compat:
        return _pjax_fixed_point(v, y, lam)
    return _newton(v, y, jnp.sum(y, axis=-1, keepdims=True), lam)


_prox_ce_jit = jax.jit(_prox_ce, static_argnames=("compat",))


def prox_cross_entropy(v, y, lam=5.0, *, compat=False):
    """The proximal operator of `lam * CE(softmax(x), y)` at `v`.

    Minimises `lam (sum(y) logsumexp(x) - y.x) + |x - v|^2 / 2` by damped Newton (softmax
    recomputed each step, Sherman-Morrison solve in O(C), backtracking on the exact objective
    change). Optimality: `x - v + lam (sum(y) softmax(x) - y) = 0`.

    Args:
        v: logits, shape `(..., C)`.
        y: one-hot labels or class probabilities, broadcastable to `v`.
        lam: the loss weight lambda (PJAX's default 5).
        compat: PJAX's 10 fixed-point steps `x <- v + lam (y - softmax(x))` instead; they
            contract only for lam < 2.

    Returns:
        `x`, the shape and dtype of `v`.
    """
    return _prox_ce_jit(v, y, lam, compat)


def project_margin(v, y):
    """Project logits onto the margin box: true class (`y > 0`) `>= 1`, the others `<= 0`.

    Args:
        v: logits, shape `(..., C)`.
        y: one-hot labels broadcastable to `v`.

    Returns:
        `x`, the shape and dtype of `v`.
    """
    v = jnp.asarray(v)
    return jnp.where(jnp.asarray(y) > 0, jnp.maximum(v, 1), jnp.minimum(v, 0))


def prox_mse(v, y, lam=1.0):
    """The proximal operator of the loss `(lam / 2) |x - y|^2` at `v`: `(v + lam y) / (1 + lam)`.

    Convention: the loss is a sum over the outputs; a loss averaged over D outputs is this one
    with `lam / D`.

    Args:
        v: outputs, any shape.
        y: targets, broadcastable to `v`.
        lam: the loss weight.

    Returns:
        `x`, the shape and dtype of `v`.
    """
    v = jnp.asarray(v)
    y = jnp.asarray(y, v.dtype)
    return (v + lam * y) / (1 + lam)
