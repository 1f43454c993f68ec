"""Forward rules: shape manipulation, constants and identity-like ops."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from projc.backends.jax.ops._registry import register


@register("Identity", since=1)
def _identity(ctx, x):
    return x


@register("Constant", since=1)
def _constant(ctx):
    for key in ("value", "value_float", "value_int", "value_floats", "value_ints"):
        if key in ctx.attrs:
            return np.asarray(ctx.attrs[key], dtype=ctx.output_dtype(0))
    raise NotImplementedError(f"Constant with attributes {sorted(ctx.attrs)}")


@register("Reshape", since=5)
def _reshape(ctx, x, shape):
    shape = [int(d) for d in ctx.static(shape, "the target shape")]
    allowzero = ctx.attr("allowzero", 0)
    if not allowzero:
        shape = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return jnp.reshape(x, shape)


@register("Flatten", since=1)
def _flatten(ctx, x):
    axis = ctx.attr("axis", 1)
    axis = axis + x.ndim if axis < 0 else axis
    lead = int(np.prod(x.shape[:axis], dtype=np.int64))
    return jnp.reshape(x, (lead, -1))
