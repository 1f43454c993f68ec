"""Lowering of ONNX RNN, GRU and LSTM, unrolled over a static sequence length.

The unrolled steps are isomorphic, so each kind of step constraint is *one* group stacked along
the time axis: the hidden state is one variable H of shape (T, B, hidden), and step t reads
step t-1 through an index map that shifts the time axis by one (the zero initial state is the
constant zero that index -1 reads). The number of groups, and later the compile time, does not
grow with the sequence length (the reference framework unrolls into T copies of every node).
Gates are ``sum_act`` (sigmoid/tanh of the summed input and recurrent terms and biases), gate
products are ``mul``.
"""

from __future__ import annotations

import numpy as np

from projc.index_map import Broadcast, Reshape, Take, Transpose
from projc.passes.lowering_rules import Unsupported, attr, rule, view
from projc.passes.lowering_values import Const, OpenSum

GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}
DEFAULT_ACTIVATIONS = {
    "RNN": ["Tanh"], "GRU": ["Sigmoid", "Tanh"], "LSTM": ["Sigmoid", "Tanh", "Tanh"],
}


def _check(node, inputs, op):
    if attr(node, "direction", "forward") != "forward":
        raise Unsupported(f"direction={attr(node, 'direction')} (forward only so far)")
    acts = attr(node, "activations")
    if acts and [a.lower() for a in acts] != [a.lower() for a in DEFAULT_ACTIVATIONS[op]]:
        raise Unsupported(f"activations {acts} (the defaults only)")
    if attr(node, "clip") is not None:
        raise Unsupported("cell clipping")
    if attr(node, "input_forget", 0):
        raise Unsupported("input_forget=1")
    extra = {4: "sequence_lens", 5: "initial_h", 6: "initial_c", 7: "peepholes P"}
    for i, what in extra.items():
        if i < len(inputs) and inputs[i] is not None:
            if i in (5, 6) and isinstance(inputs[i], Const) and not np.any(inputs[i].full()):
                continue  # a zero initial state is what the shifted read gives anyway
            raise Unsupported(f"{what} input (zero initial states and full-length sequences only)")


class _Cell:
    """Shared pieces of a recurrent layer: the input term, recurrent reads, bias slices."""

    def __init__(self, lw, node, inputs, gates):
        self.lw, self.node = lw, node
        x = lw.as_view(inputs[0], node)
        if attr(node, "layout", 0):
            x = view(x, Transpose((1, 0, 2)))  # batch-major input -> sequence-major
        self.x = x
        self.T, self.B, _ = x.shape
        self.H = int(attr(node, "hidden_size"))
        self.gates = gates
        self.W = view(inputs[1], Reshape((gates * self.H, x.shape[2])))
        self.R = view(inputs[2], Reshape((gates * self.H, self.H)))
        self.bias = None if len(inputs) < 4 or inputs[3] is None else view(inputs[3], Reshape((2 * gates * self.H,)))
        self.name = node.outputs[0].name or node.name

    def rows(self, first: int, count: int) -> np.ndarray:
        return np.arange(first * self.H, (first + count) * self.H)

    def input_term(self):
        """x_t W^T for every t and every gate: one group (linear in W when x is data)."""
        gh = self.gates * self.H
        x_op = view(self.x, Broadcast(2, gh))
        w_op = view(self.W, Broadcast(0, self.T), Broadcast(1, self.B))
        return self.lw.bilinear(self.node, x_op, w_op, (self.T, self.B, gh), pre=True)

    def shifted(self, ref):
        """Step t reads step t-1; step 0 reads the zero initial state."""
        return view(ref, Take(0, np.arange(-1, self.T - 1)))

    def recurrent(self, h_prev, first: int, count: int, tag: str):
        """h_{t-1} R^T for gates [first, first + count): a dot group over (T, B, count*H)."""
        rows = self.rows(first, count)
        a = view(h_prev, Broadcast(2, len(rows)))
        b = view(self.R, Take(0, rows), Broadcast(0, self.T), Broadcast(1, self.B))
        return self.lw.emit("dot", (self.T, self.B, len(rows)), [("a", a), ("b", b)], {}, self.node,
                            name=f"{self.name}.{tag}")

    def biases(self, first: int, count: int, recurrent: bool = True):
        if self.bias is None:
            return ()
        rows = self.rows(first, count)
        offsets = (0, self.gates * self.H) if recurrent else (0,)
        return tuple(
            _broadcast_bias(view(self.bias, Take(0, rows + off)), self.T, self.B) for off in offsets
        )

    def mul(self, a, b, tag=None, out=None):
        """A gate product over (T, B, hidden)."""
        name = None if tag is None else f"{self.name}.{tag}"
        return self.lw.emit("mul", (self.T, self.B, self.H), [("a", a), ("b", b)], {}, self.node,
                            name=name, out=out)

    def gate_sum(self, terms, biases):
        refs = [t for t in (*terms, *biases) if not isinstance(t, Const)]
        offset = sum((np.broadcast_to(b.full(), refs[0].shape) for b in biases if isinstance(b, Const)), np.zeros(()))
        return OpenSum(tuple(refs), np.asarray(offset, np.float32), (self.node.name,))

    def outputs(self, h, c=None):
        """(Y, Y_h[, Y_c]) as views of the stacked state variables."""
        T, B, H = self.T, self.B, self.H
        y = view(h, Reshape((T, 1, B, H)))
        if attr(self.node, "layout", 0):
            y = view(h, Transpose((1, 0, 2)), Reshape((B, T, 1, H)))
        last = lambda v: view(v, Take(0, np.array([T - 1])))
        outs = [y, last(h)] + ([last(c)] if c is not None else [])
        if attr(self.node, "layout", 0):
            outs[1:] = [view(o, Transpose((1, 0, 2))) for o in outs[1:]]
        return outs[: len(self.node.outputs)]


