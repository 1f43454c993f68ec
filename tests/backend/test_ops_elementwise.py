"""Forward rules of op family A (elementwise, reductions, quantization, signal) against
onnxruntime and NumPy on small single-node models."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from projc.backends.jax.onnx_backend import ProjcBackend

_RNG = np.random.default_rng(0)


def _model(op, inputs, outputs, opset=18, **attrs):
    """A one-node model; ``inputs``/``outputs`` are (name, elem_type, shape) triples."""
    node = helper.make_node(op, [n for n, *_ in inputs], [n for n, *_ in outputs], **attrs)
    graph = helper.make_graph(
        [node],
        op.lower(),
        [helper.make_tensor_value_info(*i) for i in inputs],
        [helper.make_tensor_value_info(*o) for o in outputs],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _run(model, feeds):
    return ProjcBackend.prepare(model).run(feeds)


def _ort(model, feeds):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _assert_like_ort(model, feeds, rtol=1e-5, atol=1e-6):
    ours, ref = _run(model, feeds), _ort(model, feeds)
    assert len(ours) == len(ref)
    for a, b in zip(ours, ref):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_allclose(a.astype(np.float64), b.astype(np.float64), rtol, atol)


F32 = TensorProto.FLOAT
X = _RNG.standard_normal((3, 4)).astype(np.float32)


@pytest.mark.parametrize(
    "op,attrs",
    [
        ("Erf", {}),
        ("Softplus", {}),
        ("Selu", {}),
        ("Celu", {"alpha": 0.7}),
        ("HardSwish", {}),
        ("LeakyRelu", {"alpha": 0.2}),
        ("Shrink", {"lambd": 0.3, "bias": 0.1}),
        ("Gelu", {"approximate": "tanh"}),
        ("Round", {}),
    ],
)
def test_unary_activations_match_onnxruntime(op, attrs):
    model = _model(op, [("x", F32, [3, 4])], [("y", F32, [3, 4])], opset=20, **attrs)
    _assert_like_ort(model, {"x": X * 2})


def test_integer_div_truncates_and_mod_follows_fmod_attribute():
    a = np.array([7, -7, 7, -7], np.int64)
    b = np.array([2, 2, -2, -2], np.int64)
    ints = [("a", TensorProto.INT64, [4]), ("b", TensorProto.INT64, [4])]
    out = [("y", TensorProto.INT64, [4])]
    (div,) = _run(_model("Div", ints, out), [a, b])
    np.testing.assert_array_equal(div, [3, -3, -3, 3])
    (mod,) = _run(_model("Mod", ints, out), [a, b])
    np.testing.assert_array_equal(mod, np.mod(a, b))
    (fmod,) = _run(_model("Mod", ints, out, fmod=1), [a, b])
    np.testing.assert_array_equal(fmod, np.fmod(a, b))


def test_variadic_max_broadcasts_and_keeps_float16():
    a = _RNG.standard_normal((2, 3)).astype(np.float16)
    b = _RNG.standard_normal((3,)).astype(np.float16)
    f16 = TensorProto.FLOAT16
    model = _model("Max", [("a", f16, [2, 3]), ("b", f16, [3])], [("y", f16, [2, 3])])
    (y,) = _run(model, [a, b])
    assert y.dtype == np.float16
    np.testing.assert_array_equal(y, np.maximum(a, b))


def test_clip_attribute_version_and_input_version():
    x = np.linspace(-2, 2, 9, dtype=np.float32)
    old = _model("Clip", [("x", F32, [9])], [("y", F32, [9])], opset=6, min=-0.5, max=1.0)
    np.testing.assert_allclose(_run(old, [x])[0], np.clip(x, -0.5, 1.0))
    new = _model(
        "Clip", [("x", F32, [9]), ("lo", F32, []), ("hi", F32, [])], [("y", F32, [9])]
    )
    lo, hi = np.float32(-0.5), np.float32(1.0)
    np.testing.assert_allclose(_run(new, [x, np.array(lo), np.array(hi)])[0], np.clip(x, lo, hi))


def test_cast_to_float8_saturates_unless_told_not_to():
    x = np.array([1000.0, -1000.0, 0.3], np.float32)
    e4m3 = TensorProto.FLOAT8E4M3FN
    sat = _model("Cast", [("x", F32, [3])], [("y", e4m3, [3])], opset=21, to=e4m3)
    (y,) = _run(sat, [x])
    assert y.dtype == ml_dtypes.float8_e4m3fn
    np.testing.assert_array_equal(y.astype(np.float32), [448.0, -448.0, 0.3125])
    raw = _model("Cast", [("x", F32, [3])], [("y", e4m3, [3])], opset=21, to=e4m3, saturate=0)
    assert np.isnan(_run(raw, [x])[0].astype(np.float32)[:2]).all()


def test_cast_to_int4_sends_floats_out_of_range_to_zero_and_wraps_integers():
    """ONNX's reference (ml_dtypes >= 0.7, onnx 1.23.2's test data): a float outside int4's
    range, or NaN, becomes 0 and an in-range one is truncated; an integer wraps modulo 16."""
    i4 = TensorProto.INT4
    floats = np.array([-9.0, -8.0, -2.7, 7.9, 8.0, 15.0, np.nan], np.float32)
    (y,) = _run(_model("Cast", [("x", F32, [7])], [("y", i4, [7])], opset=21, to=i4), [floats])
    np.testing.assert_array_equal(y.astype(np.int8), [0, -8, -2, 7, 0, 0, 0])
    ints = np.array([-9, 8, 15, 3], np.int32)
    (z,) = _run(_model("Cast", [("x", TensorProto.INT32, [4])], [("y", i4, [4])], opset=21, to=i4), [ints])
    np.testing.assert_array_equal(z.astype(np.int8), [7, -8, -1, 3])


@pytest.mark.parametrize("op", ["ReduceSum", "ReduceMax", "ReduceL2", "ReduceLogSumExp"])
@pytest.mark.parametrize("keepdims", [0, 1])
def test_reductions_with_axes_input_match_onnxruntime(op, keepdims):
    x = _RNG.standard_normal((2, 3, 4)).astype(np.float32)
    shape = [2, 1, 4] if keepdims else [2, 4]
    model = _model(
        op,
        [("x", F32, [2, 3, 4]), ("axes", TensorProto.INT64, [1])],
        [("y", F32, shape)],
        keepdims=keepdims,
    )
    _assert_like_ort(model, {"x": x, "axes": np.array([-2], np.int64)})


def test_reduce_mean_axes_attribute_before_opset_18():
    x = _RNG.standard_normal((2, 3, 4)).astype(np.float32)
    model = _model("ReduceMean", [("x", F32, [2, 3, 4])], [("y", F32, [3])], 13, axes=[0, 2],
                   keepdims=0)
    np.testing.assert_allclose(_run(model, [x])[0], x.mean(axis=(0, 2)), rtol=1e-6)


def test_softmax_coerces_to_2d_before_opset_13():
    x = _RNG.standard_normal((2, 3, 4)).astype(np.float32)
    for opset in (11, 13):
        model = _model("Softmax", [("x", F32, [2, 3, 4])], [("y", F32, [2, 3, 4])], opset, axis=1)
        _assert_like_ort(model, {"x": x})
    (old,) = _run(_model("Softmax", [("x", F32, [2, 3, 4])], [("y", F32, [2, 3, 4])], 11), [x])
    np.testing.assert_allclose(old.reshape(2, -1).sum(axis=1), 1.0, rtol=1e-6)


def test_argmax_select_last_index():
    x = np.array([[1, 3, 3], [2, 2, 0]], np.float32)
    for last, want in ((0, [1, 0]), (1, [2, 1])):
        model = _model("ArgMax", [("x", F32, [2, 3])], [("y", TensorProto.INT64, [2])],
                       axis=1, keepdims=0, select_last_index=last)
        np.testing.assert_array_equal(_run(model, [x])[0], want)


def test_cumsum_exclusive_reverse():
    x = np.arange(1, 6, dtype=np.float32)
    model = _model("CumSum", [("x", F32, [5]), ("axis", TensorProto.INT64, [])],
                   [("y", F32, [5])], exclusive=1, reverse=1)
    (y,) = _run(model, [x, np.array(0, np.int64)])
    np.testing.assert_array_equal(y, [14, 12, 9, 5, 0])


def test_quantize_per_axis_round_trip_matches_onnxruntime():
    x = _RNG.uniform(-0.9, 0.9, (2, 3)).astype(np.float32)  # inside every channel's range
    scale = np.array([0.01, 0.02, 0.05], np.float32)
    zp = np.array([100, 60, 128], np.uint8)
    u8 = TensorProto.UINT8
    q = _model("QuantizeLinear", [("x", F32, [2, 3]), ("s", F32, [3]), ("z", u8, [3])],
               [("y", u8, [2, 3])], axis=1)
    _assert_like_ort(q, {"x": x, "s": scale, "z": zp})
    (y,) = _run(q, [x, scale, zp])
    dq = _model("DequantizeLinear", [("y", u8, [2, 3]), ("s", F32, [3]), ("z", u8, [3])],
                [("x", F32, [2, 3])], axis=1)
    _assert_like_ort(dq, {"y": y, "s": scale, "z": zp})
    assert (np.abs(_run(dq, [y, scale, zp])[0] - x) <= scale / 2 + 1e-6).all()


def test_softmax_cross_entropy_with_ignore_index_matches_onnxruntime():
    scores = _RNG.standard_normal((4, 3, 2)).astype(np.float32)
    labels = np.array([[0, 2], [1, -1], [2, 2], [-1, 0]], np.int64)
    model = _model(
        "SoftmaxCrossEntropyLoss",
        [("x", F32, [4, 3, 2]), ("t", TensorProto.INT64, [4, 2])],
        [("loss", F32, []), ("logp", F32, [4, 3, 2])],
        ignore_index=-1,
    )
    _assert_like_ort(model, {"x": scores, "t": labels})


def test_dft_matches_numpy_fft():
    x = _RNG.standard_normal((1, 8, 1)).astype(np.float32)
    model = _model("DFT", [("x", F32, [1, 8, 1])], [("y", F32, [1, 5, 2])], 17, axis=1,
                   onesided=1)
    (y,) = _run(model, [x])
    want = np.fft.rfft(x[..., 0], axis=1)
    np.testing.assert_allclose(y[..., 0] + 1j * y[..., 1], want, rtol=1e-5, atol=1e-5)



def test_bitshift_and_bitwise_on_unsigned():
    x = np.array([16, 4, 1], np.uint8)
    s = np.array([1, 2, 3], np.uint8)
    u8 = [("x", TensorProto.UINT8, [3]), ("s", TensorProto.UINT8, [3])]
    out = [("y", TensorProto.UINT8, [3])]
    (right,) = _run(_model("BitShift", u8, out, direction="RIGHT"), [x, s])
    np.testing.assert_array_equal(right, [8, 1, 0])
    (left,) = _run(_model("BitShift", u8, out, direction="LEFT"), [x, s])
    np.testing.assert_array_equal(left, [32, 16, 8])
    (xor,) = _run(_model("BitwiseXor", u8, out), [x, s])
    np.testing.assert_array_equal(xor, x ^ s)


def test_equal_on_strings_and_where_on_floats():
    a = np.array(["a", "b", "c"], dtype=object)
    b = np.array(["a", "x", "c"], dtype=object)
    s = TensorProto.STRING
    model = _model("Equal", [("a", s, [3]), ("b", s, [3])], [("y", TensorProto.BOOL, [3])], 19)
    np.testing.assert_array_equal(_run(model, [a, b])[0], [True, False, True])
    cond = np.array([True, False, True])
    where = _model(
        "Where",
        [("c", TensorProto.BOOL, [3]), ("x", F32, [3]), ("y", F32, [3])],
        [("z", F32, [3])],
    )
    x, y = np.ones(3, np.float32), np.zeros(3, np.float32)
    np.testing.assert_array_equal(_run(where, [cond, x, y])[0], [1, 0, 1])


def test_hardmax_picks_the_first_maximum():
    x = np.array([[3, 1, 3], [0, 2, 1]], np.float32)
    model = _model("Hardmax", [("x", F32, [2, 3])], [("y", F32, [2, 3])], 13)
    np.testing.assert_array_equal(_run(model, [x])[0], [[1, 0, 0], [0, 1, 0]])


@pytest.mark.parametrize("op,ref", [("HannWindow", np.hanning), ("HammingWindow", None),
                                    ("BlackmanWindow", np.blackman)])
def test_symmetric_windows_match_numpy(op, ref):
    model = _model(op, [("n", TensorProto.INT64, [])], [("w", F32, [8])], 17, periodic=0)
    (w,) = _run(model, [np.array(8, np.int64)])
    assert w.dtype == np.float32
    if ref is not None:
        np.testing.assert_allclose(w, ref(8), atol=1e-6)
    else:  # ONNX's Hamming uses alpha = 25/46 rather than NumPy's 0.54
        n = np.arange(8)
        np.testing.assert_allclose(w, 25 / 46 - 21 / 46 * np.cos(2 * np.pi * n / 7), atol=1e-6)


def test_nll_loss_with_class_weights_matches_onnxruntime():
    logp = np.log(_RNG.dirichlet(np.ones(4), size=5)).astype(np.float32)
    target = np.array([0, 3, 1, 1, 2], np.int64)
    weight = np.array([0.5, 1.0, 2.0, 1.5], np.float32)
    model = _model(
        "NegativeLogLikelihoodLoss",
        [("x", F32, [5, 4]), ("t", TensorProto.INT64, [5]), ("w", F32, [4])],
        [("loss", F32, [])],
    )
    _assert_like_ort(model, {"x": logp, "t": target, "w": weight})


def test_softmax_after_global_average_pool_of_huge_values_is_finite():
    """XLA fuses the mean into both the max and the subtraction of a softmax; without the
    rounding guard one ulp above the max overflows exp at |x| ~ 1e9 (light_squeezenet gave NaN)."""
    from onnx import TensorProto, helper

    from projc.backends.jax.onnx_backend import ProjcBackend

    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["p"]), helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Softmax", ["f"], ["y"], axis=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64, 5, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    x = np.random.default_rng(0).uniform(1e9, 1e10, size=(1, 64, 5, 5)).astype(np.float32)
    (y,) = ProjcBackend.prepare(model).run([x])
    assert np.isfinite(y).all() and abs(float(y.sum()) - 1.0) < 1e-5


@pytest.mark.parametrize("direction", [np.inf, -np.inf])
def test_shift_by_a_max_evaluated_with_other_rounding(direction):
    """The max of a recomputed producer can sit an ulp above or below every element (one
    compile of light_resnet50 gave a 0/0 softmax at |x| ~ 1e19): the shift snaps such
    differences to 0, and leaves differences of ordinary logits as they are."""
    import jax.numpy as jnp

    from projc.backends.jax.ops.reduce import shifted_by_max

    x = np.full((1, 5), 9.7e18, np.float32)
    top = np.nextafter(x[:, :1], np.float32(direction))
    d = np.asarray(shifted_by_max(jnp.asarray(x), 1, jnp.asarray(top)))
    assert abs(float(x[0, 0] - top[0, 0])) > 1e11  # without the guard exp(d) is 0 or inf
    np.testing.assert_array_equal(d, 0)
    z = _RNG.standard_normal((3, 7)).astype(np.float32) * 5
    np.testing.assert_array_equal(np.asarray(shifted_by_max(jnp.asarray(z), 1)), z - z.max(1, keepdims=True))
