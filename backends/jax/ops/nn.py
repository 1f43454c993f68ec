"""Forward rules: convolutions, pooling, normalisations, dropout."""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.core import Tracer
from onnx_ir import DataType

from projc.backends.jax.ops._registry import register

# ---------------------------------------------------------------- window geometry


def _same_pads(auto_pad, size, k, s, d):
    """(lo, hi) padding so that the output has ceil(size / s) elements."""
    out = -(-size // s)
    total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
    small, big = total // 2, total - total // 2
    return (small, big) if auto_pad == "SAME_UPPER" else (big, small)


_AUTO_PAD = {
    "NOTSET": lambda explicit, *args: explicit,
    "VALID": lambda explicit, *args: (0, 0),
    "SAME_UPPER": lambda explicit, *args: _same_pads("SAME_UPPER", *args),
    "SAME_LOWER": lambda explicit, *args: _same_pads("SAME_LOWER", *args),
}


def window_params(ctx, spatial, kernel):
    """strides, dilations and (lo, hi) pads per spatial axis, auto_pad resolved."""
    n = len(spatial)
    strides = list(ctx.attr("strides", None) or [1] * n)
    dilations = list(ctx.attr("dilations", None) or [1] * n)
    flat = list(ctx.attr("pads", None) or [0] * (2 * n))
    explicit = list(zip(flat[:n], flat[n:]))
    rule = _AUTO_PAD[ctx.attr("auto_pad", "NOTSET")]
    pads = [rule(explicit[i], spatial[i], kernel[i], strides[i], dilations[i]) for i in range(n)]
    return strides, dilations, pads


def _ceil_extra(size, k, s, d, pad):
    """Extra end padding so that ceil_mode's last window exists (it must start in the input)."""
    span = (k - 1) * d + 1
    out = math.ceil((size + pad[0] + pad[1] - span) / s) + 1
    if (out - 1) * s >= size + pad[0]:
        out -= 1
    return max(0, (out - 1) * s + span - size - pad[0] - pad[1])


def pool_params(ctx, spatial, kernel):
    """Like :func:`window_params`, plus each axis's extra end padding for ``ceil_mode``."""
    strides, dilations, pads = window_params(ctx, spatial, kernel)
    extra = [0] * len(spatial)
    if ctx.attr("ceil_mode", 0):
        extra = [_ceil_extra(*a) for a in zip(spatial, kernel, strides, dilations, pads)]
    return strides, dilations, pads, extra


def _full(n, pairs):
    return [(0, 0)] * n + list(pairs)


# ---------------------------------------------------------------- convolutions


def conv(x, w, strides, pads, dilations, group):
    """N-d convolution in ONNX layout (N, C, ...) x (M, C/group, ...)."""
    return lax.conv_general_dilated(
        x, w, window_strides=strides, padding=pads, rhs_dilation=dilations,
        feature_group_count=group, precision=lax.Precision.HIGHEST,
    )


def _bias(y, b):
    return y if b is None else y + b.reshape((1, -1) + (1,) * (y.ndim - 2)).astype(y.dtype)


@register("Conv", since=1)
def _conv(ctx, x, w, b=None):
    strides, dilations, pads = window_params(ctx, x.shape[2:], w.shape[2:])
    y = conv(x, w, strides, pads, dilations, ctx.attr("group", 1))
    return _bias(y, b).astype(x.dtype)


def _transpose_kernel(w, group):
    """(C, M/g, k...) -> (M, C/g, k...) with spatial axes flipped, for a dilated-input conv."""
    c, m_g = w.shape[:2]
    k = w.shape[2:]
    w = w.reshape((group, c // group, m_g) + k).swapaxes(1, 2)
    w = w.reshape((group * m_g, c // group) + k)
    return jnp.flip(w, axis=tuple(range(2, w.ndim)))


def _transpose_geometry(ctx, spatial, kernel, strides, dilations):
    """Per axis (pad_begin, output length) of a ConvTranspose."""
    n = len(spatial)
    out_pad = list(ctx.attr("output_padding", None) or [0] * n)
    full = [s * (i - 1) + op + (k - 1) * d + 1
            for s, i, op, k, d in zip(strides, spatial, out_pad, kernel, dilations)]
    shape = ctx.attr("output_shape", None)
    auto = ctx.attr("auto_pad", "NOTSET")
    if shape is None and auto not in ("SAME_UPPER", "SAME_LOWER"):
        flat = list(ctx.attr("pads", None) or [0] * (2 * n))
        return flat[:n], [f - b - e for f, b, e in zip(full, flat[:n], flat[n:])]
    # A given output_shape (or SAME padding) decides the pads; a larger output gets zeros
    # at the end.
    shape = list(shape or [i * s for i, s in zip(spatial, strides)])[-n:]
    total = [max(0, f - o) for f, o in zip(full, shape)]
    begin = [t // 2 if auto == "SAME_UPPER" else t - t // 2 for t in total]
    return begin, shape


@register("ConvTranspose", since=1)
def _conv_transpose(ctx, x, w, b=None):
    spatial, kernel = x.shape[2:], w.shape[2:]
    strides, dilations, _ = window_params(ctx, spatial, kernel)
    begin, shape = _transpose_geometry(ctx, spatial, kernel, strides, dilations)
    pads = []
    for i, k, s, d, lo, out in zip(spatial, kernel, strides, dilations, begin, shape):
        span = (k - 1) * d
        pads.append((span - lo, out + lo - s * (i - 1) - 1))
    group = ctx.attr("group", 1)
    y = lax.conv_general_dilated(
        x, _transpose_kernel(w, group), window_strides=[1] * len(spatial), padding=pads,
        lhs_dilation=strides, rhs_dilation=dilations, feature_group_count=group,
        precision=lax.Precision.HIGHEST,
    )
    return _bias(y, b).astype(x.dtype)


# ---------------------------------------------------------------- pooling


def _lowest(dtype):
    return -jnp.inf if jnp.issubdtype(dtype, jnp.floating) else jnp.iinfo(dtype).min


def _reduce(x, init, op, kernel, strides, dilations, pads):
    return lax.reduce_window(
        x, jnp.asarray(init, x.dtype), op, (1, 1) + tuple(kernel), (1, 1) + tuple(strides),
        _full(2, pads), window_dilation=(1, 1) + tuple(dilations),
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
            ones = jnp.pad(ones, _full(2, pads), constant_values=1)
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
    xp = jnp.pad(xf, _full(2, pads), constant_values=-jnp.inf)
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


def _spatial_axes(x):
    return tuple(range(2, x.ndim))


@register("GlobalAveragePool", since=1)
def _global_average_pool(ctx, x):
    return jnp.mean(x, axis=_spatial_axes(x), keepdims=True).astype(x.dtype)


@register("GlobalMaxPool", since=1)
def _global_max_pool(ctx, x):
    return jnp.max(x, axis=_spatial_axes(x), keepdims=True)


@register("GlobalLpPool", since=1)
def _global_lp_pool(ctx, x):
    p = ctx.attr("p", 2)
    y = jnp.sum(jnp.abs(x) ** p, axis=_spatial_axes(x), keepdims=True) ** (1.0 / p)
    return y.astype(x.dtype)


# ---------------------------------------------------------------- normalisation


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
    axes = (0,) + _spatial_axes(x) if mean.size == x.shape[1] else (0,)
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
    y, _, _ = _standardize(x, _spatial_axes(x), ctx.attr("epsilon", 1e-5))
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


@register("CausalConvWithState", since=27)
def _causal_conv_with_state(ctx, x, w, b=None, past_state=None):
    batch, channels, _ = x.shape
    k = w.shape[2]
    if past_state is None:
        past_state = jnp.zeros((batch, channels, k - 1), x.dtype)
    padded = jnp.concatenate([past_state.astype(x.dtype), x], axis=2)
    y = _bias(conv(padded, w, [1], [(0, 0)], [1], channels), b).astype(x.dtype)
    if ctx.attr("activation", "none") in ("silu", "swish"):
        y32 = y.astype(jnp.float32)
        y = (y32 * jax.nn.sigmoid(y32)).astype(x.dtype)
    return y, padded[:, :, padded.shape[2] - (k - 1):]


# ---------------------------------------------------------------- sampling


def _denormalize(g, size, align_corners):
    return (g + 1) / 2 * (size - 1) if align_corners else ((g + 1) * size - 1) / 2


def _reflect(x, lo, hi):
    """Reflect ``x`` off the borders until it lies in [lo, hi]."""
    span = hi - lo
    below, above = x < lo, x > hi
    dx = jnp.where(below, lo - x, x - hi)
    n = jnp.floor(dx / span)
    r = dx - n * span
    even = jnp.mod(n, 2) == 0
    from_lo, from_hi = lo + r, hi - r
    inside = jnp.where(below, jnp.where(even, from_lo, from_hi), jnp.where(even, from_hi, from_lo))
    return jnp.where(below | above, inside, x)


def _borders(size, align_corners):
    return (0.0, size - 1.0) if align_corners else (-0.5, size - 0.5)


_COORD_FIX = {
    "zeros": lambda x, size, lo, hi: x,
    "border": lambda x, size, lo, hi: jnp.where((x < lo) | (x > hi), jnp.clip(x, 0, size - 1), x),
    "reflection": lambda x, size, lo, hi: _reflect(x, lo, hi),
}

# padding mode -> (integer tap -> (index in range, weight multiplier))
_TAP_FIX = {
    "zeros": lambda i, size, lo, hi: (jnp.clip(i, 0, size - 1), (i >= 0) & (i < size)),
    "border": lambda i, size, lo, hi: (jnp.clip(i, 0, size - 1), True),
    "reflection": lambda i, size, lo, hi: (
        jnp.clip(_reflect(i.astype(jnp.float32), lo, hi).astype(jnp.int32), 0, size - 1), True),
}


def _cubic_weights(t):
    a = -0.75
    near = lambda s: ((a + 2) * s - (a + 3)) * s * s + 1  # noqa: E731  |s| <= 1
    far = lambda s: ((a * s - 5 * a) * s + 8 * a) * s - 4 * a  # noqa: E731  1 < |s| < 2
    return [far(t + 1), near(t), near(1 - t), far(2 - t)]


def _taps(mode, x):
    """Per axis: (integer taps, weights) of the interpolation kernel at coordinates ``x``."""
    if mode == "nearest":
        return [jnp.rint(x).astype(jnp.int32)], [jnp.ones_like(x)]
    x0 = jnp.floor(x)
    t = x - x0
    x0 = x0.astype(jnp.int32)
    if mode == "linear":
        return [x0, x0 + 1], [1 - t, t]
    return [x0 - 1, x0, x0 + 1, x0 + 2], _cubic_weights(t)


_GRID_MODES = {"bilinear": "linear", "bicubic": "cubic", "linear": "linear", "cubic": "cubic",
               "nearest": "nearest"}


@register("GridSample", since=16)
def _grid_sample(ctx, x, grid):
    mode = _GRID_MODES[ctx.attr("mode", "bilinear")]
    padding, align = ctx.attr("padding_mode", "zeros"), ctx.attr("align_corners", 0)
    sizes = x.shape[2:]
    coords = [grid[..., len(sizes) - 1 - a] for a in range(len(sizes))]  # grid is (..., x, y)
    per_axis = []
    for c, size in zip(coords, sizes):
        lo, hi = _borders(size, align)
        c = _COORD_FIX[padding](_denormalize(c, size, align), size, lo, hi)
        taps, weights = _taps(mode, c)
        fixed = [_TAP_FIX[padding](i, size, lo, hi) for i in taps]
        per_axis.append([(i, w * ok) for (i, ok), w in zip(fixed, weights)])
    n = jnp.arange(x.shape[0]).reshape((-1,) + (1,) * (grid.ndim - 2))
    out = 0
    for combo in itertools.product(*per_axis):
        weight = math.prod(w for _, w in combo)
        vals = x[(n, slice(None)) + tuple(i for i, _ in combo)]  # (N, *out, C)
        out = out + vals * weight[..., None]
    return jnp.moveaxis(out, -1, 1).astype(x.dtype)


def _base_grid_axis(size, align_corners):
    if align_corners:
        return np.linspace(-1.0, 1.0, size)
    return (2.0 * np.arange(size) + 1.0) / size - 1.0


@register("AffineGrid", since=20)
def _affine_grid(ctx, theta, size):
    spatial = [int(s) for s in ctx.static(size, "size")[2:]]
    axes = [_base_grid_axis(s, ctx.attr("align_corners", 0)) for s in spatial]
    mesh = np.meshgrid(*axes, indexing="ij")
    # Homogeneous points ordered (x, y[, z], 1): the last spatial axis comes first.
    homo = np.stack(list(mesh[::-1]) + [np.ones(spatial)], axis=-1).reshape(-1, len(spatial) + 1)
    grid = jnp.einsum("pk,njk->npj", jnp.asarray(homo, theta.dtype), theta,
                      precision=lax.Precision.HIGHEST)
    return grid.reshape((theta.shape[0], *spatial, len(spatial))).astype(theta.dtype)


def _grid_points(extent):
    """Every integer point of a box of the given extent, row-major: (points, ndim)."""
    axes = np.meshgrid(*[np.arange(e) for e in extent], indexing="ij")
    return np.stack(axes, -1).reshape(-1, len(extent))


def _col2im_index(image, block, strides, dilations, pads):
    """Flat index in the padded image of every (kernel tap, block position) pair."""
    padded = [i + lo + hi for i, (lo, hi) in zip(image, pads)]
    counts = [(p - (k - 1) * d - 1) // s + 1
              for p, k, d, s in zip(padded, block, dilations, strides)]
    taps, starts = _grid_points(block), _grid_points(counts)
    pos = taps[:, None, :] * np.asarray(dilations) + starts[None, :, :] * np.asarray(strides)
    return np.ravel_multi_index(tuple(np.moveaxis(pos, -1, 0)), padded), padded


@register("Col2Im", since=18)
def _col2im(ctx, x, image_shape, block_shape):
    image = [int(v) for v in ctx.static(image_shape, "image_shape")]
    block = [int(v) for v in ctx.static(block_shape, "block_shape")]
    n = len(image)
    strides = list(ctx.attr("strides", None) or [1] * n)
    dilations = list(ctx.attr("dilations", None) or [1] * n)
    flat = list(ctx.attr("pads", None) or [0] * (2 * n))
    pads = list(zip(flat[:n], flat[n:]))
    index, padded = _col2im_index(image, block, strides, dilations, pads)
    batch, c = x.shape[0], x.shape[1] // int(np.prod(block))
    out = jnp.zeros((batch, c, int(np.prod(padded))), x.dtype)
    out = out.at[:, :, index.reshape(-1)].add(x.reshape(batch, c, -1))
    out = out.reshape((batch, c, *padded))
    crop = tuple(slice(lo, lo + i) for i, (lo, _) in zip(image, pads))
    return out[(slice(None), slice(None)) + crop]


def _bilinear_gather(xg, h, w):
    """Sample xg (N, G, Cg, H, W) at float positions h, w (N, G, ...); zeros outside."""
    size_h, size_w = xg.shape[-2:]
    n = jnp.arange(xg.shape[0]).reshape((-1,) + (1,) * (h.ndim - 1))
    g = jnp.arange(xg.shape[1]).reshape((1, -1) + (1,) * (h.ndim - 2))
    h0, w0 = jnp.floor(h), jnp.floor(w)
    out = 0
    for dh, dw in itertools.product((0, 1), (0, 1)):
        hi, wi = (h0 + dh).astype(jnp.int32), (w0 + dw).astype(jnp.int32)
        weight = (1 - jnp.abs(h - hi)) * (1 - jnp.abs(w - wi))
        ok = (hi >= 0) & (hi < size_h) & (wi >= 0) & (wi < size_w)
        vals = xg[n, g, :, jnp.clip(hi, 0, size_h - 1), jnp.clip(wi, 0, size_w - 1)]
        out = out + vals * jnp.where(ok, weight, 0)[..., None].astype(vals.dtype)
    return out  # (N, G, ..., Cg)


@register("DeformConv", since=19)
def _deform_conv(ctx, x, w, offset, b=None, mask=None):
    n, c, _, _ = x.shape
    kh, kw = w.shape[2:]
    oh, ow = offset.shape[2:]
    strides, dilations, pads = window_params(ctx, x.shape[2:], (kh, kw))
    goff, group = ctx.attr("offset_group", 1), ctx.attr("group", 1)
    offset = offset.reshape(n, goff, kh, kw, 2, oh, ow)
    grid_h = (np.arange(kh) * dilations[0])[:, None, None, None] + (
        np.arange(oh) * strides[0] - pads[0][0])[None, None, :, None]
    grid_w = (np.arange(kw) * dilations[1])[None, :, None, None] + (
        np.arange(ow) * strides[1] - pads[1][0])[None, None, None, :]
    cols = _bilinear_gather(x.reshape(n, goff, c // goff, *x.shape[2:]),
                            grid_h + offset[:, :, :, :, 0], grid_w + offset[:, :, :, :, 1])
    if mask is not None:
        cols = cols * mask.reshape(n, goff, kh, kw, oh, ow)[..., None]
    # (N, Goff, kh, kw, oh, ow, Cg) -> (N, group, C/group, kh, kw, oh, ow)
    cols = jnp.moveaxis(cols, -1, 2).reshape(n, group, c // group, kh, kw, oh, ow)
    wg = w.reshape(group, w.shape[0] // group, c // group, kh, kw)
    y = jnp.einsum("ngcabhw,gocab->ngohw", cols, wg, precision=lax.Precision.HIGHEST)
    return _bias(y.reshape(n, -1, oh, ow), b).astype(x.dtype)


def _roi_axis(start, bins, grid, pooled, gmax, size):
    """Sample positions along one axis: indices (low, high), weights, validity; (R, P, G)."""
    bins = bins[:, None, None]
    g = grid[:, None, None]
    k = jnp.arange(gmax)[None, None, :]
    pos = start[:, None, None] + jnp.arange(pooled)[None, :, None] * bins + (k + 0.5) * bins / g
    inside = (pos >= -1.0) & (pos <= size) & (k < g)
    pos = jnp.maximum(pos, 0)
    low = jnp.minimum(jnp.floor(pos).astype(jnp.int32), size - 1)
    high = jnp.minimum(low + 1, size - 1)
    frac = jnp.where(low >= size - 1, 0.0, pos - low)
    return (low, high), (1 - frac, frac), inside


def _roi_grid(ctx, extent, pooled, size):
    """Samples per bin (R,) and a static upper bound on it."""
    ratio = ctx.attr("sampling_ratio", 0)
    if ratio > 0:
        return jnp.full(extent.shape, ratio, jnp.int32), ratio
    grid = jnp.ceil(extent / pooled).astype(jnp.int32)
    if isinstance(extent, Tracer):  # run-time boxes: bound by boxes no larger than the map
        return grid, max(1, -(-(size + 1) // pooled))
    return grid, max(1, int(np.max(np.asarray(grid), initial=1)))


def _roi_align(ctx, x, rois, batch_indices, default_mode):
    ph, pw = ctx.attr("output_height", 1), ctx.attr("output_width", 1)
    half = ctx.attr("coordinate_transformation_mode", default_mode) == "half_pixel"
    box = rois.astype(jnp.float32) * ctx.attr("spatial_scale", 1.0) - (0.5 if half else 0.0)
    height, width = x.shape[2:]
    ext_w, ext_h = box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]
    if not half:  # malformed boxes become 1 x 1
        ext_w, ext_h = jnp.maximum(ext_w, 1.0), jnp.maximum(ext_h, 1.0)
    gh, gh_max = _roi_grid(ctx, ext_h, ph, height)
    gw, gw_max = _roi_grid(ctx, ext_w, pw, width)
    ys = _roi_axis(box[:, 1], ext_h / ph, gh, ph, gh_max, height)
    xs = _roi_axis(box[:, 0], ext_w / pw, gw, pw, gw_max, width)
    xr = x[jnp.asarray(batch_indices)]  # (R, C, H, W)
    r = jnp.arange(xr.shape[0])[:, None, None, None, None]
    expand_y = lambda a: a[:, :, :, None, None]  # noqa: E731  (R, PH, GH) -> (R, PH, GH, 1, 1)
    expand_x = lambda a: a[:, None, None, :, :]  # noqa: E731  (R, PW, GW) -> (R, 1, 1, PW, GW)
    terms = []
    for (iy, wy), (ix, wx) in itertools.product(zip(*ys[:2]), zip(*xs[:2])):
        vals = xr[r, :, expand_y(iy), expand_x(ix)]  # (R, PH, GH, PW, GW, C)
        terms.append(vals * (expand_y(wy) * expand_x(wx))[..., None].astype(x.dtype))
    inside = (expand_y(ys[2]) & expand_x(xs[2]))[..., None]
    if ctx.attr("mode", "avg") == "max":
        sample = jnp.where(inside, jnp.max(jnp.stack(terms), axis=0), 0)
        in_grid = (expand_y(jnp.arange(gh_max)[None, None, :] < gh[:, None, None])
                   & expand_x(jnp.arange(gw_max)[None, None, :] < gw[:, None, None]))[..., None]
        y = jnp.max(jnp.where(in_grid, sample, -jnp.inf), axis=(2, 4))
        y = jnp.where(jnp.isneginf(y), 0, y)
    else:
        count = jnp.maximum(gh * gw, 1).astype(x.dtype)[:, None, None, None]
        y = jnp.sum(jnp.where(inside, sum(terms), 0), axis=(2, 4)) / count
    return jnp.moveaxis(y, -1, 1).astype(x.dtype)


@register("RoiAlign", since=10)
def _roi_align_10(ctx, x, rois, batch_indices):
    return _roi_align(ctx, x, rois, batch_indices, "output_half_pixel")


@register("RoiAlign", since=16)
def _roi_align_16(ctx, x, rois, batch_indices):
    return _roi_align(ctx, x, rois, batch_indices, "half_pixel")
