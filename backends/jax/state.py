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
from projc.factored_copies import slot_key, split_broadcasts
from projc.index_map import Broadcast, IndexMap

State = dict[str, jax.Array]


class Shifted:
    """``scale * base + coef[..., None] * rows``, kept unevaluated: a copy array after a
    projection that moved it along constant data rows (a ``linear`` group with a data operand).

    Douglas-Rachford reflects the projected copies and then takes their consensus. Written out,
    the reflection is a state-sized array that XLA materialises, because the consensus reads
    it through a matrix product; kept in this form, the consensus is a product with ``base``
    (the iterate, in memory anyway) plus a small ``coef^T rows`` product, and the reflection
    is computed inside the final elementwise pass (method.md section 4). Anything else that
    reads the value calls :func:`dense`.
    """

    def __init__(self, base: jax.Array, scale: float, coef: jax.Array, rows: jax.Array):
        self.base, self.scale, self.coef, self.rows = base, scale, coef, rows

    def dense(self) -> jax.Array:
        base = self.base if self.scale == 1.0 else self.scale * self.base
        return base + self.coef[..., None] * self.rows

    def combine(self, a: float, other, b: float):
        """``a * self + b * other`` for ``other`` the same base or a Shifted of it; else None."""
        if other is self.base:
            return Shifted(self.base, a * self.scale + b, a * self.coef, self.rows)
        if isinstance(other, Shifted) and other.base is self.base and other.rows is self.rows:
            return Shifted(self.base, a * self.scale + b * other.scale, a * self.coef + b * other.coef, self.rows)
        return None


@jax.tree_util.register_pytree_node_class
class Lowrank:
    """``broadcast(mean) + coef[..., None] * rows``, held so across iterations: the copies of a
    ``linear`` group's ``x`` slot whose coefficients are data rows and whose index map ends in
    broadcasts (a first dense layer's weight copies, one per sample; a first convolution's
    kernel, one per sample and position).

    Every write into such a slot is a value sent to its copies (a broadcast: its consensus or
    its producer) or the group's projection, which moves each copy along its own data row; the
    algorithms only take linear combinations of those. So every iterate of every algorithm
    keeps this form exactly, and the slot costs ``O(M N + B M)`` instead of ``B M N`` for a
    dense layer
    (method.md section 4: the copies of a constant operand's partner need not be written out).
    ``mean`` has size 1 along the broadcast axes, ``coef`` is ``shape[:-1]``, ``rows`` the
    data as the group reads it (constant within a minibatch).
    """

    def __init__(self, mean: jax.Array, coef: jax.Array, rows: jax.Array, shape: tuple[int, ...]):
        self.mean, self.coef, self.rows, self.shape = mean, coef, rows, tuple(shape)

    def tree_flatten(self):
        return (self.mean, self.coef, self.rows), self.shape

    @classmethod
    def tree_unflatten(cls, shape, children):
        return cls(*children, shape)

    @classmethod
    def broadcast(cls, mean: jax.Array, rows: jax.Array, shape) -> "Lowrank":
        """Every copy equal to ``mean`` (given with size-1 broadcast axes)."""
        return cls(mean, jnp.zeros(tuple(shape)[:-1], mean.dtype), rows, shape)

    @property
    def dtype(self):
        return self.mean.dtype

    def dense(self) -> jax.Array:
        return jnp.broadcast_to(self.mean, self.shape) + self.coef[..., None] * self.rows

    def combine(self, a: float, other, b: float):
        """``a * self + b * other`` for ``other`` a Lowrank of the same slot; else None."""
        if not isinstance(other, Lowrank):
            return None
        return Lowrank(a * self.mean + b * other.mean, a * self.coef + b * other.coef, self.rows, self.shape)

    def shifted(self, shift: jax.Array) -> "Lowrank":
        """``self + shift[..., None] * rows``: the group's projection of these copies."""
        return Lowrank(self.mean, self.coef + shift, self.rows, self.shape)

    def contract_rows(self) -> jax.Array:
        """``sum(rows * self, -1)``, shape ``shape[:-1]``: a matrix product with ``mean``
        and the rows' squared norms, never the written-out copies."""
        return _contract_compact(self.rows, self.mean, self.shape) + self.coef * jnp.sum(
            jnp.square(self.rows), -1)

    def sqnorm(self) -> jax.Array:
        """``sum(self.dense() ** 2)`` from the factors."""
        repeats = int(np.prod(self.shape)) // self.mean.size
        return (repeats * jnp.sum(jnp.square(self.mean))
                + 2 * jnp.sum(self.coef * _contract_compact(self.rows, self.mean, self.shape))
                + jnp.sum(jnp.square(self.coef) * jnp.sum(jnp.square(self.rows), -1)))

    def gather(self, imap: IndexMap, dtype) -> jax.Array:
        """``G^T(self)`` for the ``imap`` the slot was sent through (see :func:`split_broadcasts`):
        the broadcasts summed from the factors, then the adjoint of the map before them."""
        head, tail = split_broadcasts(imap)
        total = self.mean.astype(dtype)
        for step in reversed(tail.steps):
            total = (jnp.squeeze(total, step.axis) * step.size if total.shape[step.axis] == 1
                     else _sum_axis(total, step.axis))
        return gather(head, total + _gather_rank_one(tail, self, dtype), dtype)


