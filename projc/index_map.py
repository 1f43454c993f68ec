"""Index maps: how a constraint's operand reads a variable (method.md section 1).

Shape operations impose no constraint. A consumer reads a producer's value through a chain of
gather-like steps (reshape, transpose, broadcast, take along an axis with -1 meaning a constant
zero, for padding). The map is linear, so the adjoint ``G^T`` gathers the consumers' copies back
onto the value; ``G^T(1)`` counts how many copies each entry of the value has (its fan-out).
Steps are hashable, so isomorphic maps compare equal and groups can be stacked.
"""

from __future__ import annotations

import dataclasses
import hashlib
from functools import cached_property
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class Reshape:
    shape: tuple[int, ...]

    def out_shape(self, shape):
        return self.shape

    def apply(self, xp, x):
        return xp.reshape(x, self.shape)

    def adjoint(self, y, in_shape):
        return np.reshape(y, in_shape)

    def __str__(self):
        return f"reshape{list(self.shape)}"


@dataclasses.dataclass(frozen=True)
class Transpose:
    perm: tuple[int, ...]

    def out_shape(self, shape):
        return tuple(shape[p] for p in self.perm)

    def apply(self, xp, x):
        return xp.transpose(x, self.perm)

    def adjoint(self, y, in_shape):
        return np.transpose(y, np.argsort(self.perm))

    def __str__(self):
        return f"transpose{list(self.perm)}"


@dataclasses.dataclass(frozen=True)
class Broadcast:
    """Insert a new axis at ``axis`` holding ``size`` copies."""

    axis: int
    size: int

    def out_shape(self, shape):
        return (*shape[: self.axis], self.size, *shape[self.axis:])

    def apply(self, xp, x):
        return xp.broadcast_to(xp.expand_dims(x, self.axis), self.out_shape(x.shape))

    def adjoint(self, y, in_shape):
        return np.sum(y, axis=self.axis)

    def __str__(self):
        return f"bcast({self.axis},{self.size})"


@dataclasses.dataclass(frozen=True, eq=False)
class Take:
    """Replace axis ``axis`` by the axes of ``indices``; index -1 reads a constant zero."""

    axis: int
    indices: np.ndarray

    @cached_property
    def _key(self) -> tuple:
        digest = hashlib.sha1(np.ascontiguousarray(self.indices, np.int64).tobytes()).hexdigest()
        return (self.axis, self.indices.shape, digest)

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, Take) and self._key == other._key

    def __hash__(self) -> int:
        return hash(self._key)

    def out_shape(self, shape):
        return (*shape[: self.axis], *self.indices.shape, *shape[self.axis + 1:])

    def apply(self, xp, x):
        idx = np.asarray(self.indices)
        if (idx >= 0).all():
            return xp.take(x, idx, axis=self.axis)
        padded = xp.concatenate([x, xp.zeros_like(xp.take(x, np.array([0]), axis=self.axis))], self.axis)
        return xp.take(padded, np.where(idx < 0, x.shape[self.axis], idx), axis=self.axis)

    def adjoint(self, y, in_shape):
        idx = np.asarray(self.indices)
        k, a = idx.ndim, self.axis
        y = np.asarray(y)
        # the axes of the indices first, rows of everything else
        rows = np.moveaxis(y, list(range(a, a + k)), list(range(k))).reshape(idx.size, -1)
        flat = idx.reshape(-1)
        out = np.zeros((in_shape[a], rows.shape[1]), np.result_type(y, np.float64))
        np.add.at(out, flat[flat >= 0], rows[flat >= 0])  # index -1 read the constant zero
        return np.moveaxis(out.reshape((in_shape[a], *in_shape[:a], *in_shape[a + 1:])), 0, a)

    def __str__(self):
        idx = np.asarray(self.indices)
        if idx.ndim == 1 and idx.size > 1:
            body, pads = idx[idx >= 0], int((idx < 0).sum())
            if body.size and (np.diff(body) == 1).all() and (idx[: pads] < 0).all():
                # a contiguous range, possibly shifted in from zeros (a recurrent read of t-1)
                zeros = f"{pads} zero, " if pads else ""
                return f"take({self.axis}, {zeros}{body[0]}:{body[-1] + 1})"
        pad = ", pad" if (idx < 0).any() else ""
        return f"take({self.axis}, {list(idx.shape)}{pad})"


