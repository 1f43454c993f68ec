"""Forward rules: linear quantization (per tensor, per axis, blocked) and its inverse."""

from __future__ import annotations

import jax.numpy as jnp
import ml_dtypes
import numpy as np

from projc.backends.jax.ops._registry import register
from projc.backends.jax.ops.elementwise import cast_to, onnx_dtype

_FLOAT8 = {
    np.dtype(t)
    for t in (
        ml_dtypes.float8_e4m3fn,
        ml_dtypes.float8_e4m3fnuz,
        ml_dtypes.float8_e5m2,
        ml_dtypes.float8_e5m2fnuz,
    )
}
_FLOAT4 = np.dtype(ml_dtypes.float4_e2m1fn)


def _broadcastable(value, shape, axis: int, block_size: int):
    """Scale or zero point laid out to broadcast against an input of ``shape``."""
    value = jnp.asarray(value)
    if value.ndim == 0 or value.size == 1:
        return jnp.reshape(value, ())
    axis = axis % len(shape)
    if not block_size:  # per axis: a vector along ``axis``
        dims = [1] * len(shape)
        dims[axis] = value.size
        return jnp.reshape(value, dims)
    value = jnp.repeat(value, block_size, axis=axis)  # blocked: one entry per block
    return jnp.take(value, jnp.arange(shape[axis]), axis=axis)


def _int_range(dtype: np.dtype) -> tuple[int, int]:
    info = ml_dtypes.iinfo(dtype)
    return int(info.min), int(info.max)


def _quantize(x, dtype: np.dtype, zero_point, saturate: bool):
    """Scaled values (``x / scale``) rounded and stored as ``dtype``."""
    if dtype in _FLOAT8:  # float8 zero points are zero by definition
        return cast_to(x, dtype, saturate)
    if dtype == _FLOAT4:  # no inf/nan in float4: the cast saturates
        info = ml_dtypes.finfo(dtype)
        x = x if zero_point is None else x + zero_point.astype(x.dtype)
        return jnp.clip(x, float(info.min), float(info.max)).astype(dtype)
    q = jnp.round(x).astype(jnp.int32)  # half to even, like np.rint
    if zero_point is not None:
        q = q + zero_point.astype(jnp.int32)
    lo, hi = _int_range(dtype)
    return jnp.clip(q, lo, hi).astype(dtype)


def _output_dtype(ctx, zero_point) -> np.dtype:
    if zero_point is not None:
        return np.dtype(zero_point.dtype)
    code = ctx.attr("output_dtype", 0)
    return onnx_dtype(code) if code else np.dtype(np.uint8)


@register("QuantizeLinear", since=10)
def _quantize_linear(ctx, x, scale, zero_point=None):
    axis, block = ctx.attr("axis", 1), ctx.attr("block_size", 0)
    dtype = _output_dtype(ctx, zero_point)
    scale = _broadcastable(scale, x.shape, axis, block)
    zp = None if zero_point is None else _broadcastable(zero_point, x.shape, axis, block)
    precision = ctx.attr("precision", 0)
    if precision:  # compute the division in the requested float type
        x, scale = x.astype(onnx_dtype(precision)), scale.astype(onnx_dtype(precision))
    return _quantize(x / scale, dtype, zp, bool(ctx.attr("saturate", 1)))


@register("DequantizeLinear", since=10)
def _dequantize_linear(ctx, x, scale, zero_point=None):
    axis, block = ctx.attr("axis", 1), ctx.attr("block_size", 0)
    x = jnp.asarray(x)
    dx = x.astype(jnp.float32)
    if zero_point is not None and np.dtype(x.dtype) not in _FLOAT8 | {_FLOAT4}:
        dx = dx - _broadcastable(zero_point, x.shape, axis, block).astype(jnp.float32)
    y = dx * _broadcastable(scale, x.shape, axis, block)
    code = ctx.attr("output_dtype", 0)
    return y.astype(onnx_dtype(code) if code else scale.dtype)


@register("DynamicQuantizeLinear", since=11)
def _dynamic_quantize_linear(ctx, x):
    lo = jnp.minimum(jnp.min(x), 0)
    hi = jnp.maximum(jnp.max(x), 0)
    scale = ((hi - lo) / 255).astype(x.dtype)
    zp = jnp.clip(jnp.round(-lo / scale), 0, 255).astype(jnp.uint8)
    y = jnp.clip(jnp.round(x / scale) + zp, 0, 255).astype(jnp.uint8)
    return y, scale, zp
