"""``schedule-blocks``: colour the constraint graph into blocks of independent projections,
group same-kind constraints of a block into batched kernels, and estimate the cost.

Constraints of one colour share no copy, so a block's projections run in parallel as one step
(method.md section 3). Colourings: ``two-sets`` (a 2-colouring with the loss in block A, after
``bipartize``) for the two-set algorithms; ``layers`` (breadth-first layers from the loss, each
an independent set once the graph is bipartite) and ``greedy`` (fewest colours, any graph) for
the cyclic ones.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import networkx as nx
import numpy as np

from projc.constraints import Program, VarKind
from projc.errors import ProjcError
from projc.passes.base import Pass, PassResult, register_pass
from projc.passes.bipartize import _conflict, constraint_graph

BYTES_PER_FLOAT = 4

# Rough floating-point work per operand element and per scalar constraint, by kind: reductions
# and updates per element, the scalar solve per constraint (dot: ~8 safeguarded Newton steps).
FLOPS = {
    "dot": (8, 160), "mul": (8, 160), "linear": (6, 4), "sum_act": (3, 40), "max": (12, 8),
    "identity": (3, 2), "concat": (3, 0), "loss": (12, 200), "param": (2, 1), "data": (1, 0),
}


@dataclasses.dataclass
class Kernel:
    """Groups of one kind and shape signature in one block: one batched projection."""

    kind: str
    groups: list[str]
    constraints: int  # scalar constraints (independent projections)
    floats: int  # copies read and written


@dataclasses.dataclass
class Block:
    index: int
    kernels: list[Kernel]

    @property
    def constraints(self) -> int:
        return sum(k.constraints for k in self.kernels)

    @property
    def floats(self) -> int:
        return sum(k.floats for k in self.kernels)


@dataclasses.dataclass
class Schedule:
    program: Program
    blocks: list[Block]
    colour: dict[str, int]
    flops_per_iteration: int

    @property
    def state_floats(self) -> int:
        return self.program.state_size()

    def summary(self) -> dict[str, Any]:
        from projc.factored_copies import held

        state = self.state_floats
        touched = sum(b.floats for b in self.blocks)  # copies read and written, per block
        # as the training step holds them (over all devices): a factored slot keeps its factors
        # instead of its copies, in its group's kernel and its variable's consensus alike
        # (projc.factored_copies); FLOPs stay those of the written-out copies
        factored = held(self.program)
        saved = sum(s["copies"] - s["floats"] for s in factored)
        return {
            "blocks": len(self.blocks),
            "groups": len(self.program.groups),
            "kernels": sum(len(b.kernels) for b in self.blocks),
            "scalar_constraints": sum(b.constraints for b in self.blocks),
            "state_floats": state,
            "state_bytes": state * BYTES_PER_FLOAT,
            "flops_per_iteration": self.flops_per_iteration,
            # each projection reads and writes the copies it owns: every copy twice per block
            "bytes_per_iteration": 2 * BYTES_PER_FLOAT * touched,
            "parallel_width": max((b.constraints for b in self.blocks), default=0),
            "held_state_floats": state - saved,
            "held_state_bytes": (state - saved) * BYTES_PER_FLOAT,
            "held_bytes_per_iteration": 2 * BYTES_PER_FLOAT * (touched - 2 * saved),
            "factored": factored,
        }


def _node_info(prog: Program, node: str) -> tuple[str, tuple, int]:
    """(kind, signature, scalar constraints) of a constraint-graph node."""
    if node in prog.groups:
        g = prog.groups[node]
        return g.kind, g.signature(), g.size
    kind, var = node.split(":", 1)
    v = prog.variables[var]
    return ("param" if v.kind is VarKind.PARAM else "data"), (kind, v.shape), v.size


def _incident_floats(graph: nx.MultiGraph, prog: Program, node: str) -> int:
    total = 0
    for _, _, (group, i) in graph.edges(node, keys=True):
        total += int(np.prod(prog.groups[group].slots[i].shape))
    return total


COLOURINGS = ("two-sets", "layers", "greedy")


def _layers(graph: nx.MultiGraph, root: str) -> dict[str, int]:
    """Breadth-first distance from ``root`` (other components from their own first node)."""
    colour: dict[str, int] = {}
    for start in [root, *graph.nodes]:
        if start in graph and start not in colour:
            colour.update(nx.single_source_shortest_path_length(graph, start))
    return colour


def colour_graph(graph: nx.MultiGraph, colouring: str = "two-sets", root: str = "loss") -> dict[str, int]:
    """Node -> block index; block 0 holds ``root`` (the loss) for the two-sets and layers colourings."""
    if colouring not in COLOURINGS:
        raise ValueError(f"colouring {colouring!r}: expected one of {', '.join(COLOURINGS)}")
    if colouring == "greedy":
        return nx.greedy_color(nx.Graph(graph), strategy="largest_first")
    colour, conflict = _conflict(graph, root if root in graph else next(iter(graph)))
    if conflict is not None:
        raise ProjcError("the constraint graph is not 2-colourable; run the bipartize pass first")
    return colour if colouring == "two-sets" else _layers(graph, root)


def schedule(prog: Program, colouring: str = "two-sets") -> Schedule:
    """Colour ``prog`` into blocks and group each block's constraints into kernels."""
    graph = constraint_graph(prog)
    colour = colour_graph(graph, colouring)
    blocks, flops = [], 0
    for c in sorted(set(colour.values())):
        by_sig: dict[tuple, Kernel] = {}
        for node in sorted(n for n in graph.nodes if colour[n] == c):
            kind, sig, size = _node_info(prog, node)
            floats = _incident_floats(graph, prog, node)
            per_elem, per_con = FLOPS[kind]
            flops += per_elem * floats + per_con * size
            k = by_sig.setdefault(sig, Kernel(kind, [], 0, 0))
            k.groups.append(node)
            k.constraints += size
            k.floats += floats
        blocks.append(Block(c, sorted(by_sig.values(), key=lambda k: (k.kind, k.groups[0]))))
    return Schedule(prog, blocks, colour, flops)


@register_pass
@dataclasses.dataclass(frozen=True)
class ScheduleBlocks(Pass):
    """Constraint program -> :class:`Schedule` (blocks, kernels, cost model)."""

    name = "schedule-blocks"
    colouring: str = "two-sets"

    def run(self, prog: Program) -> PassResult:
        return PassResult(schedule(prog, self.colouring), True)
