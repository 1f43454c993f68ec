"""Forward rules: pooling (Average, Max, Lp and their Global forms) and MaxUnpool."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from projc.backends.jax.ops._registry import register
from projc.backends.jax.ops._window import full_pads, pool_params, spatial_axes


def _lowest(dtype):
    return -jnp.inf if jnp.issubdtype(dtype, jnp.floating) else jnp.iinfo(dtype).min


def _reduce(x, init, op, kernel, strides, dilations, pads):
    return lax.reduce_window(
        x, jnp.asarray(init, x.dtype), op, (1, 1) + tuple(kernel), (1, 1) + tuple(strides),
        full_pads(2, pads), window_dilation=(1, 1) + tuple(dilations),
    )


def _kernel(ctx):
    return list(ctx.attr("kernel_shape"))


def _with_extra(pads, extra):
    return [(lo, hi + e) for (lo, hi), e in zip(pads, extra)]


@register("AveragePool", since=1)
def _average_pool(ctx, x):
    kernel = _kernel(ctx)
    strides, dilations, pads, extra = pool_params(ctx, x.shape[2:], kernel)
    geometry = (kernel, strides, dilations)
    total = _reduce(x, 0, lax.add, *geometry, _with_extra(pads, extra))
    # The divisor counts input cells, explicit pads too with count_include_pad, never
    # the cells that ceil_mode adds.
    with jax.ensure_compile_time_eval():  # shapes only: a constant, not XLA constant folding
        ones = jnp.ones((1, 1) + x.shape[2:], x.dtype)
        if ctx.attr("count_include_pad", 0):
            ones = jnp.pad(ones, full_pads(2, pads), constant_values=1)
            pads = [(0, 0)] * len(pads)
        count = _reduce(ones, 0, lax.add, *geometry, _with_extra(pads, extra))
    return (total / count).astype(x.dtype)


@register("LpPool", since=1)
def _lp_pool(ctx, x):
    kernel, p = _kernel(ctx), ctx.attr("p", 2)
    strides, dilations, pads, extra = pool_params(ctx, x.shape[2:], kernel)
    total = _reduce(jnp.abs(x) ** p, 0, lax.add, kernel, strides, dilations,
                    _with_extra(pads, extra))
    return (total ** (1.0 / p)).astype(x.dtype)


def _windows(x, kernel, strides, dilations, out):
    """Every kernel tap of every window of an already padded ``x``: (..., *out, taps)."""
    taps = []
    for offset in itertools.product(*[range(k) for k in kernel]):
        idx = tuple(
            slice(o * d, o * d + (m - 1) * s + 1, s)
            for o, d, s, m in zip(offset, dilations, strides, out)
        )
        taps.append(x[(Ellipsis,) + idx])
    return jnp.stack(taps, axis=-1)


def _spatial_index(spatial, column_major):
    """Flat position of every spatial cell, row- or column-major."""
    size = int(np.prod(spatial))
    if column_major:
        return np.arange(size).reshape(spatial[::-1]).T
    return np.arange(size).reshape(spatial)


def _max_pool_indices(ctx, x, kernel, strides, dilations, pads):
    """ONNX MaxPool's Indices: flat positions in the whole (N, C, ...) input tensor."""
    spatial = x.shape[2:]
    out = [(i + lo + hi - (k - 1) * d - 1) // s + 1
           for i, (lo, hi), k, d, s in zip(spatial, pads, kernel, dilations, strides)]
    xf = x.astype(jnp.float64) if not jnp.issubdtype(x.dtype, jnp.floating) else x
    xp = jnp.pad(xf, full_pads(2, pads), constant_values=-jnp.inf)
    pos = np.pad(_spatial_index(spatial, ctx.attr("storage_order", 0)), pads, constant_values=-1)
    vals = _windows(xp, kernel, strides, dilations, out)
    where = _windows(jnp.asarray(pos), kernel, strides, dilations, out)
    best = jnp.argmax(vals, axis=-1)
    local = jnp.take_along_axis(jnp.broadcast_to(where, vals.shape), best[..., None], -1)[..., 0]
    n, c = x.shape[:2]
    base = np.arange(n * c).reshape((n, c) + (1,) * len(out)) * int(np.prod(spatial))
    return (local + base).astype(jnp.int64)


@register("MaxPool", since=1)
def _max_pool(ctx, x):
    kernel = _kernel(ctx)
    strides, dilations, pads, extra = pool_params(ctx, x.shape[2:], kernel)
    pads = _with_extra(pads, extra)
    y = _reduce(x, _lowest(x.dtype), lax.max, kernel, strides, dilations, pads)
    if not ctx.output_used(1):
        return y
    return y, _max_pool_indices(ctx, x, kernel, strides, dilations, pads)


@register("MaxUnpool", since=9)
def _max_unpool(ctx, x, indices, output_shape=None):
    kernel = _kernel(ctx)
    n = len(kernel)
    strides = list(ctx.attr("strides", None) or [1] * n)
    flat = list(ctx.attr("pads", None) or [0] * (2 * n))
    inferred = x.shape[:2] + tuple(
        (i - 1) * s + k - flat[a] - flat[a + n]
        for a, (i, s, k) in enumerate(zip(x.shape[2:], strides, kernel))
    )
    y = jnp.zeros(int(np.prod(inferred)), x.dtype).at[indices.reshape(-1)].set(x.reshape(-1))
    y = y.reshape(inferred)
    if output_shape is None:
        return y
    # Indices address the inferred shape; a larger output_shape pads at the end.
    shape = [int(v) for v in ctx.static(output_shape, "output_shape")]
    return jnp.pad(y, [(0, o - i) for o, i in zip(shape, inferred)])



@register("GlobalAveragePool", since=1)
def _global_average_pool(ctx, x):
    return jnp.mean(x, axis=spatial_axes(x), keepdims=True).astype(x.dtype)


@register("GlobalMaxPool", since=1)
def _global_max_pool(ctx, x):
    return jnp.max(x, axis=spatial_axes(x), keepdims=True)


@register("GlobalLpPool", since=1)
def _global_lp_pool(ctx, x):
    p = ctx.attr("p", 2)
    y = jnp.sum(jnp.abs(x) ** p, axis=spatial_axes(x), keepdims=True) ** (1.0 / p)
    return y.astype(x.dtype)
