"""Output constraints on the logits: cross-entropy prox, margin box, squared-error prox.

See method.md section 2, "Output constraints". All operators act on the last axis (classes or
outputs) and are vectorised over the leading axes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

_CE_STEPS = 12  # damped Newton iterations (10 leave lam = 20, |v| ~ 30 short in float64)
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
    """`F(x + alpha d) - F(x)` without cancellation (alpha has a trailing step axis).

    It is `lam sum(y) [lse(x + alpha d) - lse(x) - alpha p.d] + alpha g.d + alpha^2 |d|^2 / 2`
    with `p = softmax(x)` and `g` the gradient; the bracket is the second-order part of the
    logsumexp, computed as `log1p(sum p expm1(alpha d)) - alpha p.d` for small steps.
    """
    ad = alpha[:, None] * d[..., None, :]
    pd = jnp.sum(p * d, axis=-1, keepdims=True)
    small = jnp.max(jnp.abs(ad), axis=-1) <= 1
    near = jnp.log1p(jnp.sum(p[..., None, :] * jnp.expm1(jnp.minimum(ad, 1)), axis=-1))
    far = jax.nn.logsumexp(logp[..., None, :] + ad, axis=-1)
    curv = jnp.where(small, near, far) - alpha * pd
    return lam * sy * curv + alpha * gd + alpha**2 * dd / 2


def _newton_step(x, v, y, sy, lam):
    logp = jax.nn.log_softmax(x, axis=-1)
    p = jnp.exp(logp)
    d, grad = _newton_direction(x, v, y, sy, lam, p)
    alpha = 0.5 ** jnp.arange(_HALVINGS, dtype=x.dtype)
    gd = jnp.sum(grad * d, axis=-1, keepdims=True)
    change = _objective_change(alpha, p, logp, d, gd, jnp.sum(d * d, -1, keepdims=True), sy, lam)
    ok = change <= _ARMIJO * alpha * gd
    # The first step size that decreases enough; else the best decrease; else stay.
    best = jnp.where(jnp.any(ok, axis=-1), jnp.argmax(ok, axis=-1), jnp.argmin(change, axis=-1))
    gain = jnp.take_along_axis(change, best[..., None], axis=-1) <= 0
    return x + jnp.where(gain, alpha[best][..., None], 0) * d


def _pjax_fixed_point(v, y, lam):
    """PJAX's 10 fixed-point steps `x <- v + lam (y - softmax(x))`."""
    return lax.fori_loop(0, 10, lambda _, x: v + lam * (y - jax.nn.softmax(x, axis=-1)), v)


def _prox_ce(v, y, lam, compat):
    v = jnp.asarray(v)
    y = jnp.broadcast_to(jnp.asarray(y, v.dtype), v.shape)
    lam = jnp.asarray(lam, v.dtype)
    if compat:
        return _pjax_fixed_point(v, y, lam)
    sy = jnp.sum(y, axis=-1, keepdims=True)
    return lax.fori_loop(0, _CE_STEPS, lambda _, x: _newton_step(x, v, y, sy, lam), v)


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
