"""The state of a projection program in JAX: one array per copy slot (method.md section 1).

Every copy slot of every group holds its own tensor, laid out as the group reads it, so a
block's projections are plain elementwise/reduction kernels over whole arrays (and the batch
axis can be sharded). Sending a value to its copies applies the slot's index map ``G``;
gathering copies back onto the value applies the adjoint ``G^T`` (derived by
``jax.linear_transpose``, no hand-written inverse per shape op) and divides by the fan-out
``G^T(1)``: the consensus that the producer's projection and the parameter read-out use.
"""

from __future__ import annotations

from functools import partial
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from projc.constraints import Program, Slot
from projc.index_map import Broadcast, IndexMap

State = dict[str, jax.Array]


def slot_key(group: str, slot: Slot) -> str:
    """The state entry of one copy slot."""
    return f"{group}.{slot.role}"


def send(imap: IndexMap, value: jax.Array) -> jax.Array:
    """``G(value)``: the copies a slot holds of ``value``."""
    return imap.apply(value, xp=jnp)


def send_compact(imap: IndexMap, value: jax.Array) -> jax.Array:
    """``G(value)`` with broadcast axes of size 1, for read-only operands: the kernels
    broadcast them, so XLA never writes a state-sized copy of constant data."""
    if not all(isinstance(step, Broadcast) for step in imap.steps):
        return send(imap, value)
    for step in imap.steps:
        value = jnp.expand_dims(value, step.axis)
    return value


def gather(imap: IndexMap, copies: jax.Array, dtype=jnp.float32) -> jax.Array:
    """``G^T(copies)``: each entry of the value receives the sum of its copies."""
    if all(isinstance(step, Broadcast) for step in imap.steps):
        total = copies.astype(dtype)
        for step in reversed(imap.steps):
            total = _sum_axis(total, step.axis)
        return total
    transpose = jax.linear_transpose(partial(send, imap), jax.ShapeDtypeStruct(imap.src_shape, dtype))
    (total,) = transpose(copies.astype(dtype))
    return total


def _sum_axis(x: jax.Array, axis: int) -> jax.Array:
    """Sum over one axis. Over the leading axis (a weight's copies, one per sample) this is a
    matrix-vector product: XLA-CPU reduces over a major axis some 50x slower than it streams
    the same bytes (0.68 s against 12 ms for 256 x 64 x 784 floats; method.md section 4)."""
    lead, n = int(np.prod(x.shape[:axis])), x.shape[axis]
    if lead != 1 or x.ndim == 1:
        return jnp.sum(x, axis)
    rest = x.shape[axis + 1:]
    return (jnp.ones((1, n), x.dtype) @ x.reshape(n, -1)).reshape(rest)


def copy_slots(prog: Program, var: str) -> list[tuple[str, Slot]]:
    """(state key, slot) of every copy of ``var``."""
    return [(slot_key(g.name, s), s) for g, s in prog.copies_of(var)]


def init_state(prog: Program, values: Mapping[str, jax.Array], dtype=jnp.float32) -> State:
    """The state at which every copy equals its variable (the forward-pass state)."""
    state = {}
    for group in prog.groups.values():
        for slot in group.slots:
            if slot.copy:
                state[slot_key(group.name, slot)] = send(slot.imap, jnp.asarray(values[slot.var], dtype))
    return state


def consensus(prog: Program, state: Mapping[str, jax.Array], var: str, dtype=jnp.float32) -> jax.Array:
    """The mean of ``var``'s copies, entry by entry (entries nobody reads come out as 0)."""
    slots = copy_slots(prog, var)
    total = sum(gather(s.imap, state[k], dtype) for k, s in slots)
    counts = prog.fanout(var)
    return jnp.where(counts > 0, total / np.maximum(counts, 1), 0).astype(dtype)
