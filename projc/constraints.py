"""The constraint IR: what a projection program is made of (design.md, method.md section 1).

- A **variable** is a network value that carries state (a hidden activation, a parameter, the
  logits) or fixed data (an input, the labels).
- A **group** is a tensor-shaped family of independent scalar constraints of one kind (the
  B x M dot constraints of a dense layer are one group of shape (B, M)). It *produces* one
  variable (its output) and reads its inputs through **slots**.
- A slot is one family of edge copies: the group's copy of a variable, laid out as the group
  needs it by an :class:`~projc.index_map.IndexMap`. Every copy belongs to exactly two
  constraints: the group that reads it, and the producer of its variable (the producing group,
  with all the variable's copies as outputs weighted by their fan-out; a parameter's consensus;
  a data clamp). A slot on fixed data that a group uses as a coefficient (``linear``'s ``c``)
  is not a copy and carries no state.
"""

from __future__ import annotations

import dataclasses
from enum import Enum
from typing import Any

import numpy as np

from projc.index_map import IndexMap


class VarKind(str, Enum):
    DATA = "data"  # a model input, fixed per minibatch
    LABEL = "label"  # the targets of the loss
    PARAM = "param"  # learnable, consensus over its copies
    HIDDEN = "var"  # produced by a group


# Group kinds and the roles of their slots (design.md's constraint kinds).
KINDS: dict[str, tuple[str, ...]] = {
    "dot": ("a", "b"),  # out = sum(a * b, -1)
    "mul": ("a", "b"),  # out = a * b
    "linear": ("x", "c"),  # out = sum(c * x, -1) + d; c is fixed (data or constant)
    "sum_act": ("x",),  # out = act(sum_k x_k + d); slots x0, x1, ...
    "max": ("a",),  # out = max(a, -1)
    "identity": ("a",),  # out = a (inserted by bipartization)
    "concat": ("a",),  # out = concatenate(a0, a1, ..., axis): an identity on each part
    "loss": ("v",),  # the logits, moved by the loss's prox / projection
}


@dataclasses.dataclass
class Variable:
    name: str
    shape: tuple[int, ...]
    kind: VarKind
    dtype: str = "float32"
    producer: str | None = None  # the group that produces a HIDDEN variable

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


@dataclasses.dataclass
class Slot:
    role: str
    var: str
    imap: IndexMap
    copy: bool = True  # False: the group reads fixed data as a coefficient (no state)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.imap.shape


@dataclasses.dataclass
class Group:
    name: str
    kind: str
    shape: tuple[int, ...]  # the batch of independent scalar constraints
    slots: list[Slot]
    out: str | None  # the produced variable (None for the loss)
    attrs: dict[str, Any] = dataclasses.field(default_factory=dict)
    origin: tuple[str, ...] = ()  # the ONNX nodes this group came from

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def signature(self) -> tuple:
        """What must agree for two groups to run as one batched kernel."""
        attrs = tuple(sorted((k, repr(v)) for k, v in self.attrs.items() if not isinstance(v, np.ndarray)))
        return (self.kind, self.shape, tuple((s.role, s.shape, s.copy) for s in self.slots), attrs)


