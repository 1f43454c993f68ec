"""``fold-constants``: replace nodes whose inputs are all constants by initializers.

Constants are initializers with the ``const`` role (or no role yet), ``Constant`` nodes and the
outputs of folded nodes. ``Shape`` and ``Size`` of a value with a static shape are constants
too, which resolves the Shape -> Gather -> Concat -> Reshape chains that exporters emit once
``bind_dims`` has made the input shapes static. Trainable parameters are never constants, so
nothing derived from their values is folded. Nodes are evaluated with ONNX's reference
evaluator on a one-node model (through :func:`projc.frontend.run_reference`), so every
standard op folds.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Callable

import numpy as np
import onnx_ir as ir

from projc.frontend import run_reference  # the frontend is the only module that uses onnx protos
from projc.ir import CONST, ROLE_KEY, assign_roles, is_parameter, model_opset
from projc.passes.base import Pass, PassResult, register_pass
from projc.passes.infer_shapes import InferShapes

# Ops whose outputs differ between runs: folding would freeze one sample.
_RANDOM_OPS = frozenset({
    "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike",
    "Multinomial", "Bernoulli",
})

Folder = Callable[[ir.Node, "_Context"], "list[np.ndarray] | None"]


@dataclasses.dataclass(frozen=True)
class _Context:
    model: ir.Model
    max_elements: int


def _static_shape(value: ir.Value | None) -> tuple[int, ...] | None:
    if value is None or value.shape is None:
        return None
    dims = tuple(value.shape)
    return dims if all(isinstance(d, int) for d in dims) else None


def _constant(value: ir.Value | None) -> ir.TensorProtocol | None:
    """The tensor of a constant value; None for inputs, parameters and computed values."""
    if value is None or not value.is_initializer() or is_parameter(value):
        return None
    return value.const_value


def _fold_constant_node(node: ir.Node, ctx: _Context) -> list[np.ndarray] | None:
    try:
        tensor = ir.convenience.get_const_tensor(node.outputs[0])
    except (ValueError, TypeError, NotImplementedError):  # sparse or malformed Constant
        return None
    return None if tensor is None else [tensor.numpy()]


def _fold_shape(node: ir.Node, ctx: _Context) -> list[np.ndarray] | None:
    dims = _static_shape(node.inputs[0])
    if dims is None:
        return None
    start = node.attributes.get_int("start", 0)
    end = node.attributes.get_int("end", None)
    # Python slicing clamps out-of-range and negative bounds the way ONNX specifies
    return [np.array(dims[start:end], dtype=np.int64)]


def _fold_size(node: ir.Node, ctx: _Context) -> list[np.ndarray] | None:
    dims = _static_shape(node.inputs[0])
    return None if dims is None else [np.array(math.prod(dims), dtype=np.int64)]


def _copy_value(value: ir.Value | None, tensor: ir.TensorProtocol | None) -> ir.Value | None:
    # the original name: serialising renames the shared tensor after its value
    if value is None:
        return None
    return ir.Value(name=value.name, const_value=tensor, type=ir.TensorType(tensor.dtype),
                    shape=ir.Shape(tensor.shape))


def _one_node_model(node: ir.Node, tensors: list, ctx: _Context) -> ir.Model:
    """A copy of ``node`` whose inputs are initializers, in a model of its own."""
    copies = {v: _copy_value(v, t) for v, t in zip(node.inputs, tensors)}  # Mul(a, a): one copy
    inputs = [copies[v] for v in node.inputs]
    outputs = [ir.Value(name=f"projc_fold_out{i}") for i in range(len(node.outputs))]
    attrs = [ir.Attr(a.name, a.type, a.value) for a in node.attributes.values()]
    copy = ir.Node(node.domain, node.op_type, inputs, attrs, outputs=outputs, version=node.version)
    graph = ir.Graph(
        inputs=[], outputs=outputs, nodes=[copy],
        initializers=[v for v in copies.values() if v is not None],
        opset_imports={"": model_opset(ctx.model)},
    )
    return ir.Model(graph, ir_version=ctx.model.ir_version)


def _fold_by_evaluation(node: ir.Node, ctx: _Context) -> list[np.ndarray] | None:
    tensors = [_constant(v) for v in node.inputs]
    if any(t is None and v is not None for t, v in zip(tensors, node.inputs)):
        return None
    try:
        with warnings.catch_warnings():  # inf/nan from constant arithmetic is a valid result
            warnings.simplefilter("ignore")
            return [np.asarray(r) for r in run_reference(_one_node_model(node, tensors, ctx))]
    except Exception:  # an op the reference evaluator cannot run stays in the graph
        return None


def _fold_constant_of_shape(node: ir.Node, ctx: _Context) -> list[np.ndarray] | None:
    # common enough (weights of the onnx test zoo, zero states of exported RNNs) for a fast path
    shape = _constant(node.inputs[0])
    if shape is None:
        return None
    fill = node.attributes.get("value")
    scalar = fill.value.numpy().reshape(-1)[0] if fill is not None else np.float32(0)
    return [np.full(tuple(int(d) for d in shape.numpy()), scalar, dtype=np.asarray(scalar).dtype)]


# op type -> folder; ops not listed fold by evaluation when all their inputs are constants
_FOLDERS: dict[str, Folder] = {
    "ConstantOfShape": _fold_constant_of_shape,
    "Constant": _fold_constant_node,
    "Shape": _fold_shape,
    "Size": _fold_size,
}


def _size_limit(node: ir.Node, ctx: _Context) -> float:
    # lifting a Constant moves data the file holds already
    return math.inf if node.op_type == "Constant" else ctx.max_elements


def _too_large(node: ir.Node, limit: float) -> bool:
    shapes = [_static_shape(o) for o in node.outputs]
    return any(s is not None and math.prod(s) > limit for s in shapes)


def _foldable(node: ir.Node, ctx: _Context) -> bool:
    graph_attrs = (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS)
    has_subgraph = any(a.type in graph_attrs for a in node.attributes.values())
    return (
        node.domain == ""
        and node.op_type not in _RANDOM_OPS
        and not has_subgraph
        and not _too_large(node, _size_limit(node, ctx))
    )


def _results_fit(node: ir.Node, arrays: list[np.ndarray], limit: float) -> bool:
    """Results must match the node's outputs in number, size limit and (when known) dtype."""
    if len(arrays) != len(node.outputs):
        return False
    for out, arr in zip(node.outputs, arrays):
        if arr.size > limit or arr.dtype.kind in "OUS":  # strings stay where they are
            return False
        if out.dtype is not None and ir.DataType.from_numpy(arr.dtype) != out.dtype:
            return False
    return True


