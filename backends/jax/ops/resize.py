"""Forward rules: Resize and Upsample.

Separable: each resized axis maps output positions to source coordinates, then gathers a
few neighbours (edge-clamped) and weights them. Sizes and scales must be static (they fix
the output shape); a region of interest may be traced.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from projc.backends.jax.ops._registry import register
from projc.backends.jax.ops.shape import INT64, _ints, _norm_axes

_COORDS = {  # mode -> source coordinate of output positions y (w: the unrounded output length)
    "half_pixel": lambda y, s, n, m, w, r: (y + 0.5) / s - 0.5,
    "pytorch_half_pixel": lambda y, s, n, m, w, r: (y + 0.5) / s - 0.5 if w > 1 else y * 0 - 0.5,
    "align_corners": lambda y, s, n, m, w, r: y * (n - 1) / (w - 1) if w > 1 else y * 0,
    "asymmetric": lambda y, s, n, m, w, r: y / s,
    "half_pixel_symmetric": lambda y, s, n, m, w, r: (
        n / 2 * (1 - m / w) + (y + 0.5) / s - 0.5
    ),
    "tf_crop_and_resize": lambda y, s, n, m, w, r: r[0] * (n - 1) + (
        y * (r[1] - r[0]) * (n - 1) / (w - 1) if w > 1 else (r[1] - r[0]) * (n - 1) / 2 + y * 0
    ),
}

_NEAREST = {  # nearest_mode -> whether to take the upper neighbour, given ratio in (0, 1]
    "round_prefer_floor": lambda r: r > 0.5,
    "round_prefer_ceil": lambda r: r >= 0.5,
    "floor": lambda r: r >= 1,
    "ceil": lambda r: r > 0,
}


def _cubic_kernel(a):
    def k(d):
        d = jnp.abs(d)
        near = ((a + 2) * d - (a + 3)) * d * d + 1
        far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
        return jnp.where(d <= 1, near, jnp.where(d < 2, far, 0.0))

    return k, 2


def _linear_kernel(a):
    return (lambda d: jnp.clip(1 - jnp.abs(d), 0, 1)), 1


_KERNELS = {"linear": _linear_kernel, "cubic": _cubic_kernel}


def _taps(ctx, ratio, scale):
    """(first neighbour offset from i0, weights (out, taps)) for the interpolating modes."""
    kernel, support = _KERNELS[ctx.attr("mode", "nearest")](ctx.attr("cubic_coeff_a", -0.75))
    s = min(scale, 1.0) if ctx.attr("antialias", 0) else 1.0
    start = int(np.floor(-support / s)) + 1
    offsets = np.arange(start, 2 - start)
    w = kernel(s * (offsets[None, :] - ratio[:, None]))
    return start, w / jnp.sum(w, axis=1, keepdims=True)


def _resize_axis(ctx, x, axis, scale, size, roi, coord, nearest_mode):
    n = x.shape[axis]
    y = jnp.arange(size, dtype=jnp.float64)
    src = _COORDS[coord](y, scale, n, size, scale * n, roi)
    i0 = jnp.ceil(src).astype(INT64) - 1  # the neighbour left of src; ratio lies in (0, 1]
    ratio = src - i0
    if ctx.attr("mode", "nearest") == "nearest":
        if nearest_mode == "simple":  # Resize-10, as onnxruntime reads it
            nearest_mode = "floor" if scale >= 1 else "ceil"
        idx = jnp.clip(i0 + _NEAREST[nearest_mode](ratio), 0, n - 1)
        out = jnp.take(x, idx, axis=axis)
    else:
        start, w = _taps(ctx, ratio, scale)
        idx = i0[:, None] + start + jnp.arange(w.shape[1])
        if ctx.attr("exclude_outside", 0):
            w = jnp.where((idx < 0) | (idx >= n), 0.0, w)
            w = w / jnp.sum(w, axis=1, keepdims=True)
        taps = jnp.take(x, jnp.clip(idx, 0, n - 1), axis=axis).astype(jnp.float64)
        w = jnp.reshape(w, w.shape + (1,) * (x.ndim - axis - 1))
        out = jnp.sum(taps * w, axis=axis + 1)
    if coord == "tf_crop_and_resize":
        outside = jnp.reshape((src < 0) | (src > n - 1), (size,) + (1,) * (x.ndim - axis - 1))
        out = jnp.where(outside, ctx.attr("extrapolation_value", 0.0), out)
    return out


def _given(v) -> bool:
    return v is not None and np.size(v) > 0


def _resize_plan(ctx, x, scales, sizes, axes):
    """Per resized axis: (scale, output length), from static sizes or scales."""
    dims = [x.shape[a] for a in axes]
    if not _given(sizes):
        scales = [float(s) for s in np.reshape(ctx.static(scales, "Resize's scales"), -1)]
        return scales, [int(np.floor(s * d)) for s, d in zip(scales, dims)]
    sizes = _ints(ctx, sizes, "Resize's sizes")
    scales = [o / d for o, d in zip(sizes, dims)]
    policy = ctx.attr("keep_aspect_ratio_policy", "stretch")
    if policy == "stretch":
        return scales, sizes
    s = {"not_larger": min, "not_smaller": max}[policy](scales)
    return [s] * len(dims), [int(s * d + 0.5) for d in dims]


def _resize(ctx, x, roi, scales, sizes, coord, nearest_mode):
    axes = _norm_axes(ctx.attr("axes") or list(range(x.ndim)), x.ndim)
    scales, sizes = _resize_plan(ctx, x, scales, sizes, axes)
    roi = jnp.reshape(roi, (2, -1)) if _given(roi) else jnp.array([[0.0] * x.ndim, [1.0] * x.ndim])
    roi_of = (lambda k, a: roi[:, k]) if roi.shape[1] == len(axes) else (lambda k, a: roi[:, a])
    y = x
    for k, (a, s, m) in enumerate(zip(axes, scales, sizes)):
        if s != 1.0 or m != x.shape[a] or coord == "tf_crop_and_resize":
            y = _resize_axis(ctx, y, a, s, m, roi_of(k, a), coord, nearest_mode)
    return _cast_like(y, x.dtype)


def _cast_like(y, dtype):
    if jnp.issubdtype(dtype, jnp.integer) and not jnp.issubdtype(y.dtype, jnp.integer):
        info = jnp.iinfo(dtype)
        y = jnp.clip(jnp.round(y), info.min, info.max)
    return y.astype(dtype)


@register("Resize", since=10)
def _resize_10(ctx, x, scales):
    return _resize(ctx, x, None, scales, None, "asymmetric", "simple")


@register("Resize", since=11)
def _resize_11(ctx, x, roi=None, scales=None, sizes=None):
    coord = ctx.attr("coordinate_transformation_mode", "half_pixel")
    nearest = ctx.attr("nearest_mode", "round_prefer_floor")
    return _resize(ctx, x, roi, scales, sizes, coord, nearest)


@register("Upsample", since=7)
def _upsample_attr(ctx, x):
    return _resize(ctx, x, None, np.asarray(ctx.attr("scales")), None, "asymmetric", "floor")


@register("Upsample", since=9)
def _upsample(ctx, x, scales):
    return _resize(ctx, x, None, scales, None, "asymmetric", "floor")
