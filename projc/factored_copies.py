"""Which copy slots the training step holds factored, and in how many floats.

A ``linear`` group whose coefficients are data rows moves each copy of its ``x`` slot along
its own row, and everything else writes a broadcast into that slot, so every iterate is
``broadcast(mean) + coef * rows`` exactly (``backends/jax/state.Lowrank``). A dense layer's
weight with one copy per data row, copied nowhere else and with fewer rows than inputs, is
also kept in Gram form (``state.GramLowrank``). The selection is a property of the program,
so ``projc inspect`` reports it without the backend.
"""

from __future__ import annotations

import numpy as np

from projc.constraints import Group, Program, Slot, VarKind
from projc.index_map import Broadcast, IndexMap

GRAM_LIMIT_BYTES = 2 ** 28  # the n x n Gram matrix, at most


def split_broadcasts(imap: IndexMap) -> tuple[IndexMap, IndexMap]:
    """``imap`` as ``tail . head``: ``tail`` the run of broadcasts it ends with (maybe none)."""
    steps = imap.steps
    cut = len(steps)
    while cut and isinstance(steps[cut - 1], Broadcast):
        cut -= 1
    head = IndexMap(imap.src_shape, steps[:cut])
    return head, IndexMap(head.shape, steps[cut:])


def slot_key(group: str, slot: Slot) -> str:
    """The state entry of one copy slot."""
    return f"{group}.{slot.role}"


def lowrank_slots(prog: Program) -> dict[str, tuple[Group, Slot]]:
    """State key -> (group, data slot) of every slot that can be held as a ``Lowrank``: the
    ``x`` copies of a ``linear`` group whose coefficients ``c`` are read from data (no copy),
    sent by an index map that ends in broadcasts (a dense layer's weight per sample, a
    convolution's kernel per sample and position, a recurrent input weight per step)."""
    found = {}
    for group in prog.groups.values():
        if group.kind != "linear":
            continue
        roles = {s.role: s for s in group.slots}
        x, c = roles.get("x"), roles.get("c")
        if x is not None and c is not None and x.copy and not c.copy and split_broadcasts(x.imap)[1].steps:
            found[slot_key(group.name, x)] = (group, c)
    return found


def gram_slots(prog: Program, lowrank: dict[str, tuple[Group, Slot]], itemsize: int = 4) -> dict[str, str]:
    """State key -> parameter, of the ``lowrank`` slots held in Gram form: a dense layer's
    weight, one copy per data row and no copy elsewhere, with fewer rows ``n`` than inputs
    ``N`` (so the ``n x n`` Gram matrix is the smaller product) and that matrix at most
    ``GRAM_LIMIT_BYTES``."""
    found = {}
    for key, (group, rows) in lowrank.items():
        x = next(s for s in group.slots if s.role == "x")
        steps, n = x.imap.steps, x.imap.shape[0]
        if (len(steps) == 1 and steps[0].axis == 0 and len(x.imap.src_shape) == 2
                and [step.axis for step in rows.imap.steps] == [1] and len(rows.imap.src_shape) == 2
                and prog.variables[x.var].kind is VarKind.PARAM and len(prog.copies_of(x.var)) == 1
                and n <= x.imap.shape[-1] and n * n * itemsize <= GRAM_LIMIT_BYTES):
            found[key] = x.var
    return found


def held(prog: Program) -> list[dict]:
    """Per factored slot: its key, variable, copies written out and floats held (the factors;
    the data rows are the minibatch's and not counted), and the form."""
    lowrank = lowrank_slots(prog)
    gram = gram_slots(prog, lowrank)
    rows = []
    for key, (group, _) in lowrank.items():
        x = next(s for s in group.slots if s.role == "x")
        shape = x.imap.shape
        coef = int(np.prod(shape[:-1]))
        if key in gram:  # w0, then e, coef and X w0^T (n x M each), and the n x n Gram matrix
            floats = int(np.prod(x.imap.src_shape)) + 3 * coef + shape[0] ** 2
        else:  # the mean, with its broadcast axes cut, and coef
            floats = int(np.prod(split_broadcasts(x.imap)[0].shape)) + coef
        rows.append({"key": key, "var": x.var, "copies": int(np.prod(shape)), "floats": floats,
                     "form": "gram" if key in gram else "lowrank"})
    return rows


__all__ = ["GRAM_LIMIT_BYTES", "gram_slots", "held", "lowrank_slots", "slot_key", "split_broadcasts"]
