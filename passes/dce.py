"""``dce``: remove nodes and initializers that no graph output depends on.

Subgraphs (If branches, Loop and Scan bodies) are cleaned first, innermost first, so that a
value they stop reading can die in the enclosing graph in the same run. Values a subgraph reads
from an enclosing scope keep their producers alive. Graph inputs are never removed (Loop and
Scan bind them by position).
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import onnx_ir as ir

from projc.passes.base import Pass, PassResult, register_pass

_GRAPH_ATTRS = (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS)


def _subgraphs(node: ir.Node) -> Iterator[ir.Graph]:
    for attr in node.attributes.values():
        if attr.type in _GRAPH_ATTRS:
            yield from (attr.value if isinstance(attr.value, list) else [attr.value])


def _outer_reads(node: ir.Node, graph: ir.Graph) -> Iterator[ir.Value]:
    """Values of ``graph`` read by nodes inside the subgraphs of ``node``, at any depth."""
    for sub in _subgraphs(node):
        for inner in ir.traversal.RecursiveGraphIterator(sub):
            yield from (v for v in inner.inputs if v is not None and v.graph is graph)


def _live_nodes(graph: ir.Graph) -> set[ir.Node]:
    live: set[ir.Node] = set()
    stack = list(graph.outputs)
    while stack:
        node = stack.pop().producer()
        if node is None or node in live or node.graph is not graph:
            continue
        live.add(node)
        stack.extend(v for v in node.inputs if v is not None)
        stack.extend(_outer_reads(node, graph))
    return live


def _remove_unused_initializers(graph: ir.Graph) -> bool:
    graph_inputs = set(graph.inputs)
    unused = [
        name for name, v in graph.initializers.items()
        if not v.uses() and v not in graph_inputs and not v.is_graph_output()
    ]
    for name in unused:
        graph.initializers.pop(name)
    return bool(unused)


def _detach(node: ir.Node) -> None:
    """Stop ``node`` and the nodes of its subgraphs from using any value.

    Without this the values they read keep counting them as uses, and an initializer read
    only by dead code would survive until the next run.
    """
    inner = [n for sub in _subgraphs(node) for n in ir.traversal.RecursiveGraphIterator(sub)]
    for n in [node, *inner]:
        for i in range(len(n.inputs)):
            n.replace_input_with(i, None)


def _clean(graph: ir.Graph) -> bool:
    """Remove dead nodes and unused initializers of ``graph`` and its subgraphs."""
    modified = False
    for node in graph:
        for sub in _subgraphs(node):
            modified |= _clean(sub)
    live = _live_nodes(graph)
    dead = [n for n in graph if n not in live]
    for node in dead:
        _detach(node)
    graph.remove(dead)
    return _remove_unused_initializers(graph) or modified or bool(dead)


@register_pass
@dataclasses.dataclass(frozen=True)
class DeadCodeElimination(Pass):
    """Drop every node whose outputs are unused, and initializers nobody reads."""

    name = "dce"

    def run(self, model: ir.Model) -> PassResult:
        return PassResult(model, _clean(model.graph))
