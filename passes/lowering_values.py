"""What a network value is during lowering: a view of a variable, a constant, or an open sum."""

from __future__ import annotations

import dataclasses

import numpy as np

from projc.index_map import IndexMap


@dataclasses.dataclass(frozen=True)
class Ref:
    """A tensor read from variable ``var`` through ``imap`` (shape ops are index maps)."""

    var: str
    imap: IndexMap

    @property
    def shape(self) -> tuple[int, ...]:
        return self.imap.shape


@dataclasses.dataclass(frozen=True)
class Const:
    """A tensor known when the program is compiled (a constant initializer).

    ``value`` may hold size-1 axes where the logical ``shape`` broadcasts, so that a constant
    operand of a big group (a fixed conv kernel read by every sample) is never materialised.
    """

    value: np.ndarray
    logical_shape: tuple[int, ...] | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.logical_shape if self.logical_shape is not None else self.value.shape)

    def full(self) -> np.ndarray:
        """The value at its logical shape (materialised)."""
        return np.broadcast_to(self.value, self.shape)


FAILED = object()  # the value of a node that could not be lowered (reported, not used)


@dataclasses.dataclass(frozen=True)
class OpenSum:
    """``sum(terms) + offset`` not yet given a variable: an activation that follows fuses it
    into one ``sum_act`` constraint (a bias add and its ReLU), anything else materialises it."""

    terms: tuple[Ref, ...]
    offset: np.ndarray
    origin: tuple[str, ...]
    name: str = ""  # the network value it stands for, named when it is materialised

    @property
    def shape(self) -> tuple[int, ...]:
        return self.terms[0].shape


Value = Ref | Const | OpenSum
