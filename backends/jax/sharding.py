"""Sharding a projection program over a device mesh (design.md, "Backend (JAX)").

The mesh has two named axes, ``batch`` (data parallel) and ``model`` (model parallel), of sizes
``data x model = devices``. Which axis of each state array goes where follows from the
constraint program alone:

- **The batch axis.** The data input and the labels carry the batch at axis 0. A group's batch
  axis is the axis of its shape that one of its slots reads, through the slot's index map, from
  a variable's batch axis; the group's output variable inherits it. This runs to a fixed point,
  so a hidden layer finds its batch axis from the layer before it. A dense layer's dot group of
  shape (B, M) has it at 0, and so do its slots (B, M, N), parameter copies included (the
  parameter is broadcast over the batch: those copies are what the consensus means reduce). A
  recurrent group stacked over time, (T, B, H), has it at 1, because the cell reads the input
  through a transpose.
- **The neuron/channel axis** is the group axis right after the batch axis: M of a dense layer
  (B, M), the output channels C of a convolution (B, C, H, W), H of a recurrent (T, B, H). It is
  sharded over ``model`` only for large groups (:data:`MODEL_MIN_FLOATS` copy floats or more)
  whose size along it divides evenly.

A slot's array is laid out like its group on the group's leading axes, so its partition spec
is the group's, padded with ``None`` for the trailing (reduced) axes. An axis whose size does
not divide by the mesh axis stays whole.

Sharding never changes what is computed: the specs are constraints for XLA's partitioner,
which inserts the collectives (the consensus mean of a parameter over the batch becomes a sum
of local partial sums and one all-reduce over ``batch``). A wrong spec costs communication,
not correctness. :func:`communication` predicts the bytes all-reduced per iteration from the
same analysis, for ``projc inspect --devices N``.

The analysis is plain Python; only the functions that build meshes and shardings import JAX.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping

import numpy as np

from projc.constraints import Group, Program, VarKind
from projc.errors import ProjcError
from projc.index_map import Broadcast, IndexMap, Reshape, Take, Transpose

BATCH, MODEL = "batch", "model"  # the mesh axis names
MODEL_MIN_FLOATS = 1 << 14  # a group is "large" (worth splitting its neurons) from 64 KiB of copies
BYTES_PER_FLOAT = 4

Spec = tuple  # one entry per array axis: BATCH, MODEL or None


@dataclasses.dataclass(frozen=True)
class MeshShape:
    """``devices`` devices as a (data x model) grid."""

    devices: int = 1
    model: int = 1

    @property
    def data(self) -> int:
        return self.devices // self.model

    @property
    def sharded(self) -> bool:
        return self.devices > 1

    def size(self, axis: str | None) -> int:
        return {BATCH: self.data, MODEL: self.model}.get(axis, 1)

    def check(self, batch_size: int) -> "MeshShape":
        """Reject meshes the batch cannot be split over, naming the flag."""
        if self.devices < 1:
            raise ProjcError(f"--devices {self.devices}: must be at least 1")
        if self.model < 1 or self.devices % self.model:
            raise ProjcError(f"--model-parallel {self.model}: must divide --devices {self.devices}")
        if batch_size % self.data:
            raise ProjcError(f"--batch-size {batch_size} does not divide by {self.data} data-parallel devices "
                             f"(--devices {self.devices}, --model-parallel {self.model}); choose a batch size "
                             f"that is a multiple of {self.data}")
        return self

    def as_dict(self) -> dict[str, int]:
        return {"devices": self.devices, BATCH: self.data, MODEL: self.model}


# --- which axis is which -----------------------------------------------------------------


def source_axis(imap: IndexMap, axis: int) -> int | None:
    """The axis of the variable that operand axis ``axis`` of ``imap`` reads, or None when the
    operand axis is a broadcast (every entry along it is a copy of the same value)."""
    shapes = [tuple(imap.src_shape)]
    for step in imap.steps:
        shapes.append(tuple(step.out_shape(shapes[-1])))
    for i in range(len(imap.steps) - 1, -1, -1):
        axis = _back(imap.steps[i], axis, shapes[i], shapes[i + 1])
        if axis is None:
            return None
    return axis


def _back(step, axis: int, before: tuple, after: tuple) -> int | None:
    """One step of :func:`source_axis`: the axis of ``before`` that ``after[axis]`` comes from."""
    if isinstance(step, Transpose):
        return step.perm[axis]
    if isinstance(step, Broadcast):
        return None if axis == step.axis else axis - (axis > step.axis)
    if isinstance(step, Take):
        k = np.ndim(step.indices)
        if step.axis <= axis < step.axis + k:
            return step.axis  # a gather along that axis (a window, a time shift)
        return axis - k + 1 if axis >= step.axis + k else axis
    if isinstance(step, Reshape):
        if after[axis] == 1:
            return None
        # in prefix products (outer sizes), the operand axis spans [lo, hi); source axis j spans
        # [prod(before[:j]), prod(before[:j + 1]))
        lo, hi = math.prod(after[:axis]), math.prod(after[:axis + 1])
        for j in range(len(before)):
            start, end = math.prod(before[:j]), math.prod(before[:j + 1])
            if start <= lo < end:
                # inside axis j (a split), or j and the axes after it merged: contiguous blocks of
                # the operand axis are blocks of axis j either way
                return j if hi <= end or lo == start else None
        return None
    raise TypeError(f"unknown index-map step {step!r}")


def batch_axes(prog: Program) -> tuple[dict[str, int], dict[str, int]]:
    """(variable -> batch axis, group -> batch axis), for those that have one."""
    b = prog.batch_size
    var_axis = {v.name: 0 for v in prog.variables.values()
                if v.kind in (VarKind.DATA, VarKind.LABEL) and v.shape and v.shape[0] == b}
    group_axis: dict[str, int] = {}
    changed = True
    while changed:  # a fixed point: each pass resolves the groups fed by resolved variables
        changed = False
        for g in prog.groups.values():
            if g.name in group_axis:
                continue
            axis = _group_batch_axis(g, var_axis, b)
            if axis is not None:
                group_axis[g.name], changed = axis, True
                if g.out is not None:
                    var_axis.setdefault(g.out, axis)
    return var_axis, group_axis


def _group_batch_axis(g: Group, var_axis: Mapping[str, int], b: int) -> int | None:
    for s in g.slots:
        if s.var not in var_axis:
            continue
        for a in range(min(len(g.shape), len(s.shape))):
            if s.shape[a] == b and source_axis(s.imap, a) == var_axis[s.var]:
                return a
    return None


# --- the plan ----------------------------------------------------------------------------


@dataclasses.dataclass
class ShardingPlan:
    """Partition specs of every group and every state array (copy slot) of a program."""

    mesh: MeshShape
    groups: dict[str, Spec]
    slots: dict[str, Spec]  # state key -> spec

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly: specs as lists of axis names (null = not split)."""
        return {"mesh": self.mesh.as_dict(), "groups": {k: list(v) for k, v in self.groups.items()},
                "state": {k: list(v) for k, v in self.slots.items()}}


