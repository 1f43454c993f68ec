"""Lowering rules for windowed ops: convolutions (patch extraction + dot), pools, reductions.

A window is read through a ``Take`` of flat spatial indices (-1 for padding), so a convolution
is a dot group between patches of its input and its kernel, and a pool is a ``max`` or ``linear``
group over each window.
"""

from __future__ import annotations

import functools

import numpy as np

from projc.index_map import Broadcast, Reshape, Take, Transpose
from projc.passes.lowering_rules import Unsupported, _sum, attr, reshape_value, rule, view

@functools.lru_cache(maxsize=256)
def window_indices(in_hw, kernel, strides, pads, dilations) -> np.ndarray:
    """Flat indices into (H, W) for each (oh, ow, kh*kw) window entry; -1 for padding."""
    (h, w), (kh, kw), (sh, sw), (dh, dw) = in_hw, kernel, strides, dilations
    pt, pl, pb, pr = pads
    oh = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
    ow = (w + pl + pr - dw * (kw - 1) - 1) // sw + 1
    rows = np.arange(oh)[:, None, None, None] * sh - pt + np.arange(kh)[None, None, :, None] * dh
    cols = np.arange(ow)[None, :, None, None] * sw - pl + np.arange(kw)[None, None, None, :] * dw
    rows, cols = np.broadcast_arrays(rows, cols)
    valid = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
    flat = np.where(valid, rows * w + cols, -1).reshape(oh, ow, kh * kw)
    flat.setflags(write=False)  # shared through the cache
    return flat


def _windows(node, x_shape, kernel):
    """(OH, OW, kh*kw) window indices of a conv/pool node over an (N, C, H, W) input; a 1-D
    node's attributes are lifted to 2-D (its input is viewed as (N, C, 1, L))."""
    nd = len(kernel)
    strides = list(attr(node, "strides", None) or [1] * nd)
    dilations = list(attr(node, "dilations", None) or [1] * nd)
    pads = list(attr(node, "pads", None) or [0] * (2 * nd))
    auto_pad = attr(node, "auto_pad", "NOTSET")
    if nd not in (1, 2) or auto_pad not in ("NOTSET", "VALID"):
        raise Unsupported(f"{nd}-D windows or auto_pad={auto_pad} (1-D and 2-D with explicit pads so far)")
    if nd == 1:
        kernel, strides, dilations, pads = (1, *kernel), [1, *strides], [1, *dilations], [0, pads[0], 0, pads[1]]
    return window_indices(tuple(x_shape[2:]), tuple(kernel), tuple(strides), tuple(pads), tuple(dilations))


def _as_2d(x):
    """View an (N, C, L) tensor as (N, C, 1, L)."""
    return view(x, Reshape((x.shape[0], x.shape[1], 1, x.shape[2]))) if len(x.shape) == 3 else x


def _patches(x, idx):
    """x (N, C, H, W) -> (N, OH, OW, C*kh*kw) patches; a 1x1 stride-1 window is a transpose."""
    bsz, c, h, w = x.shape
    oh, ow, kk = idx.shape
    if kk == 1 and idx.shape[:2] == (h, w) and (idx.reshape(-1) == np.arange(h * w)).all():
        return view(x, Transpose((0, 2, 3, 1)))
    return view(x, Reshape((bsz, c, h * w)), Take(2, idx), Transpose((0, 2, 3, 1, 4)), Reshape((bsz, oh, ow, c * kk)))


@rule("Conv")
def _conv(lw, node, inputs):
    x, w = (lw.as_view(v, node) for v in inputs[:2])
    one_d = len(x.shape) == 3
    x, w = _as_2d(x), _as_2d(w)
    bsz, c = x.shape[:2]
    oc, cg, kh, kw = w.shape
    groups = int(attr(node, "group", 1))
    idx = _windows(node, x.shape, (kw,) if one_d else (kh, kw))  # (OH, OW, kh*kw)
    oh, ow, kk = idx.shape
    patches = _patches(x, idx)  # (N, OH, OW, C*K), ordered (c, kh, kw) as the kernel's trailing axes
    if groups == 1:
        x_op = view(patches, Broadcast(1, oc))  # (N, OC, OH, OW, C*K)
    else:
        # output channel o reads the patch entries of its group's input channels only
        group_of = np.arange(oc) // (oc // groups)
        picks = group_of[:, None] * cg * kk + np.arange(cg * kk)[None, :]  # (OC, Cg*K)
        x_op = view(patches, Take(3, picks), Transpose((0, 3, 1, 2, 4)))
    w_op = view(w, Reshape((oc, cg * kk)), Broadcast(1, oh), Broadcast(2, ow), Broadcast(0, bsz))
    has_bias = len(inputs) > 2 and inputs[2] is not None
    y = lw.bilinear(node, x_op, w_op, (bsz, oc, oh, ow), pre=has_bias)
    if has_bias:
        y = _sum(lw, node, y, view(inputs[2], Reshape((oc, 1, 1))), 1.0, shape=(bsz, oc, oh, ow))
    return [reshape_value(y, (bsz, oc, ow)) if one_d else y]


