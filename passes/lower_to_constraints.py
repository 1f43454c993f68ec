"""``lower-to-constraints``: network IR -> constraint IR (design.md, method.md section 1).

Walks the nodes the logits depend on, in order, applying one rule per op
(:mod:`projc.passes.lowering_rules`). A trailing classifier head (Softmax, LogSoftmax, ArgMax)
is stripped so the loss acts on the logits. Every op without a rule is reported at once, by
node name and op type, with the nearest supported alternative when there is one.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import onnx_ir as ir

from projc.constraints import Group, Program, Slot, Variable, VarKind, verify_program
from projc.errors import ProjcError, UnsupportedOpError
from projc.index_map import IndexMap, Reshape
from projc.ir import is_parameter, model_opset
from projc.passes.base import Pass, PassResult, register_pass
from projc.passes import lowering_recurrent, lowering_views, lowering_windows  # noqa: F401  (register rules)
from projc.passes.lowering_rules import ALTERNATIVES, RULES, Unsupported, view
from projc.passes.lowering_values import FAILED, Const, OpenSum, Ref

__all__ = ["LOSSES", "Lowerer", "LowerToConstraints", "RULES", "lower"]

HEAD_OPS = {"Softmax", "LogSoftmax", "ArgMax"}
NONNEGATIVE_ACTS = {"relu", "sigmoid", "softplus", "step"}
LOSSES = ("cross-entropy", "margin", "mse")


def _name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.:/-]", "_", text) or "v"


class Lowerer:
    """Builds a :class:`Program` from a network IR model; rules call back into it."""

    def __init__(self, model: ir.Model):
        graph = model.graph
        batch = graph.inputs[0].shape[0] if graph.inputs and graph.inputs[0].shape else 1
        self.prog = Program(graph.name or "model", int(batch))
        self.env: dict[ir.Value, object] = {}
        self._materialized: dict[tuple, Ref] = {}
        for v in graph.inputs:
            if v.name not in graph.initializers:
                self.env[v] = self._leaf(v, VarKind.DATA)
        for name, v in graph.initializers.items():
            self.env[v] = self._leaf(v, VarKind.PARAM) if is_parameter(v) else Const(v.const_value.numpy())

    def _leaf(self, v: ir.Value, kind: VarKind) -> Ref:
        shape = self.shape_of(v)
        self.prog.add_variable(Variable(_name(v.name), shape, kind))
        return Ref(_name(v.name), IndexMap(shape))

    @staticmethod
    def shape_of(v: ir.Value) -> tuple[int, ...]:
        if v.shape is None or not all(isinstance(d, int) for d in v.shape):
            raise ProjcError(f"value {v.name!r} has no static shape; run shape inference first")
        return tuple(int(d) for d in v.shape)

    # -- helpers for rules ---------------------------------------------------------------------
    def var_name(self, stem: str) -> str:
        stem = _name(stem)
        return stem if stem not in self.prog.variables else self.prog.fresh(stem + ".", self.prog.variables)

    def as_view(self, x, node: ir.Node):
        """A Ref or Const; an open sum gets its own variable first."""
        if isinstance(x, OpenSum):
            key = (x.terms, x.name)
            if key not in self._materialized:  # one variable per sum, however many readers
                ref = self.sum_act(x, "identity", {}, node, name=x.name or None)
                self._materialized[key] = ref
                if x.name:
                    self.prog.views[x.name] = (ref.var, ref.imap)
            return self._materialized[key]
        return x

    def is_nonnegative(self, x) -> bool:
        """Whether every entry of ``x`` is >= 0 by construction (the output of a ReLU, ...)."""
        var = self.prog.variables[x.var]
        group = self.prog.groups.get(var.producer) if var.producer else None
        if group is None or group.kind != "sum_act":
            return False
        act = group.attrs["act"]
        return act in NONNEGATIVE_ACTS or (act == "clip" and group.attrs["lo"] >= 0)

    def is_fixed(self, x) -> bool:
        return isinstance(x, Const) or self.prog.variables[x.var].kind in (VarKind.DATA, VarKind.LABEL)

    def declare(self, name: str, shape) -> Ref:
        """A hidden variable whose producer comes later (a recurrent state read before the
        group that produces it is emitted)."""
        out = self.var_name(name)
        self.prog.add_variable(Variable(out, tuple(int(d) for d in shape), VarKind.HIDDEN))
        return Ref(out, IndexMap(tuple(int(d) for d in shape)))

    def emit(self, kind, shape, slots, attrs, node, name=None, copies=None, origin=None, out=None) -> Ref:
        """Add a group producing a new variable (or the declared ``out``); return a Ref to it."""
        shape = tuple(int(d) for d in shape)
        if out is None:
            out = self.declare(name or node.outputs[0].name, shape).var
        made = [
            Slot(role, ref.var, ref.imap, copy=True if copies is None else copies[i])
            for i, (role, ref) in enumerate(slots)
        ]
        gname = self.prog.fresh(f"{kind}_", self.prog.groups)
        origin = origin or (node.name or node.op_type,)
        self.prog.add_group(Group(gname, kind, shape, made, out, attrs, tuple(origin)))
        return Ref(out, IndexMap(shape))

    def sum_act(self, x, act, params, node, name=None, out=None) -> Ref:
        if isinstance(x, Const):
            raise Unsupported("an activation of a constant (fold constants first)")
        if isinstance(x, OpenSum):
            terms, offset = x.terms, x.offset
            origin = tuple(dict.fromkeys((*x.origin, node.name) if act != "identity" else x.origin))
        else:
            terms, offset, origin = (x,), np.zeros(()), None
        attrs = {"act": act, **params}
        if np.any(offset != 0):
            attrs["d"] = np.asarray(offset, np.float32)
        slots = [(f"x{i}", t) for i, t in enumerate(terms)]
        return self.emit("sum_act", terms[0].shape, slots, attrs, node, name=name, origin=origin, out=out)

    def linear(self, node, x_op: Ref, coef, offset=None, name=None) -> Ref:
        attrs = {"c": np.asarray(coef, np.float32)}
        if offset is not None:
            attrs["d"] = np.asarray(offset, np.float32)
        return self.emit("linear", x_op.shape[:-1], [("x", x_op)], attrs, node, name=name)

    def bilinear(self, node, a_op, b_op, shape, pre: bool = False) -> Ref:
        """``sum(a * b, -1)``: a dot group, or linear in one operand when the other is fixed."""
        name = f"{node.outputs[0].name}.pre" if pre else None
        fixed_a, fixed_b = self.is_fixed(a_op), self.is_fixed(b_op)
        if fixed_a and fixed_b:
            raise Unsupported("a product of two fixed tensors (fold constants first)")
        if fixed_a or fixed_b:
            x, c = (b_op, a_op) if fixed_a else (a_op, b_op)
            if isinstance(c, Const):
                return self.linear(node, x, c.value, name=name)
            return self.emit("linear", shape, [("x", x), ("c", c)], {}, node, name=name, copies=[True, False])
        return self.emit("dot", shape, [("a", a_op), ("b", b_op)], {}, node, name=name)


def _logits_value(graph: ir.Graph, logits: str | None) -> ir.Value:
    if logits:
        for node in graph:
            for out in node.outputs:
                if out.name == logits:
                    return out
        raise ProjcError(f"--logits {logits!r}: no value of that name in the model")
    # the first floating output (skl2onnx puts the integer label first), its head stripped
    floats = [v for v in graph.outputs if v.dtype is not None and v.dtype.is_floating_point()]
    value = (floats or list(graph.outputs))[0]
    while value.producer() is not None and value.producer().op_type in HEAD_OPS:
        value = value.producer().inputs[0]
    return value


def _ancestors(value: ir.Value) -> list[ir.Node]:
    seen, stack = set(), [value]
    while stack:
        node = stack.pop().producer()
        if node is not None and node not in seen:
            seen.add(node)
            stack.extend(v for v in node.inputs if v is not None)
    return [n for n in value.graph if n in seen]


def lower(model: ir.Model, *, loss: str = "cross-entropy", logits: str | None = None) -> Program:
    """The constraint program of ``model`` with ``loss`` on its logits."""
    if loss not in LOSSES:
        raise ProjcError(f"--loss {loss!r}: expected one of {', '.join(LOSSES)}")
    graph = model.graph
    target = _logits_value(graph, logits)
    nodes = _ancestors(target)
    missing = [n for n in nodes if n.op_type not in RULES]
    if missing:
        raise UnsupportedOpError(
            f"model {graph.name!r} cannot be lowered to constraints",
            [(n.name, n.op_type + _hint(n.op_type), n.domain, model_opset(model, n.domain)) for n in missing],
        )
    lw = Lowerer(model)
    problems = []
    for node in nodes:
        inputs = [None if v is None else lw.env[v] for v in node.inputs]
        if any(x is FAILED for x in inputs):
            results = [FAILED] * len(node.outputs)  # downstream of a reported node: skip quietly
        else:
            try:
                results = RULES[node.op_type](lw, node, inputs)
            except Unsupported as exc:
                problems.append(f"  {node.name or '<unnamed>'}: {node.op_type}: {exc}")
                results = [FAILED] * len(node.outputs)  # keep going, to report every problem at once
        for out, res in zip(node.outputs, results):
            if isinstance(res, OpenSum):
                res = dataclasses.replace(res, name=out.name)
                if len(out.uses()) > 1:  # fuse a sum into its activation only when it is the sole reader
                    res = lw.as_view(res, node)
            lw.env[out] = res
            if isinstance(res, Ref):
                lw.prog.views[out.name] = (res.var, res.imap)
    if problems:
        raise ProjcError("cannot lower these nodes to constraints:\n" + "\n".join(problems))
    _attach_loss(lw, lw.as_view(lw.env[target], target.producer()), target, loss)
    verify_program(lw.prog)
    return lw.prog


def _hint(op: str) -> str:
    alt = ALTERNATIVES.get(op)
    return f" (no lowering rule; nearest supported: {alt})" if alt else " (no lowering rule)"


def _attach_loss(lw: Lowerer, x, value: ir.Value, loss: str) -> None:
    if not isinstance(x, Const) and len(x.shape) > 2 and all(d == 1 for d in x.shape[2:]):
        x = view(x, Reshape(tuple(x.shape[:2])))  # a conv classifier's [batch, classes, 1, 1]
    if isinstance(x, Const) or len(x.shape) != 2:
        raise ProjcError(f"logits {value.name!r} must be a [batch, classes] tensor computed from the input")
    bsz, classes = x.shape
    label = lw.var_name("labels")
    lw.prog.add_variable(Variable(label, (bsz, classes), VarKind.LABEL))
    lw.prog.add_group(Group(
        "loss", "loss", (bsz,),
        [Slot("v", x.var, x.imap), Slot("y", label, IndexMap((bsz, classes)), copy=False)],
        None, {"loss": loss}, ("loss",),
    ))


@register_pass
@dataclasses.dataclass(frozen=True)
class LowerToConstraints(Pass):
    """Network IR -> constraint program (a :class:`projc.constraints.Program`)."""

    name = "lower-to-constraints"
    loss: str = "cross-entropy"
    logits: str | None = None

    def run(self, model: ir.Model) -> PassResult:
        return PassResult(lower(model, loss=self.loss, logits=self.logits), True)
