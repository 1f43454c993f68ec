"""``canonicalize``: remove no-op nodes (Identity, inference-mode Dropout)."""

from __future__ import annotations

import dataclasses

import onnx_ir as ir

from projc.passes.base import Pass, PassResult, register_pass


def _is_noop(node: ir.Node) -> bool:
    if node.op_type == "Identity" and node.domain in ("", "ai.onnx"):
        return True
    if node.op_type == "Dropout" and node.domain in ("", "ai.onnx"):
        # the mask output, when used, is not a no-op; training_mode=True is not inference
        mask_used = len(node.outputs) > 1 and bool(node.outputs[1].uses())
        training = len(node.inputs) > 2 and node.inputs[2] is not None
        return not mask_used and not training
    return False


def _bypass(graph: ir.Graph, node: ir.Node) -> bool:
    src, out = node.inputs[0], node.outputs[0]
    if src is None:
        return False
    if out.is_graph_output():
        if src.is_graph_input() or src.is_graph_output() or src.is_initializer():
            return False  # keep the node: a graph output must be produced by something
        # let the producer write the output name directly
        graph.outputs[graph.outputs.index(out)] = src
        name = out.name
        out.name = None
        src.name = name
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
        for node in list(model.graph):
            if _is_noop(node):
                modified |= _bypass(model.graph, node)
        return PassResult(model, modified)
