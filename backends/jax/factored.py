"""Factored alternating projections: AP without the (B, M, N) copies (method.md section 4).

In AP, ``x <- P_1(P_0(x))``, block 1 ends every iteration by writing each variable it
produces (a group's output, a parameter's consensus, a data clamp) to all of that variable's
copies, so at the start of an iteration all copies of a variable are equal (the forward-pass
state is of that form too). A dense layer in block 0 is a ``dot`` or ``linear`` group of shape
``(R, C)`` whose operands ``(R, C, N)`` repeat the rows of an ``(R, N)`` matrix along the
columns and the rows of a ``(C, N)`` matrix along the rows. Its projection then needs only

- ``p = H W^T`` (a matmul) and the row norms, then the scalar solve on ``R x C`` scalars: the
  dot solver of ``projections/dot.py`` takes ``U = (q + 2p)/4`` and ``V = (q - 2p)/4`` with
  ``q_ij = |h_i|^2 + |w_j|^2``; a linear group needs ``c.x`` only;
- and, for block 1, only the consensus of the projected copies, i.e. their sums over the
  broadcast axis, which are matmuls again. With ``S = (cu + cv)/2``, ``D = (cu - cv)/2``
  (``cu, cv, eu, ev`` the solver's coefficients of ``u = a + b``, ``v = a - b`` and of the unit
  vector ``e``), ``a'_ij = S_ij h_i + D_ij w_j + (eu + ev)_ij/2 e``, so
  ``sum_j a'_ij = h_i sum_j S_ij + (D W)_i + e sum_j (eu + ev)_ij/2``; ``b'`` likewise with
  ``eu - ev``. A linear group ``y = c.x + d`` with constant rows ``c`` moves every copy
  ``x_ij`` by ``K_ij c_i`` (``K = w r/(1 + w |c|^2)``), so ``sum_i x'_ij = R x_j + (K^T C)_j``.

The state this path carries is the common value of every factored variable plus the small
copies that stay materialised, not the big copies: ``O(BN + NM + BM)`` per dense layer.

**Exactness condition** (checked by :func:`plan`). A group is factored when

1. it is a ``dot`` (both operands copies) or a ``linear`` group (operand ``x`` a copy, ``c`` a
   read of fixed data through a slot), of rank-2 shape ``(R, C)``;
2. it lies in block 0, the block AP projects first (so its copies are equal when it is
   projected: block 1, which writes them all from one value, ran just before);
3. one operand's index map ends in ``bcast(1, C)`` and the other's in ``bcast(0, R)``; what
   comes before (any reshape/transpose/take, padding included) maps the variable onto the
   ``(R, N)`` or ``(C, N)`` matrix whose rows the copies repeat;
4. every copied variable is produced in block 1 (by a group, a parameter consensus or a data
   clamp): guaranteed by the two-colouring, checked anyway.

**Gram form of a data layer.** A linear group ``y = c.x + d`` whose ``c`` is data (an
``(n, N)`` matrix ``X``, fixed for the minibatch) and whose ``x`` is a parameter copied nowhere
else, through a one-to-one map onto an ``(m, N)`` matrix ``M``, moves ``M`` by ``K^T X / n`` per
iteration (the consensus of ``n`` copies). With ``A_k`` the sum of the ``K``s so far,
``M_k = M_0 + A_k^T X / n`` and ``X M_k^T = X M_0^T + G A_k / n``, ``G = X X^T``: one
``(n, n) x (n, m)`` product per iteration instead of ``X M^T`` and ``K^T X`` (each
``n m N``), with ``G`` and ``X M_0^T`` formed once per minibatch and ``M`` only when read out.
The residual's ``n |K^T X / n|^2`` is ``sum(K * G K) / n`` from the same product. It is used
where it saves work, ``n <= N`` (a dense first layer at a batch no larger than its input width).

Every other constraint keeps its materialised copies and its ordinary projection. The
iterates equal materialised AP's up to rounding. The path needs the ``ap`` algorithm, a
two-block schedule and one device.

Diagnostics match the materialised ones: the residual ``|x_{k+1} - x_k|`` counts a factored
variable's change once per copy, and the violation ``|P_1(s) - s|`` at the shadow
``s = P_0(x)`` expands ``sum_ij |x'_i - a'_ij|^2`` into matrix products.

Float32: ``V = (q - 2p)/4`` cancels when some ``h_i ~ w_j`` (``U`` when ``h_i ~ -w_j``), the case
the dot recipe avoids by reducing ``|a - b|^2`` directly, and ``S h + D w`` then cancels too.
Such pairs (``min(U, V) < 1e-2 q``; at most ``max(R, C)`` of them, the worst first) are solved
from their own vectors as ``projections/dot.py`` does and leave the matmuls; with them fixed
the factored dot is as accurate as the materialised one (tests/backend/test_factored.py).
Pairs beyond that budget keep the cancellation (a degenerate layer, not seen in MLPs).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from projc.backends.jax.algorithms import distance
from projc.backends.jax.iterate import _KERNELS, BlockProjector  # the materialised groups' kernels
from projc.backends.jax.program_forward import forward_values
# the dot operator's scalar solver, reused on (U, V, z, 1/w) built from the factored quantities
from projc.backends.jax.projections.dot import _COMPAT_STEPS, _compat_newton, _solve
from projc.backends.jax.state import compact, gather, mean_of_copies, send, slot_key
from projc.constraints import Group, Program, Slot, VarKind
from projc.errors import ProjcError
from projc.index_map import Broadcast, IndexMap
from projc.passes.schedule_blocks import Schedule

MODES = ("auto", "on", "off")
_HIGHEST = lax.Precision.HIGHEST  # no reduced-precision matmuls (TF32 on GPUs)


# --- the plan: which groups factor --------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Side:
    """One operand of a factored group: the ``(n, N)`` matrix its copies repeat."""

    role: str
    var: str
    prefix: IndexMap  # the variable -> the matrix (the slot's map without its last broadcast)
    copy: bool  # False: ``c`` of a linear group, read from the data


@dataclasses.dataclass(frozen=True)
class FactoredGroup:
    """A block-0 ``dot``/``linear`` group of shape ``(R, C)``, kept as its two matrices."""

    name: str
    kind: str
    out: str
    row: Side  # an (R, N) matrix, broadcast along the columns
    col: Side  # a (C, N) matrix, broadcast along the rows


@dataclasses.dataclass(frozen=True)
class Plan:
    """The factored groups of a schedule and the variables whose copies they hold."""

    groups: dict[str, FactoredGroup]
    variables: tuple[str, ...]  # variables carried as one value (every factored side's var)
    reason: str | None = None  # why nothing factors (None when something does)

    def __bool__(self) -> bool:
        return bool(self.groups)


def _side(slot: Slot, axis: int, size: int) -> Side | None:
    """The slot as a matrix broadcast at ``axis`` (``size`` copies), or None."""
    last = slot.imap.steps[-1] if slot.imap.steps else None
    if not (isinstance(last, Broadcast) and last.axis == axis and last.size == size):
        return None
    prefix = IndexMap(slot.imap.src_shape, slot.imap.steps[:-1])
    return Side(slot.role, slot.var, prefix, slot.copy) if len(prefix.shape) == 2 else None


def _producer_node(prog: Program, var: str) -> str:
    v = prog.variables[var]
    if v.kind is VarKind.HIDDEN:
        return v.producer
    return f"{'param' if v.kind is VarKind.PARAM else 'data'}:{var}"


def factor_group(prog: Program, colour: Mapping[str, int], group: Group) -> FactoredGroup | str:
    """The group's factored form, or the reason it does not factor (the module's conditions)."""
    if group.kind not in ("dot", "linear"):
        return f"{group.kind} groups do not factor"
    if colour.get(group.name) != 0:
        return "not in the block AP projects first"
    if len(group.shape) != 2 or len(group.slots) != 2:
        return f"shape {group.shape}: only rank-2 (rows, columns) groups factor"
    rows, cols = group.shape
    sides = {}
    for slot in group.slots:
        side = _side(slot, 1, cols) or _side(slot, 0, rows)
        if side is None:
            return f"operand {slot.role} is not a matrix broadcast over one group axis"
        sides["row" if _side(slot, 1, cols) else "col"] = side
    if set(sides) != {"row", "col"}:
        return "both operands broadcast over the same axis"
    by_role = {s.role: s for s in sides.values()}
    if group.kind == "dot" and not (by_role["a"].copy and by_role["b"].copy):
        return "a dot operand is not a copy"
    if group.kind == "linear" and (not by_role["x"].copy or by_role["c"].copy):
        return "a linear group must copy x and read c"
    for side in sides.values():
        if side.copy and colour.get(_producer_node(prog, side.var)) != 1:
            return f"%{side.var} is not produced in the other block"
    return FactoredGroup(group.name, group.kind, group.out, sides["row"], sides["col"])


def plan(schedule: Schedule) -> Plan:
    """Which groups of a two-block schedule factor under AP (the module's exactness condition)."""
    prog, colour = schedule.program, schedule.colour
    if len(schedule.blocks) != 2:
        return Plan({}, (), f"factored AP needs a two-block schedule, this one has {len(schedule.blocks)}")
    groups, reasons = {}, []
    for group in prog.groups.values():
        found = factor_group(prog, colour, group)
        if isinstance(found, FactoredGroup):
            groups[group.name] = found
        elif group.kind in ("dot", "linear"):
            reasons.append(f"{group.name}: {found}")
    variables = tuple(sorted({s.var for g in groups.values() for s in (g.row, g.col) if s.copy}))
    reason = None if groups else "no dot/linear group factors" + (f" ({'; '.join(reasons)})" if reasons else "")
    return Plan(groups, variables, reason)


def choose(schedule: Schedule, algorithm: str, mode: str = "auto", devices: int = 1) -> Plan | None:
    """The plan to run factored, or None for the materialised path.

    ``mode``: ``"off"`` never; ``"auto"`` whenever the algorithm is AP on one device and some
    group factors; ``"on"`` like auto but a clear error when it cannot apply.
    """
    if mode not in MODES:
        raise ProjcError(f"factored {mode!r}: expected one of {', '.join(MODES)}")
    if mode == "off":
        return None
    if algorithm != "ap":
        reason = f"factored iterations exist for alternating projections only, not {algorithm!r}"
    elif devices != 1:
        reason = "factored AP runs on one device"
    else:
        found = plan(schedule)
        reason = found.reason
        if found:
            return found
    if mode == "on":
        raise ProjcError(f"factored AP does not apply: {reason}")
    return None


# --- factored kernels -----------------------------------------------------------------------


def _mm(x, y):
    return jnp.matmul(x, y, precision=_HIGHEST)


# Pairs with min(U, V) < _NEAR q are solved from their own vectors: there q +- 2p loses
# log10(1/_NEAR) more digits than the recipe's direct reduction, and S a + D b cancels.
_NEAR = 1e-2


@dataclasses.dataclass
class Projected:
    """A factored side after the projection: copy ``(i, j)`` is ``s x_i + d y_j + e u``, with
    ``x`` this side's matrix, ``y`` the other's, ``u`` the unit vector of equal entries, and the
    coefficient matrices indexed (this side, other side). Near pairs (``fix``) have zero
    coefficients there and carry their projected copies explicitly."""

    x: jax.Array
    y: jax.Array
    s: jax.Array
    d: jax.Array
    e: jax.Array
    fix: "NearPairs | None" = None

    def total(self) -> jax.Array:
        """The sum of the projected copies over the broadcast axis, a matrix like ``x``."""
        out = jnp.sum(self.s, 1)[:, None] * self.x + _mm(self.d, self.y)
        out = out + (jnp.sum(self.e, 1) / float(np.sqrt(self.x.shape[1])))[:, None]
        if self.fix is not None:
            out = out + jax.ops.segment_sum(self.fix.masked(), self.fix.own, self.x.shape[0])
        return out

    def deviation(self, x_new: jax.Array) -> jax.Array:
        """``sum_ij |x_new_i - copy_ij|^2`` from matrix products only (and the near pairs)."""
        delta, root = x_new - self.x, float(np.sqrt(self.x.shape[1]))
        al, be, ga = 1 - self.s, -self.d, -self.e  # x_new - copy = delta + al x + be y + ga u
        xx, yy = jnp.sum(self.x * self.x, 1), jnp.sum(self.y * self.y, 1)
        xe, ye = jnp.sum(self.x, 1) / root, jnp.sum(self.y, 1) / root
        dd, dx, de = jnp.sum(delta * delta, 1), jnp.sum(delta * self.x, 1), jnp.sum(delta, 1) / root
        terms = (dd[:, None] + al * al * xx[:, None] + be * be * yy[None, :] + ga * ga
                 + 2 * al * dx[:, None] + 2 * be * _mm(delta, self.y.T) + 2 * ga * de[:, None]
                 + 2 * al * be * _mm(self.x, self.y.T) + 2 * al * ga * xe[:, None] + 2 * be * ga * ye[None, :])
        if self.fix is not None:
            f = self.fix
            exact = jnp.sum(jnp.square(x_new[f.own] - f.copies), 1)
            terms = terms.at[f.own, f.other].set(jnp.where(f.valid, exact, terms[f.own, f.other]))
        return jnp.maximum(jnp.sum(terms), 0)


@dataclasses.dataclass
class NearPairs:
    """Up to k pairs solved one by one: indices on this side and the other, and their copies."""

    own: jax.Array
    other: jax.Array
    valid: jax.Array
    copies: jax.Array  # (k, N) projected copies of this side's operand

    def masked(self) -> jax.Array:
        return jnp.where(self.valid[:, None], self.copies, 0)


def _near_pairs(rows, cols, big_u, big_v, q):
    """Up to k = max(R, C) pairs prone to cancellation: indices ``(i, j)`` and which are real,
    the k of least ``min(U, V) / q``.

    Usually no pair is near: then ``top_k`` is skipped (under ``lax.cond``) and every entry
    points one past the last row, where gathers clamp and scatters drop. XLA-CPU's TopK over
    the 256 x 10 pairs of an MNIST output layer takes about 70 us, a tenth of a factored AP
    iteration (a ``nonzero`` pass is no cheaper: its cumulative sum is a quadratic
    reduce-window on CPU)."""
    n_rows, n_cols = big_u.shape
    ratio = jnp.where(q > 0, jnp.minimum(big_u, big_v) / jnp.where(q > 0, q, 1), 1).ravel()
    k = min(n_rows * n_cols, max(n_rows, n_cols))
    flat = lax.cond(jnp.any(ratio < _NEAR), lambda: lax.top_k(-ratio, k)[1].astype(jnp.int32),
                    lambda: jnp.full((k,), n_rows * n_cols, jnp.int32))
    i, j = flat // n_cols, flat % n_cols
    return i, j, ratio.at[flat].get(mode="fill", fill_value=1) < _NEAR


def _dot(fg: FactoredGroup, rows, cols, z, w, compat):
    """A factored dot group: ``(projected sides by role, z')``."""
    p = _mm(rows, cols.T)
    q = jnp.sum(rows * rows, 1)[:, None] + jnp.sum(cols * cols, 1)[None, :]
    if compat:  # PJAX solves from p and q itself: a' = (a + t b)/(1 - t^2), z' = z - t
        t = lax.fori_loop(0, _COMPAT_STEPS, lambda _, t: _compat_newton(t, p, q, z), jnp.zeros_like(p))
        s, d = 1 / (1 - t * t), t / (1 - t * t)
        zero = jnp.zeros_like(s)
        return {fg.row.role: Projected(rows, cols, s, d, zero),
                fg.col.role: Projected(cols, rows, s.T, d.T, zero.T)}, z - t
    # clamped: rounding in q +- 2p must not make a squared norm negative
    big_u, big_v = jnp.maximum(0.25 * (q + 2 * p), 0), jnp.maximum(0.25 * (q - 2 * p), 0)
    i, j, valid = _near_pairs(rows, cols, big_u, big_v, q)
    a, b = (rows[i], cols[j]) if fg.row.role == "a" else (cols[j], rows[i])
    big_u = big_u.at[i, j].set(jnp.where(valid, 0.25 * jnp.sum(jnp.square(a + b), 1), big_u[i, j]))
    big_v = big_v.at[i, j].set(jnp.where(valid, 0.25 * jnp.sum(jnp.square(a - b), 1), big_v[i, j]))
    shape = jnp.broadcast_shapes(big_u.shape, z.shape, jnp.shape(w))
    cu, eu, cv, ev, z2 = _solve(*(jnp.broadcast_to(x, shape) for x in (big_u, big_v, z, 1 / w)))
    # the near pairs' copies as dot.py forms them, from u = a + b and v = a - b
    e = float(1 / np.sqrt(a.shape[-1]))
    u_part = cu[i, j][:, None] * (a + b) + (eu[i, j] * e)[:, None]
    v_part = cv[i, j][:, None] * (a - b) + (ev[i, j] * e)[:, None]
    a2, b2 = 0.5 * (u_part + v_part), 0.5 * (u_part - v_part)
    keep = jnp.ones_like(cu).at[i, j].set(jnp.where(valid, 0, 1))  # near pairs leave the matmuls
    s, d = keep * 0.5 * (cu + cv), keep * 0.5 * (cu - cv)
    e_a, e_b = keep * 0.5 * (eu + ev), keep * 0.5 * (eu - ev)
    row_copies, col_copies, e_row, e_col = (a2, b2, e_a, e_b) if fg.row.role == "a" else (b2, a2, e_b, e_a)
    return {fg.row.role: Projected(rows, cols, s, d, e_row, NearPairs(i, j, valid, row_copies)),
            fg.col.role: Projected(cols, rows, s.T, d.T, e_col.T, NearPairs(j, i, valid, col_copies))}, z2


def _linear_solve(fg: FactoredGroup, c, p, y, w, d_offset):
    """The scalar part of a linear group: ``(K, y')`` from ``p = c.x`` per pair."""
    cc = jnp.sum(c * c, 1)
    cc = cc[None, :] if fg.row.role == "x" else cc[:, None]
    k = (y - p - d_offset) / (1 + w * cc)
    return jnp.broadcast_to(w * k, k.shape), y - k


def _linear_side(fg: FactoredGroup, rows, cols, big_k) -> Projected:
    one = jnp.ones_like(big_k)
    if fg.row.role == "x":
        return Projected(rows, cols, one, big_k, jnp.zeros_like(big_k))
    return Projected(cols, rows, one.T, big_k.T, jnp.zeros_like(big_k.T))


def _linear(fg: FactoredGroup, rows, cols, y, w, d_offset):
    """A factored linear group ``y = c.x + d``: x's copies move by ``K_ij c``."""
    c = cols if fg.row.role == "x" else rows
    big_k, y2 = _linear_solve(fg, c, _mm(rows, cols.T), y, w, d_offset)
    return {"x": _linear_side(fg, rows, cols, big_k)}, y2


@dataclasses.dataclass(frozen=True)
class GramGroup:
    """A factored linear group run in Gram form (module docstring): ``x`` side ``var`` is held
    as ``M_0 + A^T X / n`` with ``A`` in (data rows, parameter rows) orientation."""

    group: FactoredGroup
    var: str
    n: int  # rows of the data matrix X: the copies of each entry of M

    @property
    def x_is_row(self) -> bool:
        return self.group.row.role == "x"

    def to_group(self, a: jax.Array) -> jax.Array:
        """(data rows, parameter rows) -> the group's (rows, columns) orientation."""
        return a.T if self.x_is_row else a


def gram_group(prog: Program, fg: FactoredGroup, itemsize: int = 4) -> GramGroup | None:
    """The group in Gram form, or None where that is not exact or would not save work."""
    if fg.kind != "linear":
        return None
    x_side, c_side = (fg.row, fg.col) if fg.row.role == "x" else (fg.col, fg.row)
    var = prog.variables[x_side.var]
    copies = prog.copies_of(x_side.var)
    if var.kind is not VarKind.PARAM or len(copies) != 1 or copies[0][0].name != fg.name:
        return None
    if x_side.prefix.shape[0] * x_side.prefix.shape[1] != var.size or np.any(x_side.prefix.counts() != 1):
        return None  # M must be the parameter itself, reshaped or permuted
    n, width = c_side.prefix.shape
    if n > width or n * n * itemsize > 2**28:
        return None
    return GramGroup(fg, x_side.var, n)


# --- the factored iteration -------------------------------------------------------------------


class FactoredAP:
    """AP over a factored state ``{"copies": materialised slots, "values": factored variables,
    "gram": per Gram-form group its matrices}``; ``gram=False`` keeps every group in the
    plain factored form (tests compare the two)."""

    def __init__(self, projector: BlockProjector, the_plan: Plan, gram: bool = True):
        self.proj, self.plan = projector, the_plan
        prog = self.prog = projector.prog
        self.dtype = projector.dtype
        itemsize = jnp.dtype(self.dtype).itemsize
        found = {name: gram_group(prog, fg, itemsize) for name, fg in the_plan.groups.items()} if gram else {}
        self.gram = {name: g for name, g in found.items() if g is not None}
        self._gram_vars = {g.var: g for g in self.gram.values()}
        factored_slots = {(g, s.role) for g in the_plan.groups for s in (the_plan.groups[g].row,
                                                                          the_plan.groups[g].col)}
        self._materialised = {v: [(slot_key(g.name, s), s) for g, s in prog.copies_of(v)
                                  if (g.name, s.role) not in factored_slots] for v in prog.variables}
        # per entry, all copies (the consensus's divisor) and those the factored slots stand for;
        # compact, so that they enter the program small (see state.compact)
        self._counts = {v: compact(sum((s.imap.counts() for _, s in prog.copies_of(v)), np.zeros(var.shape)))
                        for v, var in prog.variables.items()}
        self._factored_counts = {v: compact(sum(s.imap.counts() for g, s in prog.copies_of(v)
                                                if (g.name, s.role) in factored_slots)) for v in the_plan.variables}
        self._check_blocks()

    def _check_blocks(self) -> None:
        """Block 0 never reads or writes a factored variable's consensus; block 1 writes them all."""
        colour = self.proj.colour
        for var in self.plan.variables:
            node = _producer_node(self.prog, var)
            if colour.get(node) != 1:
                raise ProjcError(f"factored AP: %{var} is not produced in block 1")
            if any(colour.get(g.name) != 0 for g, _ in self.prog.copies_of(var)):
                raise ProjcError(f"factored AP: a copy of %{var} is read outside block 0")

    def with_data(self, data: Mapping[str, jax.Array]) -> "FactoredAP":
        """The same iteration on another minibatch (traceable)."""
        other = copy.copy(self)
        other.proj = self.proj.with_data(data)
        return other

    # state ------------------------------------------------------------------------------

    def init(self, values: Mapping[str, jax.Array]) -> dict:
        """The forward-pass state: every copy equals its variable."""
        copies = {k: send(s.imap, jnp.asarray(values[s.var], self.dtype))
                  for v in self.prog.variables for k, s in self._materialised[v]}
        values = {v: jnp.asarray(values[v], self.dtype) for v in self.plan.variables}
        return {"copies": copies, "values": values,
                "gram": {name: self._gram_start(g, values) for name, g in self.gram.items()}}

    def _gram_start(self, g: GramGroup, values) -> dict:
        """A Gram-form group's per-minibatch matrices (``values`` hold ``M_0``) and zero sums."""
        fg = g.group
        rows, cols = self._matrix(fg.row, values), self._matrix(fg.col, values)
        data = cols if g.x_is_row else rows
        zero = jnp.zeros((g.n, rows.shape[0] if g.x_is_row else cols.shape[0]), self.dtype)
        # "a": A, "ga": G A, "k"/"gk": the last iteration's K and G K (the residual's)
        return {"g": _mm(data, data.T), "p0": _mm(rows, cols.T), "a": zero, "ga": zero, "k": zero, "gk": zero}

    def values(self, state: dict) -> dict:
        """Every factored variable's value, the Gram-form parameters formed from ``M_0 + A^T X / n``."""
        values = dict(state["values"])
        for name, g in self.gram.items():
            fg = g.group
            data = self._matrix(fg.col if g.x_is_row else fg.row, values)
            side = fg.row if g.x_is_row else fg.col
            moved = _mm(state["gram"][name]["a"].T, data) / g.n
            values[g.var] = values[g.var] + gather(side.prefix, moved, self.dtype)
        return values

    def materialise(self, state: dict) -> dict:
        """The full state (every copy slot) this factored state stands for (tests, small programs)."""
        full, values = dict(state["copies"]), self.values(state)
        for g in self.plan.groups.values():
            for side in (g.row, g.col):
                if side.copy:
                    slot = next(s for s in self.prog.groups[g.name].slots if s.role == side.role)
                    full[slot_key(g.name, slot)] = send(slot.imap, values[side.var])
        return full

    # consensus and broadcast -------------------------------------------------------------------

    def consensus(self, copies, totals, var: str) -> jax.Array:
        """The mean of ``var``'s copies: materialised ones gathered, factored ones from ``totals``."""
        total = totals.get(var, 0) + sum(gather(s.imap, copies[k], self.dtype) for k, s in self._materialised[var])
        return mean_of_copies(total, self._counts[var], self.prog.variables[var].shape, self.dtype)

    def _totals_at(self, values) -> dict:
        """``G^T G v = counts v``: the factored copies' sums when they all equal ``v``."""
        return {v: jnp.asarray(self._factored_counts[v], self.dtype) * values[v] for v in values}

    def parameters(self, state: dict) -> dict[str, jax.Array]:
        """Parameters read out the materialised way: the consensus of their copies."""
        totals = self._totals_at(self.values(state))
        return {v: self.consensus(state["copies"], totals, v)
                for v, var in self.prog.variables.items() if var.kind is VarKind.PARAM}

    def _broadcast(self, var, value, copies, values) -> None:
        for key, slot in self._materialised[var]:
            copies[key] = send(slot.imap, value)
        if var in self.plan.variables:
            values[var] = value

    # the two block projections ----------------------------------------------------------------

    def _matrix(self, side: Side, values) -> jax.Array:
        source = values[side.var] if side.copy else self.proj.data[side.var]
        return send(side.prefix, jnp.asarray(source, self.dtype))

    def _gram_group(self, g: GramGroup, copies, state, new, shadow: bool):
        """Project a Gram-form group: its output's copies written; ``K`` (data orientation) and,
        for the violation, the x side as :func:`_linear` gives it."""
        fg = g.group
        d_offset = jnp.asarray(self.prog.groups[fg.name].attrs.get("d", 0.0), self.dtype)
        mats = state["gram"][fg.name]
        data = self._matrix(fg.col if g.x_is_row else fg.row, state["values"])
        y = self.consensus(copies, {}, fg.out)
        p = mats["p0"] + g.to_group(mats["ga"]) / g.n
        big_k, y2 = _linear_solve(fg, data, p, y, self.proj.weight(fg.out), d_offset)
        self._broadcast(fg.out, y2, new, {})
        if not shadow:
            return g.to_group(big_k), None
        values = self.values(state)
        side = _linear_side(fg, self._matrix(fg.row, values), self._matrix(fg.col, values), big_k)
        return g.to_group(big_k), side

    def _factored_group(self, fg: FactoredGroup, copies, values, new):
        """Project one factored group: its output's copies written, its sides returned."""
        group = self.prog.groups[fg.name]
        y = self.consensus(copies, {}, fg.out)
        w = self.proj.weight(fg.out)
        rows, cols = self._matrix(fg.row, values), self._matrix(fg.col, values)
        if fg.kind == "dot":
            sides, y2 = _dot(fg, rows, cols, y, w, self.proj.compat)
        else:
            sides, y2 = _linear(fg, rows, cols, y, w, jnp.asarray(group.attrs.get("d", 0.0), self.dtype))
        self._broadcast(fg.out, y2, new, {})
        return sides

    def _group(self, group: Group, copies, totals, new, new_values) -> None:
        """A materialised group: BlockProjector's projection with the factored consensus."""
        if group.kind == "loss":  # reads only its own slots
            self.proj._group(group, copies, new)
            return
        ops = {s.role: self.proj._operand(group, i, copies) for i, s in enumerate(group.slots)}
        y = self.consensus(copies, totals, group.out)
        inputs, y2 = _KERNELS[group.kind](group, ops, y, self.proj.weight(group.out), self.proj.compat)
        for slot, value in zip((s for s in group.slots if s.copy), inputs):
            new[slot_key(group.name, slot)] = value
        self._broadcast(group.out, y2, new, new_values)

    def project_first(self, state: dict, shadow_sides: bool = False):
        """``P_0`` on a state whose factored copies are equal: the new materialised copies, the
        factored copies' sums per variable (``G^T`` of the projected copies), the Gram-form
        groups' ``K``s, and (``shadow_sides``) the projected sides for the violation."""
        copies, values = state["copies"], state["values"]
        new, totals, shadow, steps = dict(copies), {}, {}, {}
        for node in self.proj.nodes(0):
            if node in self.gram:
                steps[node], side = self._gram_group(self.gram[node], copies, state, new, shadow_sides)
                if shadow_sides:
                    shadow[(node, "x")] = side
            elif node in self.plan.groups:
                fg = self.plan.groups[node]
                sides = self._factored_group(fg, copies, values, new)
                for side in (fg.row, fg.col):
                    if side.copy:
                        total = gather(side.prefix, sides[side.role].total(), self.dtype)
                        totals[side.var] = totals.get(side.var, 0) + total
                        shadow[(fg.name, side.role)] = sides[side.role]
            elif node in self.prog.groups:
                self._group(self.prog.groups[node], copies, {}, new, {})
            else:
                self._node(node, copies, {}, new, {})
        return new, totals, shadow, steps

    def project_second(self, copies, totals, state: dict, steps) -> dict:
        """``P_1``: every group, parameter and data clamp of block 1; factored variables are
        written once, as the value all their copies take; a Gram-form parameter's consensus is
        ``A += K`` (its base ``M_0`` stays in ``values``)."""
        new, values = dict(copies), {}
        for node in self.proj.nodes(1):
            if node in self.prog.groups:
                self._group(self.prog.groups[node], copies, totals, new, values)
            elif node.split(":", 1)[1] not in self._gram_vars:
                self._node(node, copies, totals, new, values)
        gram = {}
        for name, g in self.gram.items():
            mats, k = state["gram"][name], steps[name]
            gk = _mm(mats["g"], k)
            values[g.var] = state["values"][g.var]
            gram[name] = {**mats, "a": mats["a"] + k, "ga": mats["ga"] + gk, "k": k, "gk": gk}
        return {"copies": new, "values": values, "gram": gram}

    def _node(self, node, copies, totals, new, values) -> None:
        kind, var = node.split(":", 1)
        value = self.consensus(copies, totals, var) if kind == "param" else self.proj.data[var]
        self._broadcast(var, jnp.asarray(value, self.dtype), new, values)

    def iterate(self, state: dict, relax: float = 1.0) -> dict:
        """One AP iteration ``P_1(P_0(x))``; with ``relax`` r, ``x + r (P_1(P_0(x)) - x)``.

        Both ends of the relaxed step hold equal copies of every factored variable, so their
        combination does too: the factored form stays exact (Gram form: ``A += r K``)."""
        copies, totals, _, steps = self.project_first(state)
        new = self.project_second(copies, totals, state, steps)
        if relax == 1.0:
            return new

        def mix(old, value):
            return old + relax * (value - old)

        gram = {}
        for name, mats in new["gram"].items():
            k, gk = relax * mats["k"], relax * mats["gk"]
            a, ga = state["gram"][name]["a"] + k, state["gram"][name]["ga"] + gk
            gram[name] = {**mats, "a": a, "ga": ga, "k": k, "gk": gk}
        return {"copies": {key: mix(state["copies"][key], v) for key, v in new["copies"].items()},
                "values": {var: mix(state["values"][var], v) for var, v in new["values"].items()},
                "gram": gram}

    # diagnostics --------------------------------------------------------------------------------

    def residual(self, new: dict, old: dict) -> jax.Array:
        """``|x_{k+1} - x_k|`` over the materialised state: each factored variable's change
        counted once per copy."""
        sq = jnp.square(distance(new["copies"], old["copies"])) if new["copies"] else 0.0
        for v in self.plan.variables:
            if v in self._gram_vars:  # n |K^T X / n|^2 = tr(K^T G K) / n, K = A_new - A_old
                g = self._gram_vars[v]
                mats = new["gram"][g.group.name]
                sq = sq + jnp.maximum(jnp.sum(mats["k"] * mats["gk"]), 0) / g.n
                continue
            diff = new["values"][v] - old["values"][v]
            sq = sq + jnp.sum(jnp.asarray(self._factored_counts[v], self.dtype) * diff * diff)
        return jnp.sqrt(sq)

    def violation(self, state: dict) -> jax.Array:
        """``|P_1(s) - s|`` at the shadow ``s = P_0(x)``, as :func:`algorithms.violation`."""
        copies, totals, shadow, steps = self.project_first(state, shadow_sides=True)
        after = self.project_second(copies, totals, state, steps)
        after_values = self.values(after)
        sq = jnp.square(distance(after["copies"], copies)) if copies else 0.0
        for (name, role), side in shadow.items():
            fg = self.plan.groups[name]
            spec = fg.row if fg.row.role == role else fg.col
            sq = sq + side.deviation(self._matrix(spec, after_values))
        return jnp.sqrt(sq)


def run(fap: FactoredAP, state: dict, iterations: int, *, monitor: bool | str = True,
        relax: float = 1.0) -> tuple[dict, jax.Array]:
    """``iterations`` factored AP iterations (relaxed by ``relax``) in one ``lax.scan``, with the
    residuals of the materialised state as ``algorithms.run`` gives them for ``monitor`` (every
    iteration's, ``"last"``, or none). The factored residuals are cheap, so "last" keeps the
    last of all."""

    def body(x, _):
        new = fap.iterate(x, relax)
        return new, (fap.residual(new, x) if monitor else None)

    final, residuals = lax.scan(body, state, None, length=iterations)
    if not monitor:
        return final, jnp.zeros((0,), jnp.float32)
    return final, (residuals[-1:] if monitor == "last" else residuals)


def step_function(schedule: Schedule, the_plan: Plan, projector: BlockProjector, config, names) -> Callable:
    """``step(params, x, labels)`` of ``train_step.make_step`` on the factored path (unjitted)."""
    prog = schedule.program
    data, label = names
    fap = FactoredAP(projector, the_plan)

    def step(params, x, labels):
        f = fap.with_data({data: x, label: labels})
        state = f.init(forward_values(prog, {data: x, **params}))
        final, residuals = run(f, state, config.iterations, monitor=config.residuals, relax=config.relax)
        new = f.parameters(final)
        finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(v)) for v in new.values()]))
        stats = {"residuals": residuals, "finite": finite}
        if config.monitor:
            stats["violation"] = f.violation(final)
        return new, stats

    return step


__all__ = ["MODES", "FactoredAP", "FactoredGroup", "GramGroup", "Plan", "Side", "choose", "factor_group",
           "gram_group", "plan", "run", "step_function"]
