"""Per-op lowering rules: network IR node -> constraint groups (design.md, issue 4).

A rule is ``rule(lw, node, inputs) -> list of values`` (see :mod:`projc.passes.lowering_values`);
``lw`` is the :class:`~projc.passes.lower_to_constraints.Lowerer` that owns the program. Shape
ops return views (index maps) and create no constraint.
"""

from __future__ import annotations

import functools
from typing import Callable

import numpy as np
import onnx_ir as ir

from projc.index_map import Broadcast, IndexMap, Reshape, Take, Transpose
from projc.passes.lowering_values import Const, OpenSum, Ref

RULES: dict[str, Callable] = {}

# Ops with no rule yet, and what to use instead.
ALTERNATIVES = {
    "Elu": "LeakyRelu", "Selu": "LeakyRelu", "Gelu": "Relu", "Softsign": "Tanh", "HardSwish": "Relu",
    "Mish": "Softplus", "Swish": "Sigmoid", "ReduceSum": "ReduceMean", "Div": "Mul by a constant",
}


class Unsupported(Exception):
    """This node's attributes or operands are outside what the rule handles (with the reason)."""


def rule(*ops: str):
    def deco(fn):
        for op in ops:
            RULES[op] = fn
        return fn

    return deco


def attr(node: ir.Node, name: str, default=None):
    a = node.attributes.get(name)
    return default if a is None else a.value


# --- views -------------------------------------------------------------------------------------

def view(x, *steps):
    """Apply shape steps to a Ref (composing its map) or a Const (eagerly; broadcasts and
    transposes keep size-1 axes, so a big constant operand is never materialised)."""
    if not isinstance(x, Const):
        return Ref(x.var, x.imap.then(*steps))
    value, shape = x.value, x.shape
    for step in steps:
        if isinstance(step, Broadcast):
            value = np.expand_dims(value, step.axis)
        elif isinstance(step, Transpose):
            value = np.transpose(value, step.perm)
        else:
            value = step.apply(np, np.broadcast_to(value, shape))
        shape = tuple(step.out_shape(shape))
    return Const(value, shape)


def broadcast_to(x, shape: tuple[int, ...]):
    """NumPy broadcasting as index-map steps: drop size-1 axes, then insert copies."""
    shape = tuple(shape)
    if tuple(x.shape) == shape:
        return x
    src = (1,) * (len(shape) - len(x.shape)) + tuple(x.shape)
    kept = [i for i, d in enumerate(src) if d == shape[i]]
    y = view(x, Reshape(tuple(src[i] for i in kept)))
    for i, d in enumerate(shape):
        if i not in kept:
            y = view(y, Broadcast(i, d))
    return y


