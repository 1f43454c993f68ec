"""``canonicalize``: remove no-op nodes (Identity, inference-mode Dropout).

Works in the main graph and in subgraphs. A removed node's output name survives when it is a
graph output: the producer of its input takes over the name.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import onnx_ir as ir

from projc.passes.base import Pass, PassResult, register_pass


def _is_false_constant(value: ir.Value | None) -> bool:
    try:
        tensor = ir.convenience.get_const_tensor(value) if value is not None else None
    except (ValueError, TypeError):  # a malformed Constant node: not provably false
        return False
    return tensor is not None and tensor.size == 1 and not bool(tensor.numpy().reshape(-1)[0])


def _dropout_is_noop(node: ir.Node) -> bool:
    # a used mask output is not a no-op; training_mode must be absent or a constant false
    mask = node.outputs[1] if len(node.outputs) > 1 else None
    mask_used = mask is not None and (bool(mask.uses()) or mask.is_graph_output())
    training = node.inputs[2] if len(node.inputs) > 2 else None
    return not mask_used and (training is None or _is_false_constant(training))


# op type -> whether this node (default domain) forwards its first input unchanged
_NOOP_RULES: dict[str, Callable[[ir.Node], bool]] = {
    "Identity": lambda node: True,
    "Dropout": _dropout_is_noop,
}


def _is_noop(node: ir.Node) -> bool:
    rule = _NOOP_RULES.get(node.op_type)
    return node.domain == "" and rule is not None and rule(node)


def _can_take_output_name(src: ir.Value, graph: ir.Graph) -> bool:
    """Whether ``src`` may become a graph output in place of the removed node's output."""
    producer = src.producer()
    # inputs, initializers, outputs already and outer-scope values keep their own names
    return producer is not None and producer.graph is graph and not src.is_graph_output()


def _bypass(graph: ir.Graph, node: ir.Node) -> bool:
    src, out = node.inputs[0], node.outputs[0]
    if src is None:
        return False
    if out.is_graph_output():
        if not _can_take_output_name(src, graph):
            return False  # keep the node: a graph output must be produced by something
        name = out.name
        out.replace_all_uses_with(src, replace_graph_outputs=True)
        out.name = None
        src.name = name
        # a graph output must stay typed; both ops keep type and shape
        src.type = src.type or out.type
        src.shape = src.shape or out.shape
    else:
        out.replace_all_uses_with(src)
    graph.remove(node, safe=True)
    return True


@register_pass
@dataclasses.dataclass(frozen=True)
class Canonicalize(Pass):
    """Bypass Identity and inference-mode Dropout nodes."""

    name = "canonicalize"

    def run(self, model: ir.Model) -> PassResult:
        modified = False
        for node in list(ir.traversal.RecursiveGraphIterator(model.graph)):
            if _is_noop(node):
                modified |= _bypass(node.graph, node)
        return PassResult(model, modified)
