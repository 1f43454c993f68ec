"""Forward rules: convolutions (Conv, ConvTranspose, DeformConv, CausalConvWithState) and Col2Im."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from projc.backends.jax.ops._registry import register
from projc.backends.jax.ops._window import window_params


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
