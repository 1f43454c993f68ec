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


# direction -> (direction index into W/R/B, whether time runs backwards)
DIRECTIONS = {"forward": [(0, False)], "reverse": [(0, True)], "bidirectional": [(0, False), (1, True)]}


def _check(node, inputs, op):
    if attr(node, "direction", "forward") not in DIRECTIONS:
        raise Unsupported(f"direction={attr(node, 'direction')}")
    acts = attr(node, "activations")
    per_direction = len(DIRECTIONS[attr(node, "direction", "forward")])
    if acts and [a.lower() for a in acts] != [a.lower() for a in DEFAULT_ACTIVATIONS[op]] * per_direction:
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

    def __init__(self, lw, node, inputs, gates, direction=0, backwards=False):
        self.lw, self.node = lw, node
        x = lw.as_view(inputs[0], node)
        if attr(node, "layout", 0):
            x = view(x, Transpose((1, 0, 2)))  # batch-major input -> sequence-major
        self.T, self.B, _ = x.shape
        # a reverse pass is a forward pass over the time-reversed sequence
        self.order = np.arange(self.T)[::-1].copy() if backwards else None
        self.x = view(x, Take(0, self.order)) if backwards else x
        self.H = int(attr(node, "hidden_size"))
        self.gates = gates
        d = Take(0, np.array([direction]))
        self.W = view(inputs[1], d, Reshape((gates * self.H, x.shape[2])))
        self.R = view(inputs[2], d, Reshape((gates * self.H, self.H)))
        self.bias = None if len(inputs) < 4 or inputs[3] is None else view(inputs[3], d, Reshape((2 * gates * self.H,)))
        self.name = (node.outputs[0].name or node.name) + (".bwd" if backwards else "")

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

    def in_time_order(self, ref):
        """A state variable (in processing order) as the network's (T, B, hidden) sequence."""
        return view(ref, Take(0, self.order)) if self.order is not None else ref

    def last(self, ref):
        """The final state of the pass, (1, B, hidden)."""
        return view(ref, Take(0, np.array([self.T - 1])))


def _lower(lw, node, inputs, op, body):
    """Lower every direction of a recurrent node with ``body(cell, h) -> c or None`` and
    assemble Y, Y_h (and Y_c): views of the state variables for one direction, concat groups
    for two."""
    _check(node, inputs, op)
    passes = []
    for direction, backwards in DIRECTIONS[attr(node, "direction", "forward")]:
        cell = _Cell(lw, node, inputs, GATES[op], direction, backwards)
        h = lw.declare(f"{cell.name}.H", (cell.T, cell.B, cell.H))
        passes.append((cell, h, body(cell, h)))
    cell = passes[0][0]
    T, B, H = cell.T, cell.B, cell.H
    parts = [
        [view(c.in_time_order(h), Reshape((T, 1, B, H))) for c, h, _ in passes],
        [c.last(h) for c, h, _ in passes],
        [c.last(state) for c, _, state in passes if state is not None],
    ]
    outputs = []
    for i, (out, pieces) in enumerate(zip(node.outputs, parts)):
        if not pieces or not (out.uses() or out.is_graph_output()):
            outputs.append(None)  # an unused output needs no constraint
            continue
        axis = 1 if i == 0 else 0
        value = pieces[0] if len(pieces) == 1 else lw.emit(
            "concat", lw_shape(pieces, axis), [(f"a{k}", p) for k, p in enumerate(pieces)], {"axis": axis}, node,
            name=out.name)
        if attr(node, "layout", 0):
            value = view(value, Transpose((2, 0, 1, 3) if i == 0 else (1, 0, 2)))
        outputs.append(value)
    return outputs


def lw_shape(pieces, axis):
    shape = list(pieces[0].shape)
    shape[axis] = sum(p.shape[axis] for p in pieces)
    return tuple(shape)


def _broadcast_bias(b, T, B):
    return view(b, Broadcast(0, T), Broadcast(1, B))


def _slice(ref, first, count, H):
    return view(ref, Take(2, np.arange(first * H, (first + count) * H)))


@rule("RNN")
def _rnn(lw, node, inputs):
    return _lower(lw, node, inputs, "RNN", _rnn_pass)


def _rnn_pass(cell, h):
    xw = cell.input_term()
    hr = cell.recurrent(cell.shifted(h), 0, 1, "hr")
    cell.lw.sum_act(cell.gate_sum((xw, hr), cell.biases(0, 1)), "tanh", {}, cell.node, out=h.var)


@rule("LSTM")
def _lstm(lw, node, inputs):
    return _lower(lw, node, inputs, "LSTM", _lstm_pass)


def _lstm_pass(cell, h):
    lw, node = cell.lw, cell.node
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
    return c


@rule("GRU")
def _gru(lw, node, inputs):
    return _lower(lw, node, inputs, "GRU", _gru_pass)


def _gru_pass(cell, h):
    lw, node = cell.lw, cell.node
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