@dataclasses.dataclass
class Program:
    """Variables and constraint groups of one network at one batch size."""

    name: str
    batch_size: int
    variables: dict[str, Variable] = dataclasses.field(default_factory=dict)
    groups: dict[str, Group] = dataclasses.field(default_factory=dict)
    # network value name -> (variable, index map): where each lowered ONNX value lives
    views: dict[str, tuple[str, IndexMap]] = dataclasses.field(default_factory=dict)

    def add_variable(self, var: Variable) -> Variable:
        if var.name in self.variables:
            raise ValueError(f"variable {var.name!r} defined twice")
        self.variables[var.name] = var
        return var

    def add_group(self, group: Group) -> Group:
        if group.name in self.groups:
            raise ValueError(f"group {group.name!r} defined twice")
        self.groups[group.name] = group
        if group.out is not None:
            self.variables[group.out].producer = group.name
        return group

    def fresh(self, stem: str, table: dict) -> str:
        i = 0
        while f"{stem}{i}" in table:
            i += 1
        return f"{stem}{i}"

    def copies_of(self, var: str) -> list[tuple[Group, Slot]]:
        """Every (group, slot) holding copies of ``var``."""
        return [(g, s) for g in self.groups.values() for s in g.slots if s.var == var and s.copy]

    def fanout(self, var: str, mode: str = "exact") -> np.ndarray:
        """Per entry of ``var``, how many copies its producer writes: the output weight ``w``
        of the producer's exact projection (method.md section 1), ``G^T(1)`` summed over the
        copy slots. ``mode="pjax"`` gives the reference framework's unweighted rule (1)."""
        if mode not in ("exact", "pjax"):
            raise ValueError(f"fan-out mode {mode!r}: expected exact or pjax")
        shape = self.variables[var].shape
        if mode == "pjax":
            return np.ones(shape)
        total = np.zeros(shape)
        for _, slot in self.copies_of(var):
            total += slot.imap.counts()
        return total

    def state_size(self) -> int:
        """Number of floats in the state: every copy of every slot."""
        return sum(int(np.prod(s.shape)) for g in self.groups.values() for s in g.slots if s.copy)


def format_program(prog: Program) -> str:
    """The readable text form of a constraint program (golden tests, ``inspect --constraints``)."""
    lines = [f"program {prog.name} (batch {prog.batch_size}, state {prog.state_size():,} floats)"]
    for v in prog.variables.values():
        shape = ",".join(map(str, v.shape))
        by = f" <- {v.producer}" if v.producer else ""
        lines.append(f"  {v.kind.value:<6} %{v.name}: {v.dtype}[{shape}]{by}")
    for g in prog.groups.values():
        attrs = ", ".join(f"{k}={_fmt(v)}" for k, v in g.attrs.items())
        head = f"  {g.name} = {g.kind}[{','.join(map(str, g.shape))}]"
        out = f" -> %{g.out}" if g.out else ""
        origin = f"  # {', '.join(g.origin)}" if g.origin else ""
        lines.append(f"{head}{' {' + attrs + '}' if attrs else ''}{out}{origin}")
        for s in g.slots:
            kind = "copy" if s.copy else "read"
            lines.append(f"    {s.role}: {kind} %{s.var} |> {s.imap}  [{','.join(map(str, s.shape))}]")
    return "\n".join(lines) + "\n"


def _fmt(v: Any) -> str:
    if isinstance(v, np.ndarray):
        return f"<{v.dtype}{list(v.shape)}>" if v.size > 4 else np.array2string(v.reshape(-1), separator=",")
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


class ConstraintVerificationError(Exception):
    """The constraint program is malformed (a bug in a pass)."""


def verify_program(prog: Program) -> None:
    """Structural checks: slots fit their groups, variables exist, producers are consistent."""
    for g in prog.groups.values():
        if g.kind not in KINDS:
            raise ConstraintVerificationError(f"{g.name}: unknown kind {g.kind!r}")
        for s in g.slots:
            var = prog.variables.get(s.var)
            if var is None:
                raise ConstraintVerificationError(f"{g.name}.{s.role}: unknown variable %{s.var}")
            if tuple(s.imap.src_shape) != tuple(var.shape):
                raise ConstraintVerificationError(
                    f"{g.name}.{s.role}: map reads shape {s.imap.src_shape}, %{s.var} is {var.shape}")
            if g.kind != "concat" and tuple(s.shape[: len(g.shape)]) != tuple(g.shape):
                raise ConstraintVerificationError(
                    f"{g.name}.{s.role}: operand {s.shape} does not start with the group shape {g.shape}")
        if g.out is not None:
            out = prog.variables.get(g.out)
            if out is None or out.producer != g.name or out.shape != g.shape:
                raise ConstraintVerificationError(f"{g.name}: output %{g.out} is inconsistent")
    for v in prog.variables.values():
        if v.kind is VarKind.HIDDEN and v.producer not in prog.groups:
            raise ConstraintVerificationError(f"%{v.name}: hidden variable without a producer")
