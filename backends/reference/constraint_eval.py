"""Evaluate a constraint program with NumPy: forward values and constraint residuals.

Used to check lowering semantically: the program evaluated forward from the data and the
parameters must reproduce the network's values, and at that state every constraint holds.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from projc.constraints import Group, Program, VarKind

ACTIVATIONS = {
    "identity": lambda s, **p: s,
    "relu": lambda s, **p: np.maximum(s, 0),
    "leaky_relu": lambda s, alpha=0.01, **p: np.where(s >= 0, s, alpha * s),
    "clip": lambda s, lo=-1.0, hi=1.0, **p: np.clip(s, lo, hi),
    "sigmoid": lambda s, **p: 1 / (1 + np.exp(-s)),
    "tanh": lambda s, **p: np.tanh(s),
    "softplus": lambda s, **p: np.logaddexp(0, s),
    "sign": lambda s, **p: np.sign(s),
}


def _operands(group: Group, values: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {s.role: s.imap.apply(values[s.var]) for s in group.slots}


def _sum_act(g, ops):
    s = sum(v for k, v in ops.items() if k.startswith("x")) + g.attrs.get("d", 0.0)
    params = {k: v for k, v in g.attrs.items() if k not in ("act", "d")}
    return ACTIVATIONS[g.attrs["act"]](s, **params)


def _linear(g, ops):
    c = ops["c"] if "c" in ops else g.attrs["c"]
    return np.sum(c * ops["x"], axis=-1) + g.attrs.get("d", 0.0)


FORWARD = {
    "dot": lambda g, ops: np.sum(ops["a"] * ops["b"], axis=-1),
    "mul": lambda g, ops: ops["a"] * ops["b"],
    "linear": _linear,
    "sum_act": _sum_act,
    "max": lambda g, ops: np.max(ops["a"], axis=-1),
    "identity": lambda g, ops: ops["a"],
    "concat": lambda g, ops: np.concatenate([ops[f"a{i}"] for i in range(len(ops))], g.attrs["axis"]),
}


def evaluate_program(prog: Program, leaves: Mapping[str, np.ndarray], max_sweeps: int = 10_000) -> dict[str, np.ndarray]:
    """Every variable's value, computed forward from ``leaves`` (data and parameters by name).

    Groups stacked over time read their own variable shifted by one step, so the program is
    evaluated by sweeps from zero until nothing changes (a causal recurrence of length T
    settles after at most T + 1 sweeps).
    """
    values = {k: np.asarray(v, np.float64) for k, v in leaves.items()}
    for v in prog.variables.values():
        values.setdefault(v.name, np.zeros(v.shape))
    producing = [g for g in prog.groups.values() if g.out is not None]
    for _ in range(max_sweeps):
        changed = False
        for g in producing:
            new = FORWARD[g.kind](g, _operands(g, values))
            if not np.array_equal(new, values[g.out]):
                values[g.out], changed = new, True
        if not changed:
            return values
    raise ValueError("constraint program did not settle: it has a non-causal cycle")


def residuals(prog: Program, values: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Largest |out - f(operands)| of each producing group at the state where every copy
    equals its variable (the forward-pass state)."""
    out = {}
    for g in prog.groups.values():
        if g.out is None:
            continue
        out[g.name] = float(np.max(np.abs(values[g.out] - FORWARD[g.kind](g, _operands(g, values))), initial=0.0))
    return out


def leaf_names(prog: Program) -> list[str]:
    return [v.name for v in prog.variables.values() if v.kind in (VarKind.DATA, VarKind.PARAM)]
