"""Projection onto the graph of the identity, `y = a` (elementwise)."""

from __future__ import annotations

import jax.numpy as jnp


def project_identity(a, y, w=1.0):
    """Project `(a, y)` onto `{y = a}` with output weight `w` (method.md section 2).

    Minimises `|a' - a|^2 + w |a' - y|^2`: the weighted mean `(a + w y) / (1 + w)`.

    Args:
        a: input copies, any shape.
        y: output copies, the shape of `a`.
        w: output weight, a float or an array broadcastable to `a`.

    Returns:
        `(a2, y2)`, equal arrays of `a`'s dtype.
    """
    a = jnp.asarray(a)
    y = jnp.asarray(y, a.dtype)
    w = jnp.asarray(w, a.dtype)
    a2 = (a + w * y) / (1 + w)
    return a2, a2
