"""Output constraints on the logits: cross-entropy prox, margin box, squared-error prox.

See method.md section 2, "Output constraints". All operators act on the last axis (classes or
outputs) and are vectorised over the leading axes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

_CE_STEPS = 30  # Newton steps at most; 1-8 settled every row of the adversarial tests
# fourth-order steps of the Wright omega from a start within a third: in float32 two are as
# accurate as three (at most 7.3 ulp from the float64 value over z in [-87, 1e18], the
# rounding of the evaluation itself; one step: 513 ulp); float64 takes three
_OMEGA_STEPS = {4: 2, 8: 3}  # by itemsize
# from this many rows the solver takes the layouts that stream well (see `_newton`); below,
# their gain is noise and their cost is not: at 256 rows the products with ones took 7% longer
# than the reductions (dispatch), and the stack made a batch-256 DR step 11 kernels larger and
# about a second slower to compile
_MANY_ROWS = 4096
_STACK_CLASSES = 32  # at most this many classes are stacked back one by one


def wright_omega(z):
    """The Wright omega function, elementwise: the `w > 0` with `w + log w = z` (`W(e^z)`).

    A start within a third (`z - log z` above 1, `log(1 + e^z)` below) refined by two (float32)
    or three (float64) steps of Fritsch, Shafer and Crowley's fourth-order iteration;
    rounding-accurate for any `z`, `e^z` where that underflows to 0.
    """
    tiny = jnp.finfo(z.dtype).tiny
    w = jnp.where(z > 1, z - jnp.log(jnp.maximum(z, 1)), jnp.log1p(jnp.exp(jnp.minimum(z, 1))))
    for _ in range(_OMEGA_STEPS.get(jnp.dtype(z.dtype).itemsize, 3)):
        r = jnp.where(w > 0, z - w - jnp.log(jnp.maximum(w, tiny)), 0)
        w1 = 1 + w
        q = w1 * (w1 + 2 * r / 3)
        w = w * (1 + r / w1 * (q - r / 2) / (q - r))
    return w


def _newton(v, y, sy, lam):
    """The prox as a root of one monotone scalar equation per row; classes on axis 0 of
    ``v`` and ``y`` (shape `(C, rows)`), ``sy`` of shape `(rows,)`; returns `x` of shape
    `(rows, C)`. (Rows on the long axis: XLA-CPU unrolls a short last axis completely, which
    made the dot's solver 1.5x slower to compile.)

    Optimality `x = u - t softmax(x)` with `u = v + lam y`, `t = lam sum(y)` gives
    `t softmax(x)_i = omega(u_i - d)` for the scalar `d = lse(x) - log t`, which solves
    `g(d) = sum_i omega(u_i - d) - t = 0`. `g` is decreasing and convex (`omega' = omega /
    (1 + omega)`), and `d0 = max(u) - t - log t` has `g(d0) >= 0` (its largest term alone is
    `t`), so Newton from `d0` rises monotonically to the root: no bracket, no line search.
    Each row stops when its step is below `eps^(3/4)` of the scale of `d` or the rounding
    noise of `g` (quadratic convergence: settled to rounding); a settled row stays as it is,
    so a row's answer does not depend on the batch it came in. The answer is exact for `u` as
    rounded: accurate to `eps |v + lam y|`, the size of the rounding of `v + lam y` itself.

    From `_MANY_ROWS` rows, two layout choices for XLA-CPU: the class sums are products with
    a row of ones (as reductions over axis 0 they became XNNPACK kernels 2-3x slower than the
    omegas they read), and the answer goes back to `(rows, C)` as a stack of its class rows
    (the last omega, fused into a plain transpose, ran 7x slower than over `(C, rows)`).
    """
    eps = jnp.finfo(v.dtype).eps
    labelled = sy > 0  # t = 0: no loss, x = v
    t = jnp.where(labelled, lam * sy, 1)
    u = v + lam * y
    d0 = jnp.max(u, axis=0) - (t + jnp.log(t))
    many = u.shape[1] >= _MANY_ROWS

    def class_sum(w):
        if not many:
            return jnp.sum(w, axis=0)
        ones = jnp.ones((1, w.shape[0]), w.dtype)
        return jnp.matmul(ones, w, precision="highest")[0]  # no TF32 products on a GPU

    def sums(d):
        """`sum omega(u - d)` and `sum omega'(u - d)` over the classes."""
        w = wright_omega(u - d)
        return class_sum(w), class_sum(w / (1 + w))

    def cond(state):
        k, _, active = state
        return (k < _CE_STEPS) & jnp.any(active)

    def body(state):
        k, d, active = state
        total, slope = sums(d)
        step = jnp.where(active, (total - t) / slope, 0)
        tol = eps ** 0.75 * (1 + jnp.abs(d)) + 8 * eps * t / slope
        return k + 1, d + step, active & (jnp.abs(step) > tol)

    _, d, _ = lax.while_loop(cond, body, (0, d0, labelled))
    x = jnp.where(labelled, u - wright_omega(u - d), v)
    if many and u.shape[0] <= _STACK_CLASSES:
        return jnp.stack(list(x), axis=-1)
    return x.T


def _pjax_fixed_point(v, y, lam):
    """PJAX's 10 fixed-point steps `x <- v + lam (y - softmax(x))`."""
    return lax.fori_loop(0, 10, lambda _, x: v + lam * (y - jax.nn.softmax(x, axis=-1)), v)


def _prox_ce(v, y, lam, compat):
    v = jnp.asarray(v)
    y = jnp.broadcast_to(jnp.asarray(y, v.dtype), v.shape)
    lam = jnp.asarray(lam, v.dtype)
    if compat:
        return _pjax_fixed_point(v, y, lam)
    rows = jnp.moveaxis(v, -1, 0).reshape(v.shape[-1], -1), jnp.moveaxis(y, -1, 0).reshape(v.shape[-1], -1)
    return _newton(*rows, jnp.sum(rows[1], axis=0), lam).reshape(v.shape)


_prox_ce_jit = jax.jit(_prox_ce, static_argnames=("compat",))


def prox_cross_entropy(v, y, lam=5.0, *, compat=False):
    """The proximal operator of `lam * CE(softmax(x), y)` at `v`.

    Minimises `lam (sum(y) logsumexp(x) - y.x) + |x - v|^2 / 2`. Optimality is
    `x - v + lam (sum(y) softmax(x) - y) = 0`; its solution is `x = u - omega(u - d)` with
    `u = v + lam y`, the Wright omega function elementwise and one scalar `d` per row, found by
    monotone Newton (see `_newton`): a few elementwise passes and row sums per step.

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