def _pool_operand(lw, node, x, kernel):
    x = lw.as_view(x, node)
    bsz, c, h, w = x.shape
    idx = _windows(node, x.shape, kernel)
    return view(x, Reshape((bsz, c, h * w)), Take(2, idx)), idx


@rule("MaxPool")
def _maxpool(lw, node, inputs):
    if len(node.outputs) > 1 and node.outputs[1].uses():
        raise Unsupported("MaxPool's Indices output")
    operand, idx = _pool_operand(lw, node, inputs[0], tuple(attr(node, "kernel_shape")))
    if (idx < 0).any() and not lw.is_nonnegative(operand):
        # a zero read by the padding is harmless only when every real entry is >= 0
        raise Unsupported("padded MaxPool of a value that can be negative (padding must read -inf)")
    return [lw.emit("max", operand.shape[:-1], [("a", operand)], {}, node)]


@rule("GlobalMaxPool")
def _global_maxpool(lw, node, inputs):
    x = lw.as_view(inputs[0], node)
    bsz, c = x.shape[:2]
    y = lw.emit("max", (bsz, c), [("a", view(x, Reshape((bsz, c, int(np.prod(x.shape[2:]))))))], {}, node)
    return [view(y, Reshape(lw.shape_of(node.outputs[0])))]


@rule("AveragePool")
def _avgpool(lw, node, inputs):
    operand, idx = _pool_operand(lw, node, inputs[0], tuple(attr(node, "kernel_shape")))
    include_pad = attr(node, "count_include_pad", 0)
    counts = np.full(idx.shape[:-1], idx.shape[-1]) if include_pad else (idx >= 0).sum(-1)
    coef = np.where(idx >= 0, 1.0 / counts[..., None], 0.0).astype(np.float32)
    return [lw.linear(node, operand, coef)]


@rule("GlobalAveragePool")
def _global_avgpool(lw, node, inputs):
    x = lw.as_view(inputs[0], node)
    bsz, c = x.shape[:2]
    n = int(np.prod(x.shape[2:]))
    y = lw.linear(node, view(x, Reshape((bsz, c, n))), np.full((n,), 1.0 / n, np.float32))
    return [view(y, Reshape(lw.shape_of(node.outputs[0])))]




def _reduced_operand(lw, node, inputs):
    """The operand (kept..., R) of a reduction and the network output's shape."""
    x = lw.as_view(inputs[0], node)
    rank = len(x.shape)
    axes = attr(node, "axes", None)
    if axes is None and len(inputs) > 1 and inputs[1] is not None:
        from projc.passes.lowering_values import Const

        if not isinstance(inputs[1], Const):
            raise Unsupported("reduction axes computed at run time")
        axes = [int(a) for a in inputs[1].full().reshape(-1)]
    axes = sorted({a % rank for a in (axes if axes else range(rank))})
    kept = [a for a in range(rank) if a not in axes]
    if not kept or kept[0] != 0:
        raise Unsupported("a reduction over the batch axis (each sample needs its own constraints)")
    size = int(np.prod([x.shape[a] for a in axes]))
    operand = view(x, Transpose((*kept, *axes)), Reshape((*[x.shape[a] for a in kept], size)))
    return operand, size


@rule("ReduceMean", "ReduceSum")
def _reduce_linear(lw, node, inputs):
    operand, size = _reduced_operand(lw, node, inputs)
    coef = np.full((size,), 1.0 / size if node.op_type == "ReduceMean" else 1.0, np.float32)
    return [view(lw.linear(node, operand, coef), Reshape(lw.shape_of(node.outputs[0])))]


@rule("ReduceMax")
def _reduce_max(lw, node, inputs):
    operand, _ = _reduced_operand(lw, node, inputs)
    y = lw.emit("max", operand.shape[:-1], [("a", operand)], {}, node)
    return [view(y, Reshape(lw.shape_of(node.outputs[0])))]
