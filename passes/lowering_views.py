"""Lowering rules for shape ops that are index maps (no constraint): slices, splits, pads,
constant gathers, casts between float types. Reshape-like ops live in ``lowering_rules``."""

from __future__ import annotations

import numpy as np

from projc.index_map import Take
from projc.passes.lowering_rules import Unsupported, attr, rule, view
from projc.passes.lowering_values import Const

def _const_ints(x, what: str) -> list[int]:
    if x is None:
        return []
    if not isinstance(x, Const):
        raise Unsupported(f"{what} computed at run time (must be a constant)")
    return [int(v) for v in np.asarray(x.full()).reshape(-1)]


def _take_axes(x, picks: dict[int, np.ndarray]):
    for axis, idx in sorted(picks.items()):
        x = view(x, Take(axis, np.asarray(idx, np.int64)))
    return x


@rule("Slice")
def _slice(lw, node, inputs):
    x = lw.as_view(inputs[0], node)
    rank = len(x.shape)
    if len(inputs) > 1:  # opset >= 10: starts, ends, axes, steps are inputs
        starts, ends = _const_ints(inputs[1], "Slice starts"), _const_ints(inputs[2], "Slice ends")
        axes = _const_ints(inputs[3], "Slice axes") if len(inputs) > 3 and inputs[3] is not None else list(range(len(starts)))
        steps = _const_ints(inputs[4], "Slice steps") if len(inputs) > 4 and inputs[4] is not None else [1] * len(starts)
    else:
        starts, ends = list(attr(node, "starts")), list(attr(node, "ends"))
        axes, steps = list(attr(node, "axes", None) or range(len(starts))), [1] * len(starts)
    picks = {}
    for s, e, a, st in zip(starts, ends, axes, steps):
        a %= rank
        picks[a] = np.arange(x.shape[a])[slice(s, e, st)]
    return [_take_axes(x, picks)]


@rule("Split")
def _split(lw, node, inputs):
    x = lw.as_view(inputs[0], node)
    axis = attr(node, "axis", 0) % len(x.shape)
    sizes = [lw.shape_of(o)[axis] for o in node.outputs]
    bounds = np.cumsum([0, *sizes])
    return [_take_axes(x, {axis: np.arange(a, b)}) for a, b in zip(bounds[:-1], bounds[1:])]


@rule("Pad")
def _pad(lw, node, inputs):
    x = lw.as_view(inputs[0], node)
    if attr(node, "mode", "constant") != "constant":
        raise Unsupported(f"Pad mode {attr(node, 'mode')!r} (constant zero padding only)")
    pads = _const_ints(inputs[1], "Pad pads") if len(inputs) > 1 else list(attr(node, "pads"))
    value = inputs[2] if len(inputs) > 2 else None
    if value is not None and np.any(np.asarray(value.full() if isinstance(value, Const) else 1) != 0):
        raise Unsupported("padding with a non-zero value")
    rank = len(x.shape)
    axes = _const_ints(inputs[3], "Pad axes") if len(inputs) > 3 and inputs[3] is not None else list(range(rank))
    picks = {}
    for i, a in enumerate(axes):
        before, after = pads[i], pads[i + len(axes)]
        if before or after:
            n = x.shape[a % rank]
            idx = np.arange(-before, n + after)
            picks[a % rank] = np.where((idx >= 0) & (idx < n), idx, -1)  # -1 reads the constant zero
    return [_take_axes(x, picks)]


@rule("Gather")
def _gather(lw, node, inputs):
    x = lw.as_view(inputs[0], node)
    if not isinstance(inputs[1], Const):
        raise Unsupported("Gather with run-time indices (an embedding lookup needs run-time index maps)")
    axis = attr(node, "axis", 0) % len(x.shape)
    idx = np.asarray(inputs[1].full(), np.int64)
    return [view(x, Take(axis, np.where(idx < 0, idx + x.shape[axis], idx)))]


@rule("Cast", "CastLike")
def _cast(lw, node, inputs):
    out = node.outputs[0].dtype
    if isinstance(inputs[0], Const):
        return [Const(inputs[0].full().astype(out.numpy()))]
    if out is None or not out.is_floating_point():
        raise Unsupported(f"a cast of a variable to {out} (only float-to-float casts are no-ops here)")
    return [inputs[0]]
