"""Window geometry shared by the convolution and pooling rules: strides, dilations, pads."""

from __future__ import annotations

import math


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


def full_pads(n, pairs):
    """``pairs`` of (lo, hi) for the trailing axes, preceded by ``n`` unpadded leading axes."""
    return [(0, 0)] * n + list(pairs)


def spatial_axes(x):
    """The spatial axes of an (N, C, ...) tensor."""
    return tuple(range(2, x.ndim))
