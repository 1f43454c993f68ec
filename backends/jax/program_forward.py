"""Forward evaluation of a constraint program in JAX: every variable from data and parameters.

Used to initialise each minibatch's state at the forward pass (method.md section 3). Groups
stacked over time read their own variable shifted by one step, so a recurrent program is swept
``T + 1`` times (each sweep settles one more step) inside a ``lax.fori_loop``, so that the
traced program, and its compile time, do not grow with the sequence length; an acyclic one
needs a single sweep in dependency order.
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import networkx as nx
import numpy as np

from projc.backends.jax.projections import activation_forward
from projc.backends.jax.state import send
from projc.constraints import Group, Program, VarKind
from projc.index_map import Take


def _operands(group: Group, values):
    return {s.role: send(s.imap, values[s.var]) for s in group.slots}


def _sum_act(g, ops):
    s = sum(ops[f"x{i}"] for i in range(len(ops))) + g.attrs.get("d", 0.0)
    params = {k: v for k, v in g.attrs.items() if k not in ("act", "d")}
    return activation_forward(g.attrs["act"], s, **params)


def _linear(g, ops):
    c = ops["c"] if "c" in ops else g.attrs["c"]
    return jnp.sum(c * ops["x"], axis=-1) + g.attrs.get("d", 0.0)


FORWARD = {
    "dot": lambda g, ops: jnp.sum(ops["a"] * ops["b"], axis=-1),
    "mul": lambda g, ops: ops["a"] * ops["b"],
    "linear": _linear,
    "sum_act": _sum_act,
    "max": lambda g, ops: jnp.max(ops["a"], axis=-1),
    "identity": lambda g, ops: ops["a"],
    "concat": lambda g, ops: jnp.concatenate([ops[f"a{i}"] for i in range(len(ops))], g.attrs["axis"]),
}


def _reads_previous_step(slot) -> bool:
    """A read through a map that pads in zeros: a recurrence's read of step t - 1."""
    return any(isinstance(step, Take) and bool((np.asarray(step.indices) < 0).any()) for step in slot.imap.steps)


def evaluation_plan(prog: Program) -> tuple[list[Group], int]:
    """The producing groups in dependency order and how many sweeps they need."""
    producing = {g.name: g for g in prog.groups.values() if g.out is not None}
    edges = [(prog.variables[s.var].producer, g.name, s) for g in producing.values() for s in g.slots
             if prog.variables[s.var].producer is not None]
    deps = nx.DiGraph()
    deps.add_nodes_from(producing)
    deps.add_edges_from((u, v) for u, v, _ in edges)
    if nx.is_directed_acyclic_graph(deps):
        return [producing[n] for n in nx.topological_sort(deps)], 1
    # inside a recurrence, drop the reads of the previous step: what is left is one step's order
    cyclic = set()
    for scc in nx.strongly_connected_components(deps):
        node = next(iter(scc))
        if len(scc) > 1 or deps.has_edge(node, node):
            cyclic |= scc
    step = nx.DiGraph()
    step.add_nodes_from(producing)
    step.add_edges_from((u, v) for u, v, s in edges
                        if not (u in cyclic and v in cyclic and _reads_previous_step(s)))
    steps = max(producing[n].shape[0] for n in cyclic)
    return [producing[n] for n in nx.topological_sort(step)], steps + 1


def forward_values(prog: Program, leaves: Mapping[str, jax.Array], dtype=jnp.float32) -> dict[str, jax.Array]:
    """Every variable's value at the forward pass from ``leaves`` (data and parameters)."""
    values = {k: jnp.asarray(v, dtype) for k, v in leaves.items()}
    for v in prog.variables.values():
        if v.kind is VarKind.HIDDEN:
            values.setdefault(v.name, jnp.zeros(v.shape, dtype))
    order, sweeps = evaluation_plan(prog)

    def sweep(_, values):
        values = dict(values)
        for g in order:
            values[g.out] = FORWARD[g.kind](g, _operands(g, values)).astype(dtype)
        return values

    return sweep(0, values) if sweeps == 1 else jax.lax.fori_loop(0, sweeps, sweep, values)
