"""Forward rules: sampling at computed positions (GridSample, AffineGrid, RoiAlign)."""

from __future__ import annotations

import itertools
import math

import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.core import Tracer

from projc.backends.jax.ops._registry import register


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
