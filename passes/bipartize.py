"""``bipartize``: make the constraint graph 2-colourable by inserting identity constraints.

Two-set algorithms (AP, DR, DM, AR) need every copy to join a constraint of set A to one of set
B. An odd cycle (a residual connection, a recurrent edge) breaks that; an identity constraint
placed on one edge of the cycle flips its parity (method.md section 3). The reference framework
refuses such graphs; projc repairs them.
"""

from __future__ import annotations

import dataclasses
from collections import deque

import networkx as nx

from projc.constraints import Group, Program, Slot, Variable, VarKind
from projc.index_map import IndexMap
from projc.passes.base import Pass, PassResult, register_pass


def producer_node(prog: Program, var: str) -> str:
    """The constraint-graph node that produces ``var``'s copies (group, consensus or clamp)."""
    v = prog.variables[var]
    if v.kind is VarKind.HIDDEN:
        return v.producer
    return f"{v.kind.value}:{var}"


def constraint_graph(prog: Program) -> nx.MultiGraph:
    """Nodes: groups, parameter consensus and data clamps; one edge per copy slot."""
    g = nx.MultiGraph()
    g.add_nodes_from(prog.groups)
    for group in prog.groups.values():
        for i, slot in enumerate(group.slots):
            if slot.copy:
                g.add_edge(group.name, producer_node(prog, slot.var), key=(group.name, i))
    return g


def _conflict(graph: nx.MultiGraph, root: str) -> tuple[dict, tuple | None]:
    """BFS 2-colouring from ``root``; the first edge joining two nodes of one colour, if any."""
    colour = {}
    for start in [root, *graph.nodes]:
        if start in colour:
            continue
        colour[start] = 0
        queue = deque([start])
        while queue:
            u = queue.popleft()
            for _, v, key in graph.edges(u, keys=True):
                if v not in colour:
                    colour[v] = 1 - colour[u]
                    queue.append(v)
                elif colour[v] == colour[u]:
                    return colour, key
    return colour, None


def insert_identity(prog: Program, group_name: str, slot_index: int) -> Group:
    """Route one slot through a new identity constraint (``v -> identity -> v'``)."""
    group = prog.groups[group_name]
    slot = group.slots[slot_index]
    src = prog.variables[slot.var]
    new_var = prog.fresh(f"{src.name}.id", prog.variables)
    prog.add_variable(Variable(new_var, src.shape, VarKind.HIDDEN, src.dtype))
    ident = Group(prog.fresh("identity_", prog.groups), "identity", src.shape,
                  [Slot("a", src.name, IndexMap(src.shape))], new_var, {}, ("bipartize",))
    prog.add_group(ident)
    group.slots[slot_index] = dataclasses.replace(slot, var=new_var)
    return ident


def bipartize(prog: Program, root: str = "loss") -> int:
    """Insert identity constraints until the graph is bipartite; return how many were added."""
    added = 0
    while True:
        graph = constraint_graph(prog)
        _, key = _conflict(graph, root if root in graph else next(iter(graph)))
        if key is None:
            return added
        insert_identity(prog, *key)
        added += 1


@register_pass
@dataclasses.dataclass(frozen=True)
class Bipartize(Pass):
    """Make the constraint graph 2-colourable (needed by AP, DR, DM and AR)."""

    name = "bipartize"

    def run(self, prog: Program) -> PassResult:
        return PassResult(prog, bipartize(prog) > 0)