Step = Reshape | Transpose | Broadcast | Take


def _is_full_range(step: Take, shape: tuple[int, ...]) -> bool:
    idx = np.asarray(step.indices)
    return idx.ndim == 1 and idx.size == shape[step.axis] and bool((idx == np.arange(idx.size)).all())


@dataclasses.dataclass(frozen=True)
class IndexMap:
    """A chain of steps from a tensor of shape ``src_shape`` to an operand tensor."""

    src_shape: tuple[int, ...]
    steps: tuple[Step, ...] = ()

    @cached_property
    def _shapes(self) -> tuple[tuple[int, ...], ...]:
        """The shape before each step, and after the last."""
        shapes = [self.src_shape]
        for step in self.steps:
            shapes.append(tuple(step.out_shape(shapes[-1])))
        return tuple(shapes)

    @cached_property
    def shape(self) -> tuple[int, ...]:
        return self._shapes[-1]

    def then(self, *steps: Step) -> "IndexMap":
        """This map followed by ``steps``, simplified: no-op steps are dropped, consecutive
        reshapes and consecutive transposes merge (so isomorphic maps print and hash alike)."""
        kept = list(self.steps)
        for step in steps:
            prev = kept[-1] if kept else None
            if isinstance(step, Reshape) and isinstance(prev, Reshape):
                kept[-1] = step
            elif isinstance(step, Transpose) and isinstance(prev, Transpose):
                kept[-1] = Transpose(tuple(prev.perm[p] for p in step.perm))
            else:
                kept.append(step)
            last = kept[-1]
            before = IndexMap(self.src_shape, tuple(kept[:-1])).shape
            if (isinstance(last, Reshape) and tuple(last.shape) == tuple(before)) or (
                isinstance(last, Transpose) and last.perm == tuple(range(len(before)))
            ) or (isinstance(last, Take) and _is_full_range(last, before)):
                kept.pop()
        return IndexMap(self.src_shape, tuple(kept))

    def compose(self, other: "IndexMap") -> "IndexMap":
        """``other`` applied after this map (``other.src_shape`` must be this map's shape)."""
        if other.src_shape != self.shape:
            raise ValueError(f"cannot compose maps: {self.shape} feeds {other.src_shape}")
        return self.then(*other.steps)

    def apply(self, x: Any, xp: Any = np) -> Any:
        """The operand read from ``x`` (NumPy by default; pass ``jax.numpy`` in the backend)."""
        for step in self.steps:
            x = step.apply(xp, x)
        return x

    def _pull_back(self, y: np.ndarray, upto: int) -> np.ndarray:
        """The adjoints of the first ``upto`` steps, last first, applied to ``y`` (shaped as
        after those steps)."""
        for step, in_shape in zip(reversed(self.steps[:upto]), reversed(self._shapes[:upto])):
            y = step.adjoint(y, in_shape)
        return np.reshape(y, self.src_shape)

    def adjoint(self, copies: np.ndarray) -> np.ndarray:
        """``G^T``: add every operand entry back onto the source entry it reads (NumPy)."""
        y = np.asarray(copies, np.result_type(copies, np.float64)).reshape(self.shape)
        return self._pull_back(y, len(self.steps))

    def counts(self) -> np.ndarray:
        """``G^T(1)``: how many operand entries read each source entry.

        Walked back step by step with the count kept as one number while it is constant (a
        weight broadcast over the batch has tens of millions of copies: none materialised).
        """
        return self._counts.copy()

    @cached_property
    def _counts(self) -> np.ndarray:
        upto, level = len(self.steps), 1.0
        while upto and not isinstance(self.steps[upto - 1], Take):  # constant until a take
            step = self.steps[upto - 1]
            level *= step.size if isinstance(step, Broadcast) else 1
            upto -= 1
        return self._pull_back(np.full(self._shapes[upto], level), upto)

    def __str__(self) -> str:
        return " |> ".join(str(s) for s in self.steps) if self.steps else "id"


def identity_map(shape: tuple[int, ...]) -> IndexMap:
    return IndexMap(tuple(shape))