def plan(prog: Program, mesh: MeshShape) -> ShardingPlan:
    """Which mesh axis splits which axis of every group and state array of ``prog``."""
    from projc.backends.jax.state import slot_key

    _, group_axis = batch_axes(prog)
    groups, slots = {}, {}
    for g in prog.groups.values():
        spec = _group_spec(g, group_axis.get(g.name), mesh)
        groups[g.name] = spec
        for s in g.slots:
            if s.copy:
                padded = spec[:len(s.shape)] + (None,) * (len(s.shape) - len(spec))
                slots[slot_key(g.name, s)] = _fit(padded, s.shape, mesh)
    return ShardingPlan(mesh, groups, slots)


def _group_spec(g: Group, batch: int | None, mesh: MeshShape) -> Spec:
    spec = [None] * len(g.shape)
    if batch is None:
        return tuple(spec)
    if mesh.data > 1:
        spec[batch] = BATCH
    neuron = batch + 1
    copies = sum(math.prod(s.shape) for s in g.slots if s.copy)
    if mesh.model > 1 and neuron < len(g.shape) and copies >= MODEL_MIN_FLOATS:
        spec[neuron] = MODEL
    return _fit(tuple(spec), g.shape, mesh)


def _fit(spec: Spec, shape: tuple[int, ...], mesh: MeshShape) -> Spec:
    """``spec`` with every split that does not divide its axis evenly dropped."""
    return tuple(a if a is not None and shape[i] % mesh.size(a) == 0 else None for i, a in enumerate(spec))


# --- the communication the consensus means cost ------------------------------------------


def consensus_allreduce_bytes(prog: Program, sp: ShardingPlan, var: str) -> int:
    """Bytes per device all-reduced to form the consensus of ``var`` once.

    Each copy slot is summed back onto the variable by the adjoint of its index map. Summing
    over an axis that is split across devices (a broadcast axis: the batch of a parameter's
    copies, the neurons that all read one input) leaves partial sums on each device, which one
    all-reduce over that mesh axis completes; its payload is the variable's size divided by
    the splits that survive the sum.
    """
    from projc.backends.jax.state import copy_slots

    total = 0
    for key, slot in copy_slots(prog, var):
        spec = sp.slots[key]
        reduced = {a for i, a in enumerate(spec) if a is not None and source_axis(slot.imap, i) is None}
        if not reduced:
            continue
        kept = math.prod(sp.mesh.size(a) for i, a in enumerate(spec)
                         if a is not None and a not in reduced and source_axis(slot.imap, i) is not None)
        total += BYTES_PER_FLOAT * prog.variables[var].size // kept
    return total


def block_projections(algorithm: str, blocks: int, beta: float = 1.0) -> dict[int, int]:
    """How often one iteration of ``algorithm`` projects onto each block (counted by running
    the iteration rule on an empty state)."""
    from projc.backends.jax import algorithms

    counts: dict[int, int] = {}

    def count(state, block):
        counts[block] = counts.get(block, 0) + 1
        return state

    algorithms.get(algorithm).iterate(count, {}, blocks, {"lam": 0.5, "beta": beta})
    return counts


