"""The import pipeline on the real exporter outputs in ``tests/fixtures``.

torch's legacy exporter writes shape arithmetic as Constant/Shape/Gather/Unsqueeze/Concat
chains and its dynamo exporter as Shape/Slice/Concat; after import none of that is left (no
node has only constant inputs), and onnxruntime gives the same outputs as on the original.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from passutil import assert_same_outputs
from projc.frontend import bind_dims, load_model, read_model, to_proto
from projc.ir import CONST, ROLE_KEY, verify

FIXTURES = Path(__file__).parents[1] / "fixtures"
TORCH = sorted(FIXTURES.glob("torch_*.onnx"))


def _constant_only(node) -> bool:
    return all(
        v is None or (v.is_initializer() and v.meta.get(ROLE_KEY) == CONST) for v in node.inputs
    )


@pytest.mark.skipif(not TORCH, reason="tests/fixtures has no torch exports")
@pytest.mark.parametrize("path", TORCH, ids=[p.stem for p in TORCH])
def test_torch_exports_lose_their_shape_arithmetic(path):
    original = read_model(path)
    bind_dims(original, batch_size=2)
    model = load_model(path, batch_size=2)
    verify(model)
    left = [f"{n.name} ({n.op_type})" for n in model.graph
            if n.op_type in ("Constant", "Shape", "Size") or _constant_only(n)]
    assert not left, f"{path.name}: constant computations left: {left}"
    assert_same_outputs(to_proto(original), to_proto(model), seeds=(0,))


@pytest.mark.parametrize("name", ["torch_gru_legacy.onnx", "torch_lstm_legacy.onnx"])
def test_a_folded_initial_state_stays_a_constant(name):
    path = FIXTURES / name
    if not path.exists():
        pytest.skip(f"{name} is not in tests/fixtures")
    model = load_model(path, batch_size=2)
    rnn = next(n for n in model.graph if n.op_type in ("GRU", "LSTM"))
    initial_h = rnn.inputs[5]
    assert initial_h.is_initializer() and initial_h.meta[ROLE_KEY] == CONST
