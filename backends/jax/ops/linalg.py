"""Forward rules: matrix products."""

from __future__ import annotations

import jax.numpy as jnp

from projc.backends.jax.ops._registry import register


@register("MatMul", since=1)
def _matmul(ctx, a, b):
    return jnp.matmul(a, b)


@register("Gemm", since=7)
def _gemm(ctx, a, b, c=None):
    a = a.T if ctx.attr("transA", 0) else a
    b = b.T if ctx.attr("transB", 0) else b
    y = ctx.attr("alpha", 1.0) * (a @ b)
    if c is not None:
        y = y + ctx.attr("beta", 1.0) * c
    return y.astype(a.dtype)
