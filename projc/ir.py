"""The network IR: an onnx-ir model with static shapes and parameter/constant roles.

This module adds what projc needs on top of onnx-ir: the role of each initializer, a compact
readable text form (golden tests, ``projc inspect --ir``) and a verifier.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from projc.errors import ProjcError

ROLE_KEY = "projc.role"
PARAM, CONST = "param", "const"

# (op, input index) slots that take configuration rather than learnable data: a floating
# initializer feeding only these stays a constant.
CONFIG_INPUTS = {
    ("BatchNormalization", 3), ("BatchNormalization", 4),
    ("Clip", 1), ("Clip", 2),
    ("Resize", 1), ("Resize", 2), ("Upsample", 1),
    ("Pad", 2), ("ConstantOfShape", 0),
    ("QuantizeLinear", 1), ("QuantizeLinear", 2), ("DequantizeLinear", 1), ("DequantizeLinear", 2),
    ("Pow", 1), ("Dropout", 1), ("Range", 0), ("Range", 1), ("Range", 2),
}


def _is_float(dtype: ir.DataType | None) -> bool:
    return dtype is not None and dtype.is_floating_point()


_LAYER_OPS = {"Gemm", "MatMul", "Conv", "ConvTranspose", "LSTM", "GRU", "RNN"}
# Weight slots of layer ops: a floating tensor here is a weight however it was made (the onnx
# test zoo's "light" models build theirs with ConstantOfShape, which fold-constants folds).
_WEIGHT_SLOTS = {("Gemm", 1), ("MatMul", 1), ("Conv", 1), ("ConvTranspose", 1),
                 ("LSTM", 1), ("LSTM", 2), ("GRU", 1), ("GRU", 2), ("RNN", 1), ("RNN", 2)}


def _learnable_use(use) -> bool:
    return (use.node.op_type, use.idx) not in CONFIG_INPUTS


def assign_roles(graph: ir.Graph, keep_existing: bool = False) -> None:
    """Mark each initializer as a trainable parameter or a constant (in ``value.meta``).

    Floating tensors feeding a data slot are parameters; scalars (scale factors, epsilons)
    are constants unless a layer op (Gemm, Conv, ...) consumes them as weight or bias.
    With ``keep_existing``, initializers that already have a role keep it (constants made by
    ``fold-constants`` stay constants even when they look like weights).
    """
    for value in graph.initializers.values():
        weight = _is_float(value.dtype) and any((u.node.op_type, u.idx) in _WEIGHT_SLOTS for u in value.uses())
        if keep_existing and ROLE_KEY in value.meta and not weight:
            continue
        uses = [u for u in value.uses() if _learnable_use(u)]
        learnable = _is_float(value.dtype) and value.const_value is not None and bool(uses)
        if learnable and value.const_value.size <= 1:
            learnable = any(u.node.op_type in _LAYER_OPS for u in uses)
        value.meta[ROLE_KEY] = PARAM if learnable else CONST


def is_parameter(value: ir.Value) -> bool:
    """Whether an initializer is trainable (see :func:`assign_roles`)."""
    return value.meta.get(ROLE_KEY) == PARAM


def model_opset(model: ir.Model, domain: str = "") -> int:
    """The model's opset version for ``domain`` (the default domain when empty)."""
    opsets = model.opset_imports
    return opsets.get(domain, opsets.get("ai.onnx", 0)) if domain in ("", "ai.onnx") else opsets.get(domain, 1)


def dtype_name(dtype: ir.DataType | None) -> str:
    """NumPy-style name of an ONNX dtype (float32, int64, bfloat16, string, ...)."""
    if dtype is None:
        return "?"
    if dtype == ir.DataType.STRING:
        return "string"
    try:
        return np.dtype(dtype.numpy()).name
    except Exception:  # dtypes NumPy cannot name (float4, int2, ...)
        return dtype.name.lower()


def format_type(value: ir.Value) -> str:
    dtype = dtype_name(value.dtype)
    if value.shape is None:
        return f"{dtype}[?]"
    dims = ",".join(str(d) if isinstance(d, int) else str(d.value or "?") for d in value.shape)
    return f"{dtype}[{dims}]"