def communication(schedule, mesh: MeshShape, algorithm: str = "dr", beta: float = 1.0) -> dict[str, Any]:
    """The all-reduce traffic of one iteration and of the parameter read-out, per block.

    Counts the consensus means only (the parameters' and the hidden variables'); resharding
    between groups split differently (model parallel) is left to XLA and not counted.
    """
    prog = schedule.program
    sp = plan(prog, mesh)
    per_block = block_projections(algorithm, len(schedule.blocks), beta)
    blocks = []
    for b in schedule.blocks:
        nodes = [n for n, c in schedule.colour.items() if c == b.index]
        nbytes = sum(consensus_allreduce_bytes(prog, sp, _consensus_var(prog, n)) for n in nodes
                     if _consensus_var(prog, n) is not None)
        blocks.append({"index": b.index, "projections": per_block.get(b.index, 0), "allreduce_bytes": nbytes})
    params = [v for v, var in prog.variables.items() if var.kind is VarKind.PARAM]
    return {
        "mesh": mesh.as_dict(),
        "blocks": blocks,
        "allreduce_bytes_per_iteration": sum(b["projections"] * b["allreduce_bytes"] for b in blocks),
        "allreduce_bytes_readout": sum(consensus_allreduce_bytes(prog, sp, v) for v in params),
        "plan": sp,
    }


def _consensus_var(prog: Program, node: str) -> str | None:
    """The variable whose consensus projecting ``node`` computes (data clamps compute none)."""
    if node in prog.groups:
        return prog.groups[node].out
    kind, var = node.split(":", 1)
    return var if kind == "param" else None


# --- JAX: meshes, shardings, placing data ------------------------------------------------


def make_mesh(mesh: MeshShape):
    """A ``jax.sharding.Mesh`` over the first ``mesh.devices`` devices (every process's, in a
    multi-process run), as a (batch, model) grid."""
    import jax
    from jax.sharding import Mesh

    available = jax.device_count()
    if mesh.devices > available:
        hint = ("" if jax.process_count() > 1 else
                f"; for virtual CPU devices set XLA_FLAGS=--xla_force_host_platform_device_count={mesh.devices} "
                "before JAX starts")
        raise ProjcError(f"--devices {mesh.devices}: JAX sees {available} device(s){hint}")
    if jax.process_count() > 1 and mesh.devices != available:
        raise ProjcError(f"--devices {mesh.devices}: a multi-process run uses every device of every process "
                         f"({available})")
    grid = np.asarray(jax.devices()[:mesh.devices], dtype=object).reshape(mesh.data, mesh.model)
    return Mesh(grid, (BATCH, MODEL))


def named(mesh, spec: Spec):
    from jax.sharding import NamedSharding, PartitionSpec

    return NamedSharding(mesh, PartitionSpec(*spec))


def io_shardings(mesh, params: Mapping[str, Any]):
    """(in_shardings, out_shardings) of the step: parameters and statistics replicated, the
    minibatch and its labels split along the batch."""
    replicated, rows = named(mesh, ()), named(mesh, (BATCH,))
    param_sh = {k: replicated for k in params}
    return (param_sh, rows, rows), (param_sh, replicated)


def constrainer(sp: ShardingPlan, mesh) -> Callable[[dict], dict]:
    """``state -> state`` pinning every state array to its planned sharding (used on the
    initial state and after each block projection, so the scan carries a fixed layout)."""
    import jax

    shardings = {k: named(mesh, spec) for k, spec in sp.slots.items()}

    def constrain(state):
        # factored values (state.Lowrank, Shifted) are left to XLA's propagation: their
        # factors have other shapes than the copies the plan lays out
        return {k: jax.lax.with_sharding_constraint(v, shardings[k])
                if k in shardings and isinstance(v, jax.Array) else v for k, v in state.items()}

    return constrain


class ShardedStep:
    """A jitted step with input shardings; places host arrays on the mesh before calling it.

    Every process passes the whole minibatch (they all draw the same one); each device keeps
    only its slice (``jax.make_array_from_callback``), so the same call works on one process
    and on many. ``jitted`` is the function ``jax.export`` serialises.
    """

    def __init__(self, jitted: Callable, in_shardings, mesh):
        self.jitted, self.in_shardings, self.mesh = jitted, in_shardings, mesh

    def __call__(self, params, x, labels):
        import jax

        args = jax.tree.map(_place, (params, x, labels), self.in_shardings)
        return self.jitted(*args)


def _place(value, sharding):
    import jax

    if isinstance(value, jax.Array) and value.sharding.is_equivalent_to(sharding, value.ndim):
        return value
    host = np.asarray(value)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


__all__ = ["BATCH", "MODEL", "MeshShape", "ShardedStep", "ShardingPlan", "batch_axes", "block_projections",
           "communication", "consensus_allreduce_bytes", "constrainer", "io_shardings", "make_mesh", "named",
           "plan", "source_axis"]
