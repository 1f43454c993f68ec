"""Lowering of 1-D and grouped convolutions, HardSigmoid and reductions, checked against
onnxruntime like the example models."""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from projc.frontend import load_model
from projc.passes.lower_to_constraints import lower
from test_lowering_semantics import check_against_onnxruntime


def _model(path):
    rng = np.random.default_rng(0)
    arr = lambda name, *shape: numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
    inits = [arr("k1", 4, 2, 3), arr("b1", 4), arr("k2", 6, 2, 1, 3), arr("head", 5, 6),
             numpy_helper.from_array(np.array([2], np.int64), "ax2"), numpy_helper.from_array(np.array([2, 3], np.int64), "ax23")]
    nodes = [
        helper.make_node("Conv", ["x", "k1", "b1"], ["c1"], pads=[1, 1], strides=[1], name="conv1d"),
        helper.make_node("HardSigmoid", ["c1"], ["h1"], alpha=0.3, beta=0.4, name="hsig"),
        helper.make_node("Unsqueeze", ["h1", "ax2"], ["u"], name="unsq"),  # (N, 4, 1, L)
        helper.make_node("Conv", ["u", "k2"], ["c2"], group=2, pads=[0, 1, 0, 1], name="gconv"),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu"),
        helper.make_node("ReduceMax", ["r2", "ax23"], ["m"], keepdims=0, name="rmax"),
        helper.make_node("ReduceMean", ["r2", "ax23"], ["a"], keepdims=0, name="rmean"),
        helper.make_node("Mean", ["m", "a"], ["f"], name="mean"),
        helper.make_node("Gemm", ["f", "head"], ["logits"], transB=1, name="fc"),
    ]
    graph = helper.make_graph(nodes, "more_ops", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 7])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


def test_conv1d_grouped_conv_hardsigmoid_reductions(tmp_path):
    path = _model(tmp_path / "m.onnx")
    model = load_model(path, batch_size=3)
    prog = lower(model)
    kinds = {g.kind for g in prog.groups.values()}
    assert {"linear", "dot", "sum_act", "max"} <= kinds
    x = np.random.default_rng(1).standard_normal((3, 2, 7)).astype(np.float32)
    check_against_onnxruntime(path, model, prog, x)
    assert {"c2", "logits"} <= set(prog.views)


def test_batched_matmul_with_weights_and_between_variables(tmp_path):
    """x W for x (N, S, D) (a linear group, x is data), and q k^T between two variables (a dot
    group over (N, S, S)), as in attention scores."""
    rng = np.random.default_rng(0)
    arr = lambda name, *shape: numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
    inits = [arr("wq", 4, 3), arr("wk", 4, 3), arr("head", 2, 5),
             numpy_helper.from_array(np.array([2], np.int64), "ax")]
    nodes = [
        helper.make_node("MatMul", ["x", "wq"], ["q"], name="q"),
        helper.make_node("MatMul", ["x", "wk"], ["k"], name="k"),
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1], name="kt"),
        helper.make_node("MatMul", ["q", "kt"], ["scores"], name="scores"),
        helper.make_node("Relu", ["scores"], ["r"], name="relu"),
        helper.make_node("ReduceMean", ["r", "ax"], ["m"], keepdims=0, name="mean"),
        helper.make_node("Gemm", ["m", "head"], ["logits"], transB=1, name="fc"),
    ]
    graph = helper.make_graph(nodes, "scores", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5, 4])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])], inits)
    path = tmp_path / "scores.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    model = load_model(path, batch_size=2)
    prog = lower(model)
    kinds = sorted(g.kind for g in prog.groups.values())
    assert kinds.count("linear") >= 2 and "dot" in kinds
    x = np.random.default_rng(1).standard_normal((2, 5, 4)).astype(np.float32)
    check_against_onnxruntime(path, model, prog, x)
    assert {"q", "scores", "logits"} <= set(prog.views)
