"""Forward rules of op family B (products, convolutions, pooling, norms, RNNs, attention)
checked against onnxruntime on small single-node models."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

from projc.backends.jax.onnx_backend import ProjcBackend

_RNG = np.random.default_rng(0)


def _randn(*shape):
    return _RNG.standard_normal(shape).astype(np.float32)


def _single_node(op, inputs, outputs, opset, **attrs):
    """A model with one ``op`` node; every input is a graph input (empty name = omitted)."""
    node = helper.make_node(op, list(inputs), outputs, **attrs)
    graph = helper.make_graph(
        [node], f"{op.lower()}_test",
        [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
         for n, v in inputs.items() if n],
        [helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None) for o in outputs if o],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


def _expected(model, feeds, runtime):
    if runtime == "reference":  # for attributes onnxruntime does not implement
        return ReferenceEvaluator(model).run(None, feeds)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _check(op, inputs, n_outputs=1, opset=22, rtol=1e-4, atol=1e-5, runtime="ort", **attrs):
    """Run the node through projc and onnxruntime; every output must match."""
    outputs = [f"y{i}" for i in range(n_outputs)]
    model = _single_node(op, inputs, outputs, opset, **attrs)
    feeds = {k: v for k, v in inputs.items() if k}
    expected = _expected(model, feeds, runtime)
    got = ProjcBackend.prepare(model).run(feeds)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.dtype == e.dtype and g.shape == e.shape
        np.testing.assert_allclose(g, e, rtol=rtol, atol=atol)


@pytest.mark.parametrize(
    "attrs",
    [
        dict(strides=[2, 1], pads=[1, 0, 2, 1], dilations=[1, 2], group=2),
        dict(auto_pad="SAME_LOWER", strides=[2, 2]),
        dict(auto_pad="SAME_UPPER", strides=[1, 3]),
        dict(auto_pad="VALID", group=4),
    ],
    ids=["explicit", "same_lower", "same_upper", "depthwise"],
)
def test_conv_2d(attrs):
    group = attrs.get("group", 1)
    _check("Conv", {"x": _randn(2, 4, 7, 8), "w": _randn(6 if group != 4 else 4, 4 // group, 3, 3),
                    "b": _randn(6 if group != 4 else 4)}, **attrs)


def test_conv_1d_and_3d():
    _check("Conv", {"x": _randn(1, 3, 9), "w": _randn(2, 3, 4)}, pads=[2, 1], strides=[2])
    _check("Conv", {"x": _randn(1, 2, 5, 4, 6), "w": _randn(3, 2, 2, 3, 2)}, auto_pad="SAME_UPPER")


@pytest.mark.parametrize(
    "attrs",
    [
        dict(strides=[2, 3], output_padding=[1, 2], group=2),
        dict(strides=[2, 2], pads=[1, 0, 0, 1], dilations=[2, 1]),
        dict(strides=[2, 2], output_shape=[9, 10]),
        dict(strides=[2, 1], auto_pad="SAME_UPPER"),
    ],
    ids=["output_padding_group", "pads_dilations", "output_shape", "same"],
)
def test_conv_transpose(attrs):
    group = attrs.get("group", 1)
    _check("ConvTranspose", {"x": _randn(2, 4, 4, 5), "w": _randn(4, 6 // group, 3, 3),
                             "b": _randn(6)}, **attrs)


def test_max_pool_with_indices_and_ceil_mode():
    x = _randn(2, 3, 7, 6)
    _check("MaxPool", {"x": x}, n_outputs=2, kernel_shape=[3, 2], strides=[2, 2],
           pads=[1, 0, 1, 0], ceil_mode=1)
    _check("MaxPool", {"x": x}, n_outputs=2, kernel_shape=[2, 2], dilations=[2, 1])


@pytest.mark.parametrize("count_include_pad", [0, 1])
def test_average_pool(count_include_pad):
    _check("AveragePool", {"x": _randn(1, 2, 7, 7)}, kernel_shape=[3, 3], strides=[2, 2],
           pads=[1, 1, 1, 1], ceil_mode=1, count_include_pad=count_include_pad)


def test_global_pools_and_lp_pool():
    x = _randn(2, 3, 5, 4)
    _check("GlobalAveragePool", {"x": x})
    _check("GlobalMaxPool", {"x": x})
    _check("LpPool", {"x": x}, kernel_shape=[2, 2], p=3, strides=[1, 2])


def test_batch_and_instance_norm():
    x, c = _randn(2, 3, 4, 5), 3
    var = np.abs(_randn(c)) + 0.5
    _check("BatchNormalization", {"x": x, "s": _randn(c), "b": _randn(c), "m": _randn(c),
                                  "v": var}, epsilon=1e-3)
    _check("InstanceNormalization", {"x": x, "s": _randn(c), "b": _randn(c)})


def test_layer_norm_outputs():
    x = _randn(2, 3, 8)
    _check("LayerNormalization", {"x": x, "s": _randn(3, 8), "b": _randn(3, 8)}, n_outputs=3,
           axis=1, epsilon=1e-4)


def test_lrn_and_lp_normalization():
    x = _randn(1, 5, 3, 3)
    _check("LRN", {"x": x}, size=3, alpha=1e-3, beta=0.75, bias=2.0)
    _check("LpNormalization", {"x": x}, axis=1, p=1)


def test_gemm_and_matmul_vectors():
    _check("Gemm", {"a": _randn(4, 3), "b": _randn(5, 4), "c": _randn(5)}, transA=1, transB=1,
           alpha=0.5, beta=2.0)
    _check("MatMul", {"a": _randn(4), "b": _randn(2, 4, 3)})
    _check("MatMul", {"a": _randn(2, 3, 4), "b": _randn(4)})


def test_einsum():
    _check("Einsum", {"a": _randn(2, 3, 4), "b": _randn(2, 4, 5)}, equation="bij, bjk -> bik")


def _rnn_inputs(gates, num_dir, hidden=4, seq=5, batch=3, size=2):
    return {
        "x": _randn(seq, batch, size),
        "w": _randn(num_dir, gates * hidden, size),
        "r": _randn(num_dir, gates * hidden, hidden),
        "b": _randn(num_dir, 2 * gates * hidden),
        "lens": np.array([5, 2, 4], np.int32),
        "h0": _randn(num_dir, batch, hidden),
    }


def test_lstm_bidirectional_with_lengths_and_peepholes():
    inputs = _rnn_inputs(4, 2)
    inputs.update(c0=_randn(2, 3, 4), p=_randn(2, 12))
    _check("LSTM", inputs, n_outputs=3, hidden_size=4, direction="bidirectional")


def test_gru_reverse_linear_before_reset():
    _check("GRU", _rnn_inputs(3, 1), n_outputs=2, hidden_size=4, direction="reverse",
           linear_before_reset=1, activations=["HardSigmoid", "Tanh"],
           activation_alpha=[0.3, 0.0], activation_beta=[0.4, 0.0])


def test_rnn_batch_major_layout():
    # onnx's reference (onnxruntime has no layout=1) ignores sequence_lens: leave it out.
    inputs = {k if k != "lens" else "": v for k, v in _rnn_inputs(1, 1).items()}
    inputs["x"] = inputs["x"].swapaxes(0, 1).copy()
    inputs["h0"] = inputs["h0"].swapaxes(0, 1).copy()
    _check("RNN", inputs, n_outputs=2, hidden_size=4, layout=1, runtime="reference")


def test_attention_gqa_causal_with_past():
    inputs = {"q": _randn(2, 4, 3, 8), "k": _randn(2, 2, 3, 8), "v": _randn(2, 2, 3, 6),
              "": np.zeros(0, np.float32), "pk": _randn(2, 2, 2, 8), "pv": _randn(2, 2, 2, 6)}
    _check("Attention", inputs, n_outputs=3, opset=23, is_causal=1)


def test_attention_3d_with_bool_mask_and_softcap():
    mask = _RNG.random((3, 5)) > 0.3
    mask[:, 0] = True
    inputs = {"q": _randn(2, 3, 16), "k": _randn(2, 5, 8), "v": _randn(2, 5, 6), "m": mask}
    _check("Attention", inputs, opset=23, q_num_heads=4, kv_num_heads=2, softcap=2.0,
           scale=0.3)


def test_max_pool_int8_and_column_major_indices():
    x = _randn(2, 3, 4, 5)
    _check("MaxPool", {"x": (x * 20).astype(np.int8)}, kernel_shape=[2, 2])
    _check("MaxPool", {"x": x.astype(np.float64)}, n_outputs=2, kernel_shape=[2, 2],
           storage_order=1)


def test_conv_float16():
    x, w = _randn(1, 3, 6, 6).astype(np.float16), _randn(2, 3, 3, 3).astype(np.float16)
    _check("Conv", {"x": x, "w": w}, rtol=1e-2, atol=1e-2)


def test_lstm_clip_and_coupled_gates():
    inputs = {"x": _randn(4, 2, 3), "w": _randn(1, 16, 3), "r": _randn(1, 16, 4)}
    _check("LSTM", inputs, n_outputs=3, hidden_size=4, clip=0.5)
    _check("LSTM", inputs, n_outputs=3, hidden_size=4, input_forget=1)


def test_quantized_conv_and_matmul():
    x = (np.arange(75) * 7 % 200).astype(np.uint8).reshape(1, 3, 5, 5)
    w = (np.arange(4 * 27) * 5 % 100 - 50).astype(np.int8).reshape(4, 3, 3, 3)
    scalar = np.array
    conv_inputs = {
        "x": x, "xs": scalar(0.05, np.float32), "xz": scalar(10, np.uint8),
        "w": w, "ws": scalar([0.1, 0.2, 0.05, 0.3], np.float32), "wz": np.zeros(4, np.int8),
        "ys": scalar(0.7, np.float32), "yz": scalar(128, np.uint8),
        "b": scalar([1, -20, 30, 4], np.int32),
    }
    # Requantised values may differ by one step where the two round a tie differently.
    _check("QLinearConv", conv_inputs, pads=[1, 1, 1, 1], rtol=0, atol=1)
    mm_inputs = {
        "a": x[0, 0], "as": scalar(0.1, np.float32), "az": scalar(3, np.uint8),
        "b": x[0, 1], "bs": scalar(0.02, np.float32), "bz": scalar(100, np.uint8),
        "ys": scalar(0.9, np.float32), "yz": scalar(7, np.uint8),
    }
    _check("QLinearMatMul", mm_inputs, opset=21, rtol=0, atol=1)
    _check("MatMulInteger", {"a": x[0, 0], "b": x[0, 1], "az": scalar(5, np.uint8),
                             "bz": scalar([1, 2, 3, 4, 5], np.uint8)}, opset=10)