def _replace(graph: ir.Graph, node: ir.Node, arrays: list[np.ndarray]) -> None:
    """Swap ``node`` for initializers that keep its output names."""
    replacements = []
    for out, arr in zip(node.outputs, arrays):
        if not out.uses() and not out.is_graph_output():
            continue  # an unused output needs no initializer
        tensor = ir.tensor(arr, name=out.name)
        const = ir.Value(name=out.name, shape=ir.Shape(arr.shape), type=ir.TensorType(tensor.dtype),
                         const_value=tensor)
        const.meta[ROLE_KEY] = CONST
        out.replace_all_uses_with(const, replace_graph_outputs=True)
        replacements.append(const)
    graph.remove(node, safe=True)
    for const in replacements:
        graph.register_initializer(const)


def _fold_node(graph: ir.Graph, node: ir.Node, ctx: _Context) -> bool:
    if not _foldable(node, ctx):
        return False
    arrays = _FOLDERS.get(node.op_type, _fold_by_evaluation)(node, ctx)
    if arrays is None or not _results_fit(node, arrays, _size_limit(node, ctx)):
        return False
    _replace(graph, node, arrays)
    return True


def _sweep(graph: ir.Graph, ctx: _Context) -> bool:
    modified = False
    for node in list(graph):  # topological order: folded outputs feed later nodes
        modified |= _fold_node(graph, node, ctx)
    return modified


def _waiting_for_shapes(graph: ir.Graph) -> bool:
    """Whether a Shape or Size node would fold if its input's shape were known."""
    return any(
        node.op_type in ("Shape", "Size") and _static_shape(node.inputs[0]) is None
        for node in graph
    )


@register_pass
@dataclasses.dataclass(frozen=True)
class FoldConstants(Pass):
    """Evaluate constant nodes (top-level graph) and store their results as initializers.

    Attributes:
        max_elements: nodes whose outputs have more elements than this stay in the graph,
            so folding never blows up the model file.
        infer_shapes: after a sweep that folded something, while a Shape or Size node waits
            for its input's shape, infer shapes and sweep again (exporters chain several
            Shape -> Reshape -> Shape levels; one sweep per level).
        max_rounds: the most such extra sweeps.
    """

    name = "fold-constants"
    max_elements: int = 1 << 20
    infer_shapes: bool = True
    max_rounds: int = 16

    def run(self, model: ir.Model) -> PassResult:
        assign_roles(model.graph, keep_existing=True)  # parameters must be known before folding
        ctx = _Context(model, self.max_elements)
        modified = _sweep(model.graph, ctx)
        for _ in range(self.max_rounds if self.infer_shapes else 0):
            if not _waiting_for_shapes(model.graph):
                break
            inferred = InferShapes()(model)  # in place
            modified |= inferred.modified
            if not (inferred.modified and _sweep(model.graph, ctx)):
                break
        return PassResult(model, modified)
