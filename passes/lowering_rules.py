"""Per-op lowering rules: network IR node -> constraint groups (design.md, issue 4).

A rule is ``rule(lw, node, inputs) -> list of values`` (see :mod:`projc.passes.lowering_values`);
``lw`` is the :class:`~projc.passes.lower_to_constraints.Lowerer` that owns the program. Shape
ops return views (index maps) and create no constraint.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import onnx_ir as ir

from projc.index_map import Broadcast, Reshape, Transpose
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


def reshape_value(x, shape: tuple[int, ...]):
    """Reshape a Ref, a Const or an open sum (term by term, so it can still fuse)."""
    if isinstance(x, OpenSum):
        offset = np.asarray(x.offset)
        offset = offset.reshape(shape) if offset.ndim else offset
        return OpenSum(tuple(view(t, Reshape(tuple(shape))) for t in x.terms), offset, x.origin, x.name)
    return view(x, Reshape(tuple(shape)))


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


def _sum(lw, node, a, b, sign_b, shape=None):
    shape = tuple(shape or lw.shape_of(node.outputs[0]))
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


@rule("Mean")
def _nary_mean(lw, node, inputs):
    """The sum of the inputs (one variable), then a fixed scaling by 1/n."""
    (total,) = _nary_sum(lw, node, inputs)
    if isinstance(total, Const):
        return [Const(total.full() / len(inputs))]
    shape = lw.shape_of(node.outputs[0])
    total = broadcast_to(lw.as_view(total, node), shape)
    coef = np.full((1,), 1.0 / len(inputs), np.float32)
    return [lw.linear(node, view(total, Reshape((*shape, 1))), coef)]


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


@rule("HardSigmoid")
def _hard_sigmoid(lw, node, inputs):
    """clip(alpha x + beta, 0, 1): a fixed affine map, then a clip."""
    x = lw.as_view(inputs[0], node)
    alpha, beta = float(attr(node, "alpha", 0.2)), float(attr(node, "beta", 0.5))
    affine = lw.linear(node, view(x, Reshape((*x.shape, 1))), np.full((1,), alpha, np.float32),
                       np.asarray(beta, np.float32), name=f"{node.outputs[0].name}.affine")
    return [lw.sum_act(affine, "clip", {"lo": 0.0, "hi": 1.0}, node)]


# --- bilinear: dense layers and convolutions ---------------------------------------------------

def _dense(lw, node, a, b, pre: bool = False):
    """``a @ b`` for a (..., S, N) and b (..., N, T), leading axes broadcast as numpy does: a
    dot group of shape (..., S, T), or linear when one side is fixed (data or a constant)."""
    if len(a.shape) < 2 or len(b.shape) < 2:
        raise Unsupported(f"MatMul of shapes {a.shape} x {b.shape} (1-D operands are not lowered)")
    lead = tuple(np.broadcast_shapes(a.shape[:-2], b.shape[:-2]))
    (s, n), t = a.shape[-2:], b.shape[-1]
    a, b = broadcast_to(a, (*lead, s, n)), broadcast_to(b, (*lead, n, t))
    r = len(lead)
    swap = (*range(r), r + 1, r)
    a_op = view(a, Broadcast(r + 1, t))  # (..., S, T, N)
    b_op = view(b, Transpose(swap), Broadcast(r, s))  # (..., S, T, N)
    return lw.bilinear(node, a_op, b_op, (*lead, s, t), pre=pre)


@rule("MatMul")
def _matmul(lw, node, inputs):
    a, b = (lw.as_view(x, node) for x in inputs)
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
