"""Recurrent layers: stacked over time, constant group count, two-set schedules."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from projc.frontend import load_model
from projc.passes.bipartize import bipartize
from projc.passes.lower_to_constraints import lower
from projc.passes.schedule_blocks import schedule
from test_lowering_semantics import check_against_onnxruntime
from test_schedule import check_invariants

GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}


def _recurrent_model(path, op, steps, hidden=6, features=5, **attrs):
    rng = np.random.default_rng(0)
    g = GATES[op]
    dirs = 2 if attrs.get("direction") == "bidirectional" else 1
    arr = lambda name, *shape: numpy_helper.from_array(0.5 * rng.standard_normal(shape).astype(np.float32), name)
    inits = [
        arr("W", dirs, g * hidden, features), arr("R", dirs, g * hidden, hidden), arr("B", dirs, 2 * g * hidden),
        arr("head", 3, dirs * hidden),
    ]
    nodes = [
        helper.make_node(op, ["x", "W", "R", "B"], ["Y", "Y_h"], hidden_size=hidden, name="rec", **attrs),
        # (dirs, B, H) -> (B, dirs * H): both directions' final states feed the head
        helper.make_node("Transpose", ["Y_h"], ["Y_hT"], perm=[1, 0, 2], name="tr"),
        helper.make_node("Flatten", ["Y_hT"], ["h"], axis=1, name="flat"),
        helper.make_node("Gemm", ["h", "head"], ["logits"], transB=1, name="fc"),
    ]
    graph = helper.make_graph(
        nodes, f"{op.lower()}_{steps}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [steps, "batch", features])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3]),
         helper.make_tensor_value_info("Y", TensorProto.FLOAT, [steps, dirs, "batch", hidden])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.mark.parametrize("op", ["RNN", "GRU", "LSTM"])
def test_group_count_does_not_grow_with_sequence_length(tmp_path, op):
    counts = []
    for steps in (8, 64):
        prog = lower(load_model(_recurrent_model(tmp_path / f"{op}{steps}.onnx", op, steps), batch_size=4))
        counts.append(len(prog.groups))
        recurrent = [g for g in prog.groups.values() if g.shape[:1] == (steps,)]
        assert recurrent, "the step constraints are stacked along the time axis"
    assert counts[0] == counts[1]


@pytest.mark.parametrize("op, attrs", [("LSTM", {}), ("GRU", {}), ("GRU", {"linear_before_reset": 1}), ("RNN", {})])
def test_recurrent_schedules_into_two_sets(tmp_path, op, attrs):
    prog = lower(load_model(_recurrent_model(tmp_path / "m.onnx", op, 5, **attrs), batch_size=2))
    bipartize(prog)
    sched = schedule(prog)
    check_invariants(prog, sched)
    assert len(sched.blocks) == 2


@pytest.mark.parametrize("op", ["RNN", "GRU", "LSTM"])
@pytest.mark.parametrize("direction", ["reverse", "bidirectional"])
def test_reverse_and_bidirectional_match_onnxruntime(tmp_path, op, direction):
    path = _recurrent_model(tmp_path / "m.onnx", op, 4, direction=direction)
    model = load_model(path, batch_size=2)
    prog = lower(model)
    x = np.random.default_rng(2).standard_normal((4, 2, 5)).astype(np.float32)
    check_against_onnxruntime(path, model, prog, x)
    assert {"Y", "Y_h", "logits"} <= set(prog.views)
    bipartize(prog)
    assert len(schedule(prog).blocks) == 2


def test_unsupported_attributes_are_reported(tmp_path):
    path = _recurrent_model(tmp_path / "clip.onnx", "LSTM", 3, clip=1.0)
    with pytest.raises(Exception, match="cell clipping"):
        lower(load_model(path, batch_size=2))
