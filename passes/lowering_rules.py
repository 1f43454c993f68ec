"""Per-op lowering rules: network IR node -> constraint groups (design.md, issue 4).

A rule is ``rule(lw, node, inputs) -> list of values`` (see :mod:`projc.passes.lowering_values`);
``lw`` is the :class:`~projc.passes.lower_to_constraints.Lowerer` that owns the program. Shape
ops return views (index maps) and create no constraint.
"""

from __future__ import annotations

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
    """Apply shape steps to a Ref (composing its map) or a Const (eagerly)."""
    if isinstance(x, Const):
        return Const(IndexMap(x.shape, tuple(steps)).apply(x.value))
    return Ref(x.var, x.imap.then(*steps))


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
        return (), sign * np.broadcast_to(x.value, out_shape)
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
        c = Const(beta * c.value)
    elif beta != 1.0:
        raise Unsupported("Gemm with beta != 1 on a learnable bias")
    return [_sum(lw, node, y, c, 1.0)]


def conv_patch_indices(in_hw, kernel, strides, pads, dilations, channels):
    """Flat indices into (C, H, W) for each (oh, ow, c*kh*kw) patch entry; -1 for padding."""
    (h, w), (kh, kw), (sh, sw), (dh, dw) = in_hw, kernel, strides, dilations
    pt, pl, pb, pr = pads
    oh = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
    ow = (w + pl + pr - dw * (kw - 1) - 1) // sw + 1
    rows = np.arange(oh)[:, None, None, None, None] * sh - pt + np.arange(kh)[None, None, None, :, None] * dh
    cols = np.arange(ow)[None, :, None, None, None] * sw - pl + np.arange(kw)[None, None, None, None, :] * dw
    chan = np.arange(channels)[None, None, :, None, None]
    rows, cols, chan = np.broadcast_arrays(rows, cols, chan)
    valid = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
    flat = np.where(valid, chan * h * w + rows * w + cols, -1)
    return flat.reshape(oh, ow, channels * kh * kw)


def _windows(node, x_shape, kernel):
    nd = len(kernel)
    strides = tuple(attr(node, "strides", None) or [1] * nd)
    dilations = tuple(attr(node, "dilations", None) or [1] * nd)
    pads = tuple(attr(node, "pads", None) or [0] * (2 * nd))
    auto_pad = attr(node, "auto_pad", "NOTSET")
    if nd != 2 or auto_pad not in ("NOTSET", "VALID"):
        raise Unsupported(f"{nd}-D windows or auto_pad={auto_pad} (2-D with explicit pads so far)")
    return conv_patch_indices(x_shape[2:], kernel, strides, (pads[0], pads[1], pads[2], pads[3]), dilations, x_shape[1])


@rule("Conv")
def _conv(lw, node, inputs):
    x, w = (lw.as_view(v, node) for v in inputs[:2])
    if attr(node, "group", 1) != 1:
        raise Unsupported("grouped convolution (group > 1)")
    bsz, c = x.shape[:2]
    oc, _, kh, kw = w.shape
    idx = _windows(node, x.shape, (kh, kw))  # (OH, OW, K)
    oh, ow, k = idx.shape
    x_op = view(x, Reshape((bsz, c * x.shape[2] * x.shape[3])), Take(1, idx), Broadcast(1, oc))
    w_op = view(w, Reshape((oc, k)), Broadcast(1, oh), Broadcast(2, ow), Broadcast(0, bsz))
    has_bias = len(inputs) > 2 and inputs[2] is not None
    y = lw.bilinear(node, x_op, w_op, (bsz, oc, oh, ow), pre=has_bias)
    if not has_bias:
        return [y]
    return [_sum(lw, node, y, view(inputs[2], Reshape((oc, 1, 1))), 1.0)]


# --- pooling and reductions --------------------------------------------------------------------

def _pool_operand(lw, node, x, kernel):
    x = lw.as_view(x, node)
    bsz, c, h, w = x.shape
    idx = _windows(node, (1, 1, h, w), kernel)
    return view(x, Reshape((bsz, c, h * w)), Take(2, idx)), idx


@rule("MaxPool")
def _maxpool(lw, node, inputs):
    if len(node.outputs) > 1 and node.outputs[1].uses():
        raise Unsupported("MaxPool's Indices output")
    operand, idx = _pool_operand(lw, node, inputs[0], tuple(attr(node, "kernel_shape")))
    if (idx < 0).any():
        raise Unsupported("padded MaxPool (padding must read -inf, not a copy)")
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
    x = lw.as_view(inputs[0], node)
    scale, bias, mean, var = inputs[1:5]
    if not all(isinstance(v, Const) for v in (scale, bias, mean, var)):
        raise Unsupported("BatchNormalization with learnable scale/bias (fold it into the conv first)")
    s = scale.value / np.sqrt(var.value + attr(node, "epsilon", 1e-5))
    t = bias.value - mean.value * s
    tail = (1,) * (len(x.shape) - 2)
    y = lw.linear(node, view(x, Reshape((*x.shape, 1))), s.reshape(-1, *tail, 1).astype(np.float32),
                  t.reshape(-1, *tail).astype(np.float32))
    return [y]


@rule("Mul")
def _mul(lw, node, inputs):
    a, b = inputs
    shape = lw.shape_of(node.outputs[0])
    if isinstance(a, Const) and isinstance(b, Const):
        return [Const(a.value * b.value)]
    if isinstance(a, Const) or isinstance(b, Const):
        c, x = (a, b) if isinstance(a, Const) else (b, a)
        x = broadcast_to(lw.as_view(x, node), shape)
        return [lw.linear(node, view(x, Reshape((*shape, 1))), np.broadcast_to(c.value, shape)[..., None].astype(np.float32))]
    a, b = (broadcast_to(lw.as_view(v, node), shape) for v in (a, b))
    return [lw.emit("mul", shape, [("a", a), ("b", b)], {}, node)]
