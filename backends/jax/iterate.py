"""One step of the projection algorithms over a scheduled program (method.md section 3).

``BlockProjector.project(state, block)`` applies the projections of every constraint of one
block: each group projects its input copies together with the consensus of its output's
copies (weighted by the fan-out), then writes the projected output back to all those copies;
a parameter's consensus sets all its copies to their mean; a data clamp resets copies of data.
Constraints of one block share no copy, so the writes never collide. ``douglas_rachford`` is
``x <- (1 - lam) x + lam R_B(R_A(x))`` with ``R = 2P - I``.

First version: the kinds MLPs, CNNs and RNNs lower to, unrolled into one traced function.
"""

from __future__ import annotations

import copy
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from projc import factored_copies
from projc.backends.jax.projections import KINDS, LOSSES
from projc.backends.jax.projections.linear import linear_shift
from projc.backends.jax.state import (GramLowrank, Lowrank, Shifted, State, compact, consensus, copy_slots, dense, send,
                                      send_compact, slot_key)
from projc.constraints import Group, Slot, VarKind
from projc.passes.schedule_blocks import Schedule


class BlockProjector:
    """Projections onto the constraints of each block of ``schedule``, given a minibatch."""

    def __init__(self, schedule: Schedule, data: Mapping[str, jax.Array] | None = None, *,
                 fanout: str = "exact", loss_lambda: float = 5.0, compat: bool = False, dtype=jnp.float32,
                 lazy: bool = False, lowrank: bool = False, gram: bool = True):
        """``lazy``: a linear group with a data operand leaves its projected copies as
        :class:`~projc.backends.jax.state.Shifted` values (the algorithms and the consensus
        fold them; anything else writes them out). ``lowrank``: where such a group's copies
        are a broadcast (see :meth:`lowrank_slots`), the state holds them as
        :class:`~projc.backends.jax.state.Lowrank` across iterations, never written out;
        the state must then come from :meth:`initial_state`. ``gram``: those of them that
        :meth:`gram_slots` selects are held in Gram form (``False``: none, for comparisons)."""
        self.prog, self.colour = schedule.program, schedule.colour
        self.lazy = lazy or lowrank
        self._lowrank = self.lowrank_slots(self.prog) if lowrank else {}
        self._gram = {var: key for key, var in self.gram_slots(self.prog, self._lowrank, dtype).items()} if gram else {}
        self.blocks = len(schedule.blocks)
        self.data = {k: jnp.asarray(v, dtype) for k, v in (data or {}).items()}
        self.dtype, self.loss_lambda, self.compat = dtype, loss_lambda, compat
        fanout = "pjax" if compat else fanout
        self._nodes = {b: sorted(n for n, c in self.colour.items() if c == b) for b in set(self.colour.values())}
        # compact: broadcast to full size inside the program, not stored at it (see state.compact)
        self._weights = {v: jnp.asarray(compact(self.prog.fanout(v, fanout)), dtype)
                         for v, var in self.prog.variables.items() if var.kind is VarKind.HIDDEN}

    def weight(self, var: str) -> jax.Array:
        """The output weight ``w`` of ``var``'s producer (its fan-out), one per entry."""
        return jnp.broadcast_to(self._weights[var], self.prog.variables[var].shape)

    @staticmethod
    def lowrank_slots(prog) -> dict[str, tuple[Group, Slot]]:
        """State key -> (group, data slot) of every slot that can be held as a
        :class:`~projc.backends.jax.state.Lowrank` (:func:`projc.factored_copies.lowrank_slots`)."""
        return factored_copies.lowrank_slots(prog)

    @staticmethod
    def gram_slots(prog, lowrank: Mapping[str, tuple[Group, Slot]], dtype=jnp.float32) -> dict[str, str]:
        """State key -> parameter, of the ``lowrank`` slots held in Gram form
        (:class:`~projc.backends.jax.state.GramLowrank`, :func:`projc.factored_copies.gram_slots`)."""
        return factored_copies.gram_slots(prog, dict(lowrank), jnp.dtype(dtype).itemsize)

    def initial_state(self, values: Mapping[str, jax.Array]) -> State:
        """The state at which every copy equals its variable (the forward pass), with the
        :meth:`lowrank_slots` in factored form when the projector was built with ``lowrank``."""
        state = {}
        for group in self.prog.groups.values():
            for slot in group.slots:
                if slot.copy:
                    value = jnp.asarray(values[slot.var], self.dtype)
                    state[slot_key(group.name, slot)] = self._send(slot_key(group.name, slot), slot, value)
        return state

    def _send(self, key: str, slot: Slot, value: jax.Array):
        if key not in self._lowrank:
            return send(slot.imap, value)
        _, rows = self._lowrank[key]
        form = GramLowrank if self._gram.get(slot.var) == key else Lowrank
        return form.broadcast(send_compact(slot.imap, value), send_compact(rows.imap, self.data[rows.var]),
                              slot.imap.shape)

    def nodes(self, block: int) -> list[str]:
        return self._nodes.get(block, [])

    def with_data(self, data: Mapping[str, jax.Array]) -> "BlockProjector":
        """The same projector on another minibatch (traceable: ``data`` may hold tracers)."""
        other = copy.copy(self)
        other.data = {k: jnp.asarray(v, self.dtype) for k, v in data.items()}
        return other

    def project(self, state: State, block: int) -> State:
        new = dict(state)
        for node in self.nodes(block):
            if node in self.prog.groups:
                self._group(self.prog.groups[node], state, new)
            else:
                kind, var = node.split(":", 1)
                if kind == "param" and var in self._gram:  # the consensus, in the factors
                    new[self._gram[var]] = state[self._gram[var]].consensus()
                    continue
                value = consensus(self.prog, state, var, self.dtype) if kind == "param" else self.data[var]
                self._broadcast(var, value, new)
        return new

    def _broadcast(self, var: str, value, new: State) -> None:
        for key, slot in copy_slots(self.prog, var):
            new[key] = self._send(key, slot, value)

    def _operand(self, group: Group, i: int, state: State):
        slot = group.slots[i]
        if slot.copy:
            value = state[slot_key(group.name, slot)]
            return value if isinstance(value, Lowrank) else dense(value)
        if group.kind == "linear":  # constant coefficients: broadcastable, never materialised
            return send_compact(slot.imap, self.data[slot.var])
        return send(slot.imap, self.data[slot.var])

    def _group(self, group: Group, state: State, new: State) -> None:
        ops = {s.role: self._operand(group, i, state) for i, s in enumerate(group.slots)}
        if group.kind == "loss":
            key = slot_key(group.name, group.slots[0])
            loss = group.attrs["loss"]
            if loss == "margin":
                new[key] = LOSSES[loss](ops["v"], ops["y"])
            elif loss == "cross-entropy":
                new[key] = LOSSES[loss](ops["v"], ops["y"], self.loss_lambda, compat=self.compat)
            else:
                new[key] = LOSSES[loss](ops["v"], ops["y"], self.loss_lambda)
            return
        y = consensus(self.prog, state, group.out, self.dtype)
        w = self.weight(group.out)
        folded = self._folded_slot(group, ops)
        if isinstance(ops.get("x"), Lowrank):
            x = ops["x"]
            shift, y2 = linear_shift(x, y, x.rows, group.attrs.get("d", 0.0), w, cx=x.contract_rows())
            new[slot_key(group.name, folded)] = x.shifted(shift)
        elif folded is not None:
            shift, y2 = linear_shift(ops["x"], y, ops["c"], group.attrs.get("d", 0.0), w)
            new[slot_key(group.name, folded)] = Shifted(ops["x"], 1.0, shift, ops["c"])
        else:
            inputs, y2 = _KERNELS[group.kind](group, ops, y, w, self.compat)
            for slot, value in zip((s for s in group.slots if s.copy), inputs):
                new[slot_key(group.name, slot)] = value
        self._broadcast(group.out, y2, new)

    def _folded_slot(self, group: Group, ops):
        """The copy slot whose projection stays a :class:`Shifted` value, if any: under ``lazy``,
        the ``x`` copies of a linear group whose coefficients are data."""
        if not (self.lazy and group.kind == "linear" and "c" in ops):
            return None
        x_slot = next(s for s in group.slots if s.role == "x")
        return x_slot if x_slot.copy else None


