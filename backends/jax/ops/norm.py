"""Forward rules: normalisations (batch, instance, layer, RMS, group, Lp, LRN...) and Dropout."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.core import Tracer
from onnx_ir import DataType

from projc.backends.jax.ops._registry import register
from projc.backends.jax.ops._window import spatial_axes


def _per_channel(v, ndim):
    return v.reshape((-1,) + (1,) * (ndim - 2))


def _bn_param(v, x):
    """A BatchNorm parameter against ``x``: per channel, or per activation (``spatial=0``)."""
    return _per_channel(v, x.ndim) if v.size == x.shape[1] else v.reshape(x.shape[1:])


def _batch_norm(x, scale, bias, mean, var, eps):
    p = lambda v: _bn_param(v, x)  # noqa: E731
    inv = 1.0 / jnp.sqrt(p(var) + eps)
    return (p(scale) * (x - p(mean)) * inv + p(bias)).astype(x.dtype)


def _bn_training(ctx, x, scale, bias, mean, var):
    """Batch statistics; running statistics updated with ``momentum``."""
    axes = (0,) + spatial_axes(x) if mean.size == x.shape[1] else (0,)
    batch_mean, batch_var = jnp.mean(x, axis=axes), jnp.var(x, axis=axes)
    m = ctx.attr("momentum", 0.9)
    y = _batch_norm(x, scale, bias, batch_mean, batch_var, ctx.attr("epsilon", 1e-5))
    run_mean = (mean * m + batch_mean.reshape(mean.shape) * (1 - m)).astype(x.dtype)
    run_var = (var * m + batch_var.reshape(var.shape) * (1 - m)).astype(x.dtype)
    return y, run_mean, run_var, batch_mean.astype(x.dtype), batch_var.astype(x.dtype)


@register("BatchNormalization", since=1)
def _batch_normalization_1(ctx, x, scale, bias, mean, var):
    # Before opset 14 the outputs say the mode: (Y, mean, var, saved_mean, saved_var) trains.
    if ctx.num_outputs == 1:
        return _batch_norm(x, scale, bias, mean, var, ctx.attr("epsilon", 1e-5))
    return _bn_training(ctx, x, scale, bias, mean, var)[: ctx.num_outputs]


@register("BatchNormalization", since=14)
def _batch_normalization_14(ctx, x, scale, bias, mean, var):
    if not ctx.attr("training_mode", 0):
        return _batch_norm(x, scale, bias, mean, var, ctx.attr("epsilon", 1e-5))
    return _bn_training(ctx, x, scale, bias, mean, var)[:3]


def _standardize(x, axes, eps):
    mean = jnp.mean(x, axis=axes, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=axes, keepdims=True)
    inv = 1.0 / jnp.sqrt(var + eps)
    return (x - mean) * inv, mean, inv


@register("InstanceNormalization", since=1)
def _instance_normalization(ctx, x, scale, bias):
    y, _, _ = _standardize(x, spatial_axes(x), ctx.attr("epsilon", 1e-5))
    return (y * _per_channel(scale, x.ndim) + _per_channel(bias, x.ndim)).astype(x.dtype)


def _stash(ctx, x):
    """Normalisation statistics are computed in ``stash_type`` (float32), float64 stays."""
    if x.dtype == jnp.float64:
        return x
    return x.astype(DataType(ctx.attr("stash_type", 1)).numpy())


@register("LayerNormalization", since=17)
def _layer_normalization(ctx, x, scale, bias=None):
    axis = ctx.attr("axis", -1) % x.ndim
    y, mean, inv = _standardize(_stash(ctx, x), tuple(range(axis, x.ndim)),
                                ctx.attr("epsilon", 1e-5))
    y = y.astype(x.dtype) * scale
    y = y if bias is None else y + bias
    # Mean and InvStdDev have the stash type where the model declares it.
    stat = lambda i, v: v.astype(  # noqa: E731
        (ctx.output_dtype(i) if i < ctx.num_outputs else None) or x.dtype)
    return y.astype(x.dtype), stat(1, mean), stat(2, inv)


@register("RMSNormalization", since=23)
def _rms_normalization(ctx, x, scale):
    axis = ctx.attr("axis", -1) % x.ndim
    xs = _stash(ctx, x)
    ms = jnp.mean(jnp.square(xs), axis=tuple(range(axis, x.ndim)), keepdims=True)
    y = xs / jnp.sqrt(ms + ctx.attr("epsilon", 1e-5))
    return (y.astype(x.dtype) * scale).astype(x.dtype)


def _group_norm(ctx, x, scale, bias, per_group):
    g = ctx.attr("num_groups")
    n, c = x.shape[:2]
    xg = _stash(ctx, x).reshape((n, g, -1))
    y, _, _ = _standardize(xg, (2,), ctx.attr("epsilon", 1e-5))
    y = y.reshape(x.shape).astype(x.dtype)
    if per_group:  # opset 18: one scale/bias per group
        scale, bias = jnp.repeat(scale, c // g), jnp.repeat(bias, c // g)
    return (y * _per_channel(scale, x.ndim) + _per_channel(bias, x.ndim)).astype(x.dtype)


@register("GroupNormalization", since=18)
def _group_normalization_18(ctx, x, scale, bias):
    return _group_norm(ctx, x, scale, bias, per_group=True)


@register("GroupNormalization", since=21)
def _group_normalization_21(ctx, x, scale, bias):
    return _group_norm(ctx, x, scale, bias, per_group=False)


_LP_NORMS = {1: lambda x, a: jnp.sum(jnp.abs(x), axis=a, keepdims=True),
             2: lambda x, a: jnp.sqrt(jnp.sum(jnp.square(x), axis=a, keepdims=True))}


@register("LpNormalization", since=1)
def _lp_normalization(ctx, x):
    norm = _LP_NORMS[ctx.attr("p", 2)](x, ctx.attr("axis", -1))
    return (x / jnp.where(norm == 0, jnp.ones((), x.dtype), norm)).astype(x.dtype)


@register("MeanVarianceNormalization", since=9)
def _mean_variance_normalization(ctx, x):
    axes = tuple(ctx.attr("axes", [0, 2, 3]))
    mean = jnp.mean(x, axis=axes, keepdims=True)
    var = jnp.mean(jnp.square(x), axis=axes, keepdims=True) - jnp.square(mean)
    return ((x - mean) / (jnp.sqrt(var) + 1e-9)).astype(x.dtype)


@register("LRN", since=1)
def _lrn(ctx, x):
    size = ctx.attr("size")
    alpha, beta, bias = ctx.attr("alpha", 1e-4), ctx.attr("beta", 0.75), ctx.attr("bias", 1.0)
    lo, hi = (size - 1) // 2, size - 1 - (size - 1) // 2
    sq = jnp.pad(jnp.square(x), [(0, 0), (lo, hi)] + [(0, 0)] * (x.ndim - 2))
    window = (1, size) + (1,) * (x.ndim - 2)
    total = lax.reduce_window(sq, jnp.zeros((), x.dtype), lax.add, window, (1,) * x.ndim, "VALID")
    return (x / (bias + alpha / size * total) ** beta).astype(x.dtype)


# ---------------------------------------------------------------- dropout


def _dropout_outputs(ctx, x, ratio):
    """Identity output, and a mask of ones; a non-zero training ratio needs randomness."""
    if ratio:
        raise NotImplementedError("Dropout in training mode with ratio > 0 is random")
    if ctx.num_outputs < 2 or not ctx.output_used(1):
        return x
    mask_dtype = ctx.output_dtype(1) or np.dtype(bool)
    return x, jnp.ones(x.shape, mask_dtype)


@register("Dropout", since=1)
def _dropout_1(ctx, x):
    return _dropout_outputs(ctx, x, 0)


@register("Dropout", since=12)
def _dropout_12(ctx, x, ratio=None, training_mode=None):
    training = training_mode is not None and bool(ctx.static(training_mode, "training_mode"))
    if not training or ratio is None:
        return _dropout_outputs(ctx, x, 0)
    if not isinstance(ratio, Tracer):
        return _dropout_outputs(ctx, x, float(ratio))
    # A run-time ratio: only ratio 0 is deterministic; any other value yields NaN, not a
    # silently wrong identity.
    out = _dropout_outputs(ctx, x, 0)
    guard = lambda y: jnp.where(ratio == 0, y, jnp.full((), jnp.nan, x.dtype))  # noqa: E731
    return (guard(out[0]), out[1]) if isinstance(out, tuple) else guard(out)
