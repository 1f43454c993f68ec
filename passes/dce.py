"""``dce``: remove nodes and initializers that no graph output depends on."""

from __future__ import annotations

import dataclasses

import onnx_ir as ir

from projc.passes.base import Pass, PassResult, register_pass


def _live_nodes(graph: ir.Graph) -> set[ir.Node]:
    live: set[ir.Node] = set()
    stack = [v for v in graph.outputs]
    while stack:
        value = stack.pop()
        node = value.producer()
        if node is None or node in live:
            continue
        live.add(node)
        stack.extend(v for v in node.inputs if v is not None)
        # values read from the outer scope by subgraphs keep their producers alive
        for attr in node.attributes.values():
            if attr.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS):
                subgraphs = attr.value if isinstance(attr.value, list) else [attr.value]
                for sub in subgraphs:
                    for inner in ir.traversal.RecursiveGraphIterator(sub):
                        stack.extend(v for v in inner.inputs if v is not None and v.graph is not sub)
    return live


@register_pass
@dataclasses.dataclass(frozen=True)
class DeadCodeElimination(Pass):
    """Drop every node whose outputs are unused, and initializers nobody reads."""

    name = "dce"

    def run(self, model: ir.Model) -> PassResult:
        graph = model.graph
        live = _live_nodes(graph)
        dead = [n for n in graph if n not in live]
        for node in reversed(dead):
            graph.remove(node, safe=False)
        graph_inputs = set(graph.inputs)
        unused = [
            name for name, v in graph.initializers.items()
            if not v.uses() and v not in graph_inputs and not v.is_graph_output()
        ]
        for name in unused:
            graph.initializers.pop(name)
        return PassResult(model, bool(dead or unused))