@rule("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def _reshape(lw, node, inputs):
    return [view(lw.as_view(inputs[0], node), Reshape(lw.shape_of(node.outputs[0])))]


@rule("Transpose")
def _transpose(lw, node, inputs):
    x = lw.as_view(inputs[0], node)
    perm = attr(node, "perm") or list(reversed(range(len(x.shape))))
    return [view(x, Transpose(tuple(perm)))]


@rule("Identity", "Dropout")
def _identity(lw, node, inputs):
    return [inputs[0]]


# --- affine ------------------------------------------------------------------------------------

def _terms(lw, x, out_shape, sign: float = 1.0):
    """(terms, offset) of ``sign * x`` broadcast to ``out_shape``."""
    if isinstance(x, Const):
        return (), sign * np.broadcast_to(x.value, out_shape)  # a compact constant broadcasts alike
    if sign != 1.0:
        raise Unsupported("subtracting a variable (only constants can be subtracted)")
    if isinstance(x, OpenSum):
        return tuple(broadcast_to(t, out_shape) for t in x.terms), np.broadcast_to(x.offset, out_shape)
    return (broadcast_to(x, out_shape),), np.zeros(())


def _sum(lw, node, a, b, sign_b):
    shape = lw.shape_of(node.outputs[0])
    ta, oa = _terms(lw, a, shape)
    tb, ob = _terms(lw, b, shape, sign_b)
    if not ta and not tb:
        return Const(np.asarray(oa + ob))
    offset = np.asarray(oa + ob, dtype=np.float32)
    offset = offset.reshape(-1)[0].reshape(()) if offset.size and np.all(offset == offset.reshape(-1)[0]) else offset
    return OpenSum(ta + tb, offset, (node.name,))


@rule("Add")
def _add(lw, node, inputs):
    return [_sum(lw, node, inputs[0], inputs[1], 1.0)]


@rule("Sum")
def _nary_sum(lw, node, inputs):
    total = inputs[0]
    for x in inputs[1:]:
        total = _sum(lw, node, total, x, 1.0)
    return [total]


@rule("Concat")
def _concat(lw, node, inputs):
    shape = lw.shape_of(node.outputs[0])
    axis = attr(node, "axis") % len(shape)
    parts = [lw.as_view(x, node) for x in inputs]
    if all(isinstance(p, Const) for p in parts):
        return [Const(np.concatenate([p.full() for p in parts], axis))]
    if any(isinstance(p, Const) for p in parts):
        raise Unsupported("concatenating a constant with a variable")
    slots = [(f"a{i}", p) for i, p in enumerate(parts)]
    return [lw.emit("concat", shape, slots, {"axis": axis}, node)]


@rule("Sub")
def _sub(lw, node, inputs):
    return [_sum(lw, node, inputs[0], inputs[1], -1.0)]


# --- activations: sum_act ----------------------------------------------------------------------

def _act_params(node, inputs):
    op = node.op_type
    if op == "LeakyRelu":
        return "leaky_relu", {"alpha": float(attr(node, "alpha", 0.01))}
    if op == "Clip":
        lo, hi = attr(node, "min", -np.inf), attr(node, "max", np.inf)
        if len(inputs) > 1 and isinstance(inputs[1], Const):
            lo = float(inputs[1].value)
        if len(inputs) > 2 and isinstance(inputs[2], Const):
            hi = float(inputs[2].value)
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise Unsupported("Clip needs finite min and max")
        return "clip", {"lo": float(lo), "hi": float(hi)}
    return {"Relu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh", "Softplus": "softplus", "Sign": "sign"}[op], {}


@rule("Relu", "LeakyRelu", "Clip", "Sigmoid", "Tanh", "Softplus", "Sign")
def _activation(lw, node, inputs):
    act, params = _act_params(node, inputs)
    return [lw.sum_act(inputs[0], act, params, node)]


# --- bilinear: dense layers and convolutions ---------------------------------------------------

def _dense(lw, node, a, b, pre: bool = False):
    """``a @ b`` for a (B, N) and b (N, M): a dot group, or linear when one side is fixed."""
    (bsz, n), m = a.shape, b.shape[1]
    a_op = view(a, Broadcast(1, m))  # (B, M, N)
    b_op = view(b, Transpose((1, 0)), Broadcast(0, bsz))  # (B, M, N)
    return lw.bilinear(node, a_op, b_op, (bsz, m), pre=pre)


@rule("MatMul")
def _matmul(lw, node, inputs):
    a, b = (lw.as_view(x, node) for x in inputs)
    if len(a.shape) != 2 or len(b.shape) != 2:
        raise Unsupported(f"MatMul of shapes {a.shape} x {b.shape} (only 2-D is lowered so far)")
    return [_dense(lw, node, a, b)]


@rule("Gemm")
def _gemm(lw, node, inputs):
    a, b = (lw.as_view(x, node) for x in inputs[:2])
    if attr(node, "transA", 0):
        a = view(a, Transpose((1, 0)))
    if attr(node, "transB", 0):
        b = view(b, Transpose((1, 0)))
    if attr(node, "alpha", 1.0) != 1.0:
        raise Unsupported("Gemm with alpha != 1")
    has_bias = len(inputs) > 2 and inputs[2] is not None
    y = _dense(lw, node, a, b, pre=has_bias)
    if not has_bias:
        return [y]
    c = inputs[2]
    beta = attr(node, "beta", 1.0)
    if isinstance(c, Const):
        c = Const(beta * c.value, c.logical_shape)
    elif beta != 1.0:
        raise Unsupported("Gemm with beta != 1 on a learnable bias")
    return [_sum(lw, node, y, c, 1.0)]


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
    """(OH, OW, kh*kw) window indices of a 2-D conv/pool node over an (N, C, H, W) input."""
    nd = len(kernel)
    strides = tuple(attr(node, "strides", None) or [1] * nd)
    dilations = tuple(attr(node, "dilations", None) or [1] * nd)
    pads = tuple(attr(node, "pads", None) or [0] * (2 * nd))
    auto_pad = attr(node, "auto_pad", "NOTSET")
    if nd != 2 or auto_pad not in ("NOTSET", "VALID"):
        raise Unsupported(f"{nd}-D windows or auto_pad={auto_pad} (2-D with explicit pads so far)")
    return window_indices(tuple(x_shape[2:]), tuple(kernel), strides, (pads[0], pads[1], pads[2], pads[3]), dilations)


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
    if attr(node, "group", 1) != 1:
        raise Unsupported("grouped convolution (group > 1)")
    bsz = x.shape[0]
    oc, _, kh, kw = w.shape
    idx = _windows(node, x.shape, (kh, kw))  # (OH, OW, kh*kw)
    oh, ow, _ = idx.shape
    x_op = view(_patches(x, idx), Broadcast(1, oc))  # (N, OC, OH, OW, K)
    # patches are ordered (c, kh, kw), as the weight's trailing axes
    w_op = view(w, Reshape((oc, int(np.prod(w.shape[1:])))), Broadcast(1, oh), Broadcast(2, ow), Broadcast(0, bsz))
    has_bias = len(inputs) > 2 and inputs[2] is not None
    y = lw.bilinear(node, x_op, w_op, (bsz, oc, oh, ow), pre=has_bias)
    if not has_bias:
        return [y]
    return [_sum(lw, node, y, view(inputs[2], Reshape((oc, 1, 1))), 1.0)]


# --- pooling and reductions --------------------------------------------------------------------

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


@rule("BatchNormalization")
def _batchnorm(lw, node, inputs):
    """Inference form: a fixed per-channel affine map, then the learnable scale and shift."""
    x = lw.as_view(inputs[0], node)
    scale, bias, mean, var = inputs[1:5]
    if not all(isinstance(v, Const) for v in (mean, var)):
        raise Unsupported("BatchNormalization whose running statistics are not constants")
    tail = (1,) * (len(x.shape) - 2)
    inv = 1.0 / np.sqrt(var.full() + attr(node, "epsilon", 1e-5))
    s, t = inv, -mean.full() * inv
    if isinstance(scale, Const):
        s, t = s * scale.full(), t * scale.full()
    if isinstance(bias, Const):
        t = t + bias.full()
    per_channel = lambda a: np.asarray(a, np.float32).reshape(-1, *tail)
    learnable = not (isinstance(scale, Const) and isinstance(bias, Const))
    y = lw.linear(node, view(x, Reshape((*x.shape, 1))), per_channel(s)[..., None], per_channel(t),
                  name=f"{node.outputs[0].name}.norm" if learnable else None)
    if not isinstance(scale, Const):
        gamma = broadcast_to(view(scale, Reshape((scale.shape[0], *tail))), x.shape)
        y = lw.emit("mul", x.shape, [("a", y), ("b", gamma)], {}, node,
                    name=f"{node.outputs[0].name}.scaled" if not isinstance(bias, Const) else None)
    if not isinstance(bias, Const):
        beta = broadcast_to(view(bias, Reshape((bias.shape[0], *tail))), x.shape)
        return [OpenSum((y, beta), np.zeros(()), (node.name,))]
    return [y]


@rule("ConstantOfShape")
def _constant_of_shape(lw, node, inputs):
    if not isinstance(inputs[0], Const):
        raise Unsupported("ConstantOfShape of a run-time shape")
    fill = attr(node, "value")
    scalar = fill.numpy().reshape(-1)[0] if fill is not None else np.float32(0)
    return [Const(np.asarray(scalar).reshape((1,) * inputs[0].full().size), tuple(int(d) for d in inputs[0].full()))]


@rule("Mul")
def _mul(lw, node, inputs):
    a, b = inputs
    shape = lw.shape_of(node.outputs[0])
    if isinstance(a, Const) and isinstance(b, Const):
        return [Const(a.full() * b.full())]
    if isinstance(a, Const) or isinstance(b, Const):
        c, x = (a, b) if isinstance(a, Const) else (b, a)
        x = broadcast_to(lw.as_view(x, node), shape)
        coef = np.asarray(c.value, np.float32)
        coef = coef.reshape((1,) * (len(shape) - coef.ndim) + coef.shape)[..., None]  # stays compact
        return [lw.linear(node, view(x, Reshape((*shape, 1))), coef)]
    a, b = (broadcast_to(lw.as_view(v, node), shape) for v in (a, b))
    return [lw.emit("mul", shape, [("a", a), ("b", b)], {}, node)]


# --- more index maps ---------------------------------------------------------------------------

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