def _format_attr(attr: ir.Attr) -> str:
    v = attr.value
    if attr.type == ir.AttributeType.GRAPH:
        return f"<graph {v.name}>"
    if attr.type == ir.AttributeType.TENSOR:
        return f"<tensor {dtype_name(v.dtype)}{list(v.shape)}>"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(f"{x:g}" if isinstance(x, float) else str(x) for x in v) + "]"
    return repr(v) if isinstance(v, str) else str(v)


def _preview(value: ir.Value) -> str:
    arr = value.const_value.numpy()
    if arr.size <= 8:
        return " = " + np.array2string(arr.reshape(-1), separator=",").replace("\n", "")
    return ""


def format_graph(graph: ir.Graph, indent: str = "  ") -> list[str]:
    lines = []
    inits = graph.initializers
    for v in graph.inputs:
        if v.name not in inits:
            lines.append(f"{indent}input  %{v.name}: {format_type(v)}")
    for name, v in inits.items():
        role = v.meta.get(ROLE_KEY, CONST)
        lines.append(f"{indent}{role:<6} %{name}: {format_type(v)}{_preview(v) if role == CONST else ''}")
    for node in graph:
        outs = ", ".join(f"%{o.name}: {format_type(o)}" for o in node.outputs)
        ins = ", ".join("%" + i.name if i is not None else "_" for i in node.inputs)
        attrs = ", ".join(f"{k}={_format_attr(a)}" for k, a in node.attributes.items())
        op = f"{node.domain}::{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type
        name = f"  # {node.name}" if node.name else ""
        lines.append(f"{indent}{outs} = {op}({ins}){' {' + attrs + '}' if attrs else ''}{name}")
        for a in node.attributes.values():
            if a.type == ir.AttributeType.GRAPH:
                lines.append(f"{indent}  subgraph {a.name}:")
                lines.extend(format_graph(a.value, indent + "    "))
    lines.append(f"{indent}return " + ", ".join("%" + v.name for v in graph.outputs))
    return lines


def format_model(model: ir.Model) -> str:
    """The readable text form of a network IR model."""
    opsets = ", ".join(f"{d or 'ai.onnx'}={v}" for d, v in sorted(model.opset_imports.items()))
    head = f"model {model.graph.name or '<unnamed>'} (opsets {opsets})"
    return "\n".join([head, *format_graph(model.graph)]) + "\n"


def model_summary(model: ir.Model) -> dict:
    """Inputs, outputs and parameters with their types, parameter count, constants, op counts."""
    graph = model.graph
    params = [v for v in graph.initializers.values() if v.meta.get(ROLE_KEY) == PARAM]
    ops: dict[str, int] = {}
    for node in graph:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    return {
        "inputs": {v.name: format_type(v) for v in graph.inputs if v.name not in graph.initializers},
        "outputs": {v.name: format_type(v) for v in graph.outputs},
        "parameters": {v.name: format_type(v) for v in params},
        "parameter_count": int(sum(v.const_value.size for v in params)),
        "constants": sum(v.meta.get(ROLE_KEY) == CONST for v in graph.initializers.values()),
        "ops": dict(sorted(ops.items())),
    }


class VerificationError(ProjcError):
    """The IR is malformed; the message shows the IR around the fault."""


def verify(model: ir.Model, require_static: bool = True) -> None:
    """Check SSA order, defined inputs and (optionally) static shapes; raise on the first fault."""
    graph = model.graph
    defined = set(graph.inputs) | set(graph.initializers.values())
    lines = format_graph(graph)
    for i, node in enumerate(graph):
        for v in node.inputs:
            if v is not None and v not in defined and v.graph is graph:
                _fail(lines, node, f"input %{v.name} is used before it is defined")
        for o in node.outputs:
            if require_static and o.name and o.shape is not None and not all(
                isinstance(d, int) for d in o.shape
            ):
                _fail(lines, node, f"output %{o.name} has a non-static shape {format_type(o)}")
            defined.add(o)
    for v in graph.outputs:
        if v not in defined:
            raise VerificationError(f"graph output %{v.name} is never defined")


def _fail(lines: list[str], node: ir.Node, msg: str) -> None:
    marker = next((i for i, l in enumerate(lines) if f"# {node.name}" in l or f"{node.op_type}(" in l), 0)
    window = lines[max(0, marker - 5): marker + 6]
    text = "\n".join(("-> " if l is lines[marker] else "   ") + l for l in window)
    raise VerificationError(f"IR verification failed at node {node.name!r} ({node.op_type}): {msg}\n{text}")