def _dot(group, ops, y, w, compat):
    a, b, z = KINDS[group.kind](ops["a"], ops["b"], y, w, compat=compat)
    return (a, b), z


def _linear(group, ops, y, w, compat):
    c = ops["c"] if "c" in ops else group.attrs["c"]
    x, y2 = KINDS["linear"](ops["x"], y, c, group.attrs.get("d", 0.0), w)
    return (x,), y2


def _sum_act(group, ops, y, w, compat):
    d = group.attrs.get("d", 0.0)
    xs = [ops[f"x{i}"] for i in range(len(ops))]
    xs[0] = xs[0] + d  # the offset rides on the first input, and comes off again below
    params = {k: v for k, v in group.attrs.items() if k not in ("act", "d")}
    xs2, y2 = KINDS["sum_act"](tuple(xs), y, group.attrs["act"], w, compat=compat, **params)
    xs2 = list(xs2)
    xs2[0] = xs2[0] - d
    return tuple(xs2), y2


def _single(group, ops, y, w, compat):
    a, y2 = KINDS[group.kind](ops["a"], y, w)
    return (a,), y2


def _concat(group, ops, y, w, compat):
    """out = concatenate(parts): an identity constraint on each part's slice of the output."""
    axis = group.attrs["axis"]
    parts = [ops[f"a{i}"] for i in range(len(ops))]
    bounds = np.cumsum([p.shape[axis] for p in parts])[:-1]
    w = jnp.broadcast_to(w, y.shape)
    pairs = [KINDS["identity"](p, yi, wi) for p, yi, wi in
             zip(parts, jnp.split(y, bounds, axis), jnp.split(w, bounds, axis))]
    return tuple(a for a, _ in pairs), jnp.concatenate([b for _, b in pairs], axis)


_KERNELS = {"concat": _concat, "dot": _dot, "mul": _dot, "linear": _linear, "sum_act": _sum_act, "max": _single,
            "identity": _single}


def read_parameters(projector: BlockProjector, state: State) -> dict[str, jax.Array]:
    """Parameters from the consensus of their copies (method.md section 3)."""
    prog = projector.prog
    return {v: consensus(prog, state, v, projector.dtype)
            for v, var in prog.variables.items() if var.kind is VarKind.PARAM}


__all__ = ["BlockProjector", "read_parameters"]