@jax.tree_util.register_pytree_node_class
class GramLowrank(Lowrank):
    """A :class:`Lowrank` whose mean is itself kept as ``scale * w0 + e^T X / n``: for a dense
    layer's weight copies, one per data row (``shape = (n, M, N)``, ``rows = X[:, None]``),
    that are all the copies of a parameter.

    The parameter's consensus then only moves the projections into the mean (``e += coef``)
    and the group's contraction is ``scale * X w0^T + G e / n + coef |X|^2`` with ``G = X X^T``
    formed once per minibatch: one ``n x n x M`` product per iteration instead of two
    ``n x M x N`` ones (the consensus sum and ``X mean^T``), a saving where ``n < 2 N`` (the
    Gram form of factored AP, method.md section 4, carried over to every algorithm).
    ``w0``, ``p0 = X w0^T`` and ``gram`` are constant within the minibatch.
    """

    def __init__(self, scale, w0, e, coef, rows, p0, gram, shape):
        self.scale, self.w0, self.e, self.p0, self.gram = scale, w0, e, p0, gram
        self.coef, self.rows, self.shape = coef, rows, tuple(shape)

    def tree_flatten(self):
        return (self.scale, self.w0, self.e, self.coef, self.rows, self.p0, self.gram), self.shape

    @classmethod
    def tree_unflatten(cls, shape, children):
        return cls(*children, shape)

    @classmethod
    def broadcast(cls, mean: jax.Array, rows: jax.Array, shape) -> "GramLowrank":
        x = rows[:, 0]
        zeros = jnp.zeros(tuple(shape)[:-1], mean.dtype)
        return cls(jnp.ones((), mean.dtype), mean, zeros, zeros, rows, _mm(x, mean[0].T), _mm(x, x.T), shape)

    @property
    def dtype(self):
        return self.w0.dtype

    @property
    def mean(self) -> jax.Array:
        """The shared part, written out (``(1, M, N)``; one ``n x M x N`` product)."""
        return self.scale * self.w0 + (_mm(self.e.T, self.rows[:, 0]) / self.shape[0])[None]

    def _mean_rows(self) -> jax.Array:
        return self.scale * self.p0 + _mm(self.gram, self.e) / self.shape[0]

    def combine(self, a: float, other, b: float):
        if not isinstance(other, GramLowrank):
            return None
        return GramLowrank(a * self.scale + b * other.scale, self.w0, a * self.e + b * other.e,
                           a * self.coef + b * other.coef, self.rows, self.p0, self.gram, self.shape)

    def shifted(self, shift: jax.Array) -> "GramLowrank":
        return GramLowrank(self.scale, self.w0, self.e, self.coef + shift, self.rows, self.p0, self.gram, self.shape)

    def consensus(self) -> "GramLowrank":
        """Every copy set to the copies' mean: the parameter's consensus, all its copies here."""
        zero = jnp.zeros_like(self.coef)
        return GramLowrank(self.scale, self.w0, self.e + self.coef, zero, self.rows, self.p0, self.gram, self.shape)

    def contract_rows(self) -> jax.Array:
        return self._mean_rows() + self.coef * jnp.sum(jnp.square(self.rows), -1)

    def sqnorm(self) -> jax.Array:
        n = self.shape[0]
        mean_sq = (jnp.square(self.scale) * jnp.sum(jnp.square(self.w0)) + 2 * self.scale / n * jnp.sum(self.e * self.p0)
                   + jnp.sum(self.e * _mm(self.gram, self.e)) / n ** 2)
        return (n * mean_sq + 2 * jnp.sum(self.coef * self._mean_rows())
                + jnp.sum(jnp.square(self.coef) * jnp.sum(jnp.square(self.rows), -1)))

    def gather(self, imap: IndexMap, dtype) -> jax.Array:
        n = self.shape[0]
        total = n * self.scale * self.w0[0] + _mm((self.e + self.coef).T, self.rows[:, 0])
        return total.astype(dtype)


def _mm(a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)


def _contract_compact(a: jax.Array, b: jax.Array, shape) -> jax.Array:
    """``sum(a * b, -1)`` broadcast to ``shape[:-1]``, for ``a`` and ``b`` with size-1 axes, as
    one einsum (so XLA forms neither product at full size)."""
    letters = "abcdefghijklmnopqrstuvwxyz"[:len(shape)]

    def operand(x):
        kept = [i for i in range(len(shape) - 1) if x.shape[i] != 1] + [len(shape) - 1]
        return jnp.squeeze(x, tuple(i for i in range(len(shape)) if i not in kept)), "".join(letters[i] for i in kept)

    (xa, la), (xb, lb) = operand(a), operand(b)
    out = "".join(c for c in letters[:-1] if c in la or c in lb)
    total = jnp.einsum(f"{la},{lb}->{out}", xa, xb)
    full = [i for i in range(len(shape) - 1) if letters[i] in out]
    return jnp.broadcast_to(jnp.expand_dims(total, tuple(i for i in range(len(shape) - 1) if i not in full)),
                            tuple(shape[:-1]))


