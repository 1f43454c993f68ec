"""Forward rules: matrix products, Einsum, Det and the integer / quantised products."""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from projc.backends.jax.ops._registry import register
from projc.backends.jax.ops._window import window_params
from projc.backends.jax.ops.conv import conv


@register("MatMul", since=1)
def _matmul(ctx, a, b):
    return jnp.matmul(a, b, precision=lax.Precision.HIGHEST).astype(a.dtype)


@register("Gemm", since=1)
def _gemm(ctx, a, b, c=None):
    a = a.T if ctx.attr("transA", 0) else a
    b = b.T if ctx.attr("transB", 0) else b
    y = ctx.attr("alpha", 1.0) * jnp.matmul(a, b, precision=lax.Precision.HIGHEST)
    if c is not None:
        y = y + ctx.attr("beta", 1.0) * c
    return y.astype(a.dtype)


@register("Einsum", since=12)
def _einsum(ctx, *xs):
    equation = ctx.attr("equation").replace(" ", "")
    dtype = xs[0].dtype
    return jnp.einsum(equation, *xs, precision=lax.Precision.HIGHEST).astype(dtype)


@register("Det", since=11)
def _det(ctx, x):
    return jnp.linalg.det(x).astype(x.dtype)


# ---------------------------------------------------------------- integer and quantised


def _shift(x, zero_point, axis_shape=None):
    """``x - zero_point`` in int32; a per-row zero point of a matrix is reshaped to (M, 1)."""
    x = x.astype(jnp.int32)
    if zero_point is None:
        return x
    zp = zero_point.astype(jnp.int32)
    if axis_shape is not None and zp.ndim == 1 and zp.shape[0] > 1:
        zp = zp.reshape(axis_shape)
    return x - zp


@register("MatMulInteger", since=10)
def _matmul_integer(ctx, a, b, a_zero_point=None, b_zero_point=None):
    rows = (-1, 1) if a.ndim >= 2 else None
    return jnp.matmul(_shift(a, a_zero_point, rows), _shift(b, b_zero_point))


def _requantize(real, zero_point, dtype):
    """Round half to even, add the zero point, saturate to ``dtype``."""
    info = jnp.iinfo(dtype)
    zp = 0 if zero_point is None else zero_point.astype(real.dtype)
    return jnp.clip(jnp.round(real) + zp, info.min, info.max).astype(dtype)


@register("QLinearMatMul", since=10)
def _qlinear_matmul(ctx, a, a_scale, a_zp, b, b_scale, b_zp, y_scale, y_zp=None):
    acc = jnp.matmul(_shift(a, a_zp), _shift(b, b_zp))
    multiplier = (a_scale * b_scale / y_scale).astype(jnp.float32)
    dtype = a.dtype if y_zp is None else y_zp.dtype
    # The reference adds the zero point before rounding; for integral zero points it is the same.
    return _requantize(acc.astype(jnp.float32) * multiplier, y_zp, dtype)


def _int_conv(ctx, x, w):
    """Exact convolution of int32 tensors (float64 holds every partial sum exactly)."""
    strides, dilations, pads = window_params(ctx, x.shape[2:], w.shape[2:])
    y = conv(x.astype(jnp.float64), w.astype(jnp.float64), strides, pads, dilations,
             ctx.attr("group", 1))
    return y.astype(jnp.int32)


def _per_output_channel(v, ndim):
    return v.reshape((-1,) + (1,) * (ndim - 1)) if v.ndim == 1 and v.shape[0] > 1 else v


@register("ConvInteger", since=10)
def _conv_integer(ctx, x, w, x_zero_point=None, w_zero_point=None):
    wz = None if w_zero_point is None else _per_output_channel(w_zero_point, w.ndim)
    return _int_conv(ctx, _shift(x, x_zero_point), _shift(w, wz))


@register("QLinearConv", since=10)
def _qlinear_conv(ctx, x, x_scale, x_zp, w, w_scale, w_zp, y_scale, y_zp=None, bias=None):
    wz = None if w_zp is None else _per_output_channel(w_zp, w.ndim)
    acc = _int_conv(ctx, _shift(x, x_zp), _shift(w, wz))
    if bias is not None:
        acc = acc + bias.reshape((1, -1) + (1,) * (acc.ndim - 2))
    scale = x_scale * _per_output_channel(w_scale, acc.ndim - 1) / y_scale
    dtype = x.dtype if y_zp is None else y_zp.dtype
    return _requantize(acc.astype(jnp.float32) * scale.astype(jnp.float32), y_zp, dtype)
