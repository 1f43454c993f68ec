"""Lowering is checked semantically: the constraint program, evaluated forward from the data and
the parameters, reproduces every network value it names (checked against onnxruntime), and every
constraint holds exactly at that state."""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from projc.backends.reference.constraint_eval import evaluate_program, residuals
from projc.constraints import VarKind, verify_program
from projc.frontend import load_model
from projc.passes.lower_to_constraints import lower

MODELS = Path(__file__).resolve().parents[2] / "models"
LOWERED = [
    "mlp_digits", "mlp_mnist", "cnn_digits", "cnn_mnist", "residual_mlp_digits", "sign_mlp_digits",
    "rnn_digits", "gru_digits", "lstm_digits",
]


def _onnxruntime_values(path: Path, feeds: dict, names: list[str]) -> dict:
    """Every named intermediate value, by exposing it as an extra graph output."""
    model = onnx.load(str(path))
    known = {o.name for o in model.graph.output}
    for name in names:
        if name not in known:
            model.graph.output.append(onnx.ValueInfoProto(name=name))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    wanted = [o.name for o in session.get_outputs()]
    return dict(zip(wanted, session.run(wanted, feeds)))


def check_against_onnxruntime(path: Path, model, prog, x: np.ndarray) -> dict:
    """Evaluate ``prog`` forward from the data ``x`` and the model's parameters; every lowered
    ONNX value (a view of a variable) must match onnxruntime, and every constraint hold."""
    (x_var,) = [v for v in prog.variables.values() if v.kind is VarKind.DATA]
    params = {n: v.const_value.numpy() for n, v in model.graph.initializers.items() if n in prog.variables}
    assert all(prog.variables[n].kind is VarKind.PARAM for n in params)
    values = evaluate_program(prog, {x_var.name: x, **params})
    reference = _onnxruntime_values(path, {x_var.name: x}, list(prog.views))
    for name, (var, imap) in prog.views.items():
        np.testing.assert_allclose(imap.apply(values[var]), reference[name], rtol=1e-4, atol=1e-5, err_msg=name)
    assert max(residuals(prog, values).values()) < 1e-9
    return values


@pytest.mark.parametrize("name", LOWERED)
def test_program_reproduces_network_and_has_zero_residual(name):
    path = MODELS / f"{name}.onnx"
    batch = 3
    model = load_model(path, batch_size=batch)
    prog = lower(model)
    verify_program(prog)
    (x_var,) = [v for v in prog.variables.values() if v.kind is VarKind.DATA]
    check_against_onnxruntime(path, model, prog, np.random.default_rng(0).random(x_var.shape).astype(np.float32))
    assert "logits" in prog.views and len(prog.views) >= 2


def test_state_size_matches_copies_of_mnist_mlp():
    """784-128-10 at batch 256: the data operand is read, not copied (method.md section 4)."""
    prog = lower(load_model(MODELS / "mlp_mnist_128.onnx", batch_size=256))
    b, n, h, c = 256, 784, 128, 10
    expected = (
        b * h * n  # first layer: copies of W1 only (x is data, read as a coefficient)
        + 2 * b * h  # relu: pre-activation and bias copies
        + 2 * b * c * h  # second layer dot: copies of the hidden rows and of W2 columns
        + 2 * b * c  # identity sum: pre-activation and bias
        + b * c  # the loss's copy of the logits
    )
    assert prog.state_size() == expected
    # materialise every copy from variables of the declared shapes: the same count
    arrays = {v.name: np.zeros(v.shape, np.float32) for v in prog.variables.values()}
    copies = [s.imap.apply(arrays[s.var]) for g in prog.groups.values() for s in g.slots if s.copy]
    assert sum(c.size for c in copies) == expected


def test_fanout_weights_count_the_copies():
    prog = lower(load_model(MODELS / "mlp_digits.onnx", batch_size=5))
    # the hidden layer (5, 32) is read by the 10 output neurons' dot constraints
    np.testing.assert_array_equal(prog.fanout("relu_3"), np.full((5, 32), 10.0))
    # a weight column is read once per sample; the first layer's weights by the linear group
    np.testing.assert_array_equal(prog.fanout("fc2.weight"), np.full((10, 32), 5.0))
    np.testing.assert_array_equal(prog.fanout("fc1.bias"), np.full((32,), 5.0))
    # the logits are read by the loss only; the reference framework's rule weighs everything 1
    np.testing.assert_array_equal(prog.fanout("logits"), np.ones((5, 10)))
    np.testing.assert_array_equal(prog.fanout("relu_3", mode="pjax"), np.ones((5, 32)))


def test_fanout_of_a_padded_conv_input_counts_window_overlaps():
    prog = lower(load_model(MODELS / "cnn_digits.onnx", batch_size=1))
    counts = prog.fanout("conv1.weight")
    # every kernel entry is read at each of the 8x8 output positions of the sample
    np.testing.assert_array_equal(counts, np.full((8, 1, 3, 3), 64.0))
