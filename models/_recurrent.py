"""The shared shape of the recurrent digit classifiers (RNN, LSTM, GRU).

An 8x8 digit is read as a sequence of 8 rows of 8 pixels: ``x`` [batch, 8, 8] is transposed
to [8, batch, 8] (ONNX recurrent ops are sequence-major), the last hidden state Y_h
[1, batch, 32] is squeezed to [batch, 32], and a Gemm gives 10 logits.
"""

from __future__ import annotations

import numpy as np

from pathlib import Path

from _common import HERE, Net, bias, glorot

HIDDEN, ROWS, COLS = 32, 8, 8
GATES = {"RNN": 1, "LSTM": 4, "GRU": 3}


def build_recurrent(name: str, op_type: str, seed: int, out_dir: Path = HERE) -> Path:
    """Build ``<name>.onnx`` around one forward ``op_type`` layer with hidden size 32."""
    net = Net(name, seed)
    gates = GATES[op_type]
    w = glorot(net.rng, (1, gates * HIDDEN, COLS), COLS, HIDDEN)
    r = glorot(net.rng, (1, gates * HIDDEN, HIDDEN), HIDDEN, HIDDEN)
    b = bias(net.rng, (1, 2 * gates * HIDDEN), HIDDEN)
    seq = net.op("Transpose", ["x"], perm=[1, 0, 2])
    inputs = [seq, net.param("rnn.W", w), net.param("rnn.R", r), net.param("rnn.B", b)]
    _, y_h = net.op(op_type, inputs, 2, hidden_size=HIDDEN)
    axes = net.param("squeeze_axes", np.array([0], dtype=np.int64))
    last = net.op("Squeeze", [y_h, axes])
    net.gemm(last, HIDDEN, 10, "fc", init="glorot", out="logits")
    return net.save([("x", ["batch", ROWS, COLS])], [("logits", ["batch", 10])], out_dir)