def _begin(lw, node, inputs, op):
    """Check the node, build its cell and declare the stacked hidden state H."""
    _check(node, inputs, op)
    cell = _Cell(lw, node, inputs, GATES[op])
    return cell, lw.declare(f"{cell.name}.H", (cell.T, cell.B, cell.H))


def _broadcast_bias(b, T, B):
    return view(b, Broadcast(0, T), Broadcast(1, B))


def _slice(ref, first, count, H):
    return view(ref, Take(2, np.arange(first * H, (first + count) * H)))


@rule("RNN")
def _rnn(lw, node, inputs):
    cell, h = _begin(lw, node, inputs, "RNN")
    xw = cell.input_term()
    hr = cell.recurrent(cell.shifted(h), 0, 1, "hr")
    lw.sum_act(cell.gate_sum((xw, hr), cell.biases(0, 1)), "tanh", {}, node, out=h.var)
    return cell.outputs(h)


@rule("LSTM")
def _lstm(lw, node, inputs):
    cell, h = _begin(lw, node, inputs, "LSTM")
    T, B, H = cell.T, cell.B, cell.H
    c = lw.declare(f"{cell.name}.C", (T, B, H))
    xw = cell.input_term()
    hr = cell.recurrent(cell.shifted(h), 0, 4, "hr")
    # ONNX gate order: i, o, f, c
    iof = lw.sum_act(cell.gate_sum((_slice(xw, 0, 3, H), _slice(hr, 0, 3, H)), cell.biases(0, 3)),
                     "sigmoid", {}, node, name=f"{cell.name}.iof")
    g = lw.sum_act(cell.gate_sum((_slice(xw, 3, 1, H), _slice(hr, 3, 1, H)), cell.biases(3, 1)),
                   "tanh", {}, node, name=f"{cell.name}.g")
    i, o, f = (_slice(iof, k, 1, H) for k in range(3))
    fc = cell.mul(f, cell.shifted(c), "fc")
    ig = cell.mul(i, g, "ig")
    lw.sum_act(OpenSum((fc, ig), np.zeros(()), (node.name,)), "identity", {}, node, out=c.var)
    tc = lw.sum_act(c, "tanh", {}, node, name=f"{cell.name}.tanhC")
    cell.mul(o, tc, out=h.var)
    return cell.outputs(h, c)


@rule("GRU")
def _gru(lw, node, inputs):
    cell, h = _begin(lw, node, inputs, "GRU")
    T, B, H = cell.T, cell.B, cell.H
    h_prev = cell.shifted(h)
    xw = cell.input_term()
    # ONNX gate order: z, r, h
    hr_zr = cell.recurrent(h_prev, 0, 2, "hr_zr")
    zr = lw.sum_act(cell.gate_sum((_slice(xw, 0, 2, H), hr_zr), cell.biases(0, 2)),
                    "sigmoid", {}, node, name=f"{cell.name}.zr")
    z, r = _slice(zr, 0, 1, H), _slice(zr, 1, 1, H)
    wb_h, rb_h = cell.biases(2, 1) or (Const(np.zeros((), np.float32), (T, B, H)),) * 2
    if attr(node, "linear_before_reset", 0):
        s = lw.sum_act(cell.gate_sum((cell.recurrent(h_prev, 2, 1, "hr_h"),), (rb_h,)), "identity", {}, node,
                       name=f"{cell.name}.hr_hb")
        reset = cell.mul(r, s, "reset")
        cand_terms, cand_bias = (_slice(xw, 2, 1, H), reset), (wb_h,)
    else:
        rh = cell.mul(r, h_prev, "rh")
        hr_h = cell.recurrent(rh, 2, 1, "hr_h")
        cand_terms, cand_bias = (_slice(xw, 2, 1, H), hr_h), (wb_h, rb_h)
    cand = lw.sum_act(cell.gate_sum(cand_terms, cand_bias), "tanh", {}, node, name=f"{cell.name}.cand")
    one_minus_z = lw.linear(node, view(z, Reshape((T, B, H, 1))), -np.ones((1,), np.float32),
                            np.ones((), np.float32), name=f"{cell.name}.1-z")
    keep = cell.mul(z, h_prev, "zh")
    new = cell.mul(one_minus_z, cand, "zc")
    lw.sum_act(OpenSum((keep, new), np.zeros(()), (node.name,)), "identity", {}, node, out=h.var)
    return cell.outputs(h)
