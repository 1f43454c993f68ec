"""Projection onto the graph of an affine map, `y = sum(c * x, -1) + d`."""

from __future__ import annotations

import jax.numpy as jnp


def project_linear(x, y, c, d=0.0, w=1.0):
    """Project `(x, y)` onto `{y = c . x + d}` with output weight `w` (method.md section 2).

    With residual `r = y - c.x - d`: `x' = x + r w c / (1 + w |c|^2)` and
    `y' = y - r / (1 + w |c|^2)`, the closed-form minimiser of `|x' - x|^2 + w |y' - y|^2`.

    Args:
        x: inputs, shape `(..., n)`.
        y: outputs, shape `(...)`.
        c: coefficients, broadcastable to `x` (a constant operand, a ones vector for a sum).
        d: offset, broadcastable to `y`.
        w: output weight, a float or an array broadcastable to `y`.

    Returns:
        `(x2, y2)` with the shapes and dtype of `x` and `y`.
    """
    x = jnp.asarray(x)
    c = jnp.asarray(c, x.dtype)
    shift, y2 = linear_shift(x, y, c, d, w)
    return x + shift[..., None] * c, y2


def linear_shift(x, y, c, d=0.0, w=1.0, cx=None):
    """`project_linear` without writing `x2`: `(shift, y2)` with `x2 = x + shift[..., None] * c`
    (so a caller can keep `x2` as that sum and fold it into what reads it). A caller that
    holds `x` in factored form passes `cx = c . x`; `x` then only needs `shape` and `dtype`."""
    if cx is None:
        x = jnp.asarray(x)
        cx = contract(jnp.asarray(c, x.dtype), x)
    dt = x.dtype
    y, c, d, w = (jnp.asarray(v, dt) for v in (y, c, d, w))
    cc = jnp.sum(c * c, axis=-1)
    r = y - cx - d
    k = r / (1 + w * cc)  # the output moves by -k, the input by w k c
    y2 = y - k
    shape = jnp.broadcast_shapes(y2.shape, x.shape[:-1])
    return jnp.broadcast_to(w * k, shape), jnp.broadcast_to(y2, shape)


def contract(c, x):
    """``sum(c * x, -1)`` for ``c`` broadcastable to ``x``, as an einsum, so that a ``c`` with
    size-1 axes (constant data rows shared by every neuron) becomes a batched matrix-vector
    product instead of a state-sized broadcast that XLA-CPU writes out before reducing."""
    if c.shape == x.shape or c.ndim != x.ndim or c.shape[-1] != x.shape[-1]:
        return jnp.sum(c * x, axis=-1)
    letters = "abcdefghijklmnopqrstuvwxyz"[:x.ndim]
    kept = [i for i in range(x.ndim - 1) if c.shape[i] == x.shape[i]]
    squeezed = jnp.squeeze(c, tuple(i for i in range(x.ndim - 1) if i not in kept))
    c_sub = "".join(letters[i] for i in kept) + letters[-1]
    return jnp.einsum(f"{letters},{c_sub}->{letters[:-1]}", x, squeezed)
