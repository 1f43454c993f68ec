"""Recurrent layers: stacked over time, constant group count, two-set schedules."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from projc.frontend import load_model
from projc.passes.bipartize import bipartize
from projc.passes.lower_to_constraints import lower
from projc.passes.schedule_blocks import schedule
from test_schedule import check_invariants

GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}


def _recurrent_model(path, op, steps, hidden=6, features=5, **attrs):
    rng = np.random.default_rng(0)
    g = GATES[op]
    inits = [
        numpy_helper.from_array(rng.standard_normal((1, g * hidden, features)).astype(np.float32), "W"),
        numpy_helper.from_array(rng.standard_normal((1, g * hidden, hidden)).astype(np.float32), "R"),
        numpy_helper.from_array(rng.standard_normal((1, 2 * g * hidden)).astype(np.float32), "B"),
        numpy_helper.from_array(rng.standard_normal((3, hidden)).astype(np.float32), "head"),
        numpy_helper.from_array(np.array([0], np.int64), "axes"),
    ]
    nodes = [
        helper.make_node(op, ["x", "W", "R", "B"], ["Y", "Y_h"], hidden_size=hidden, name="rec", **attrs),
        helper.make_node("Squeeze", ["Y_h", "axes"], ["h"], name="sq"),
        helper.make_node("Gemm", ["h", "head"], ["logits"], transB=1, name="fc"),
    ]
    graph = helper.make_graph(
        nodes, f"{op.lower()}_{steps}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [steps, "batch", features])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])], inits)
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


def test_unsupported_direction_is_reported(tmp_path):
    path = _recurrent_model(tmp_path / "bi.onnx", "LSTM", 3, direction="reverse")
    with pytest.raises(Exception, match="direction=reverse"):
        lower(load_model(path, batch_size=2))