def dense(value) -> jax.Array:
    """The array a state value stands for (a :class:`Shifted` or :class:`Lowrank` written out)."""
    return value.dense() if isinstance(value, (Shifted, Lowrank)) else value


def settle(value):
    """A value as the iteration loop carries it: a :class:`Lowrank` as it is, anything else
    written out."""
    return value if isinstance(value, Lowrank) else dense(value)


def sqnorm(value) -> jax.Array:
    """``sum(value ** 2)`` of a state value (a :class:`Lowrank` from its factors)."""
    return value.sqnorm() if isinstance(value, Lowrank) else jnp.sum(jnp.square(dense(value)))


def send(imap: IndexMap, value: jax.Array) -> jax.Array:
    """``G(value)``: the copies a slot holds of ``value``."""
    return imap.apply(value, xp=jnp)


def send_compact(imap: IndexMap, value: jax.Array) -> jax.Array:
    """``G(value)`` with the axes of its final broadcasts of size 1, for read-only operands and
    factored copies: the kernels broadcast them, so XLA never writes a state-sized copy."""
    head, tail = split_broadcasts(imap)
    value = send(head, value)
    for step in tail.steps:
        value = jnp.expand_dims(value, step.axis)
    return value


def gather(imap: IndexMap, copies: jax.Array, dtype=jnp.float32) -> jax.Array:
    """``G^T(copies)``: each entry of the value receives the sum of its copies."""
    broadcasts = all(isinstance(step, Broadcast) for step in imap.steps)
    if isinstance(copies, Lowrank):
        return copies.gather(imap, dtype)
    if isinstance(copies, Shifted):
        if not broadcasts:
            return gather(imap, copies.dense(), dtype)
        return copies.scale * gather(imap, copies.base, dtype) + _gather_rank_one(imap, copies, dtype)
    if broadcasts:
        total = copies.astype(dtype)
        for step in reversed(imap.steps):
            total = _sum_axis(total, step.axis)
        return total
    transpose = jax.linear_transpose(partial(send, imap), jax.ShapeDtypeStruct(imap.src_shape, dtype))
    (total,) = transpose(copies.astype(dtype))
    return total


def _gather_rank_one(imap: IndexMap, value: Shifted, dtype) -> jax.Array:
    """``G^T(coef[..., None] * rows)`` for a broadcast-only ``imap``, as one einsum: the sum
    over the broadcast axes of a product whose ``rows`` may have size-1 axes."""
    labels = list(range(len(imap.src_shape)))
    for step in imap.steps:  # where each broadcast axis sits in the copies' shape
        labels.insert(step.axis, None)
    summed = {i for i, label in enumerate(labels) if label is None}
    ndim = len(labels)
    letters = "abcdefghijklmnopqrstuvwxyz"[:ndim]
    shape = value.coef.shape + (value.rows.shape[-1],)
    rows = value.rows.astype(dtype)
    squeeze = tuple(i for i in range(ndim) if rows.shape[i] == 1 and shape[i] != 1)
    row_letters = "".join(letters[i] for i in range(ndim) if i not in squeeze)
    out = "".join(letters[i] for i in range(ndim) if i not in summed)
    return jnp.einsum(f"{letters[:-1]},{row_letters}->{out}", value.coef.astype(dtype),
                      jnp.squeeze(rows, squeeze))


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


def compact(a: np.ndarray) -> np.ndarray:
    """``a`` with every axis along which it does not vary cut to length 1: the same values
    once broadcast back. A per-entry constant (a fan-out count, its mask) enters the compiled
    program as a literal; at full size it made an LSTM's module 32 MB at 8 steps and 247 MB at
    64, and XLA's compile time grew with it."""
    a = np.asarray(a)
    for axis in range(a.ndim):
        first = a.take([0], axis)
        if a.shape[axis] > 1 and np.array_equal(a, np.broadcast_to(first, a.shape)):
            a = first
    return a


def consensus(prog: Program, state: Mapping[str, jax.Array], var: str, dtype=jnp.float32) -> jax.Array:
    """The mean of ``var``'s copies, entry by entry (entries nobody reads come out as 0)."""
    slots = copy_slots(prog, var)
    total = sum(gather(s.imap, state[k], dtype) for k, s in slots)
    return mean_of_copies(total, compact(prog.fanout(var)), prog.variables[var].shape, dtype)


def mean_of_copies(total, counts: np.ndarray, shape, dtype) -> jax.Array:
    """``total / counts`` entry by entry, 0 where no copy is counted, at the variable's full
    ``shape`` (``total`` is a scalar 0 when nobody reads the variable, ``counts`` compact)."""
    mean = jnp.where(counts > 0, total / np.maximum(counts, 1), 0).astype(dtype)
    return jnp.broadcast_to(mean, shape)
