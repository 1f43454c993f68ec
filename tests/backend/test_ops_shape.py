"""Forward rules of op family C (shape, indexing, control flow, sequences, ai.onnx.ml) against
onnxruntime on small models, with indices and conditions both static and traced."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from projc.backends.jax.evaluator import Forward
from projc.backends.jax.onnx_backend import ProjcBackend
from projc.errors import ShapeError

_RNG = np.random.default_rng(0)
F32, I64, BOOL = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL


def _model(nodes, inputs, outputs, opset=18, inits=(), ml=False):
    """A model from nodes; ``inputs``/``outputs`` are (name, elem_type, shape) triples."""
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(*i) for i in inputs],
        [helper.make_tensor_value_info(*o) for o in outputs],
        initializer=[numpy_helper.from_array(np.asarray(v), n) for n, v in inits],
    )
    opsets = [helper.make_opsetid("", opset)]
    opsets += [helper.make_opsetid("ai.onnx.ml", 5)] if ml else []
    return helper.make_model(graph, opset_imports=opsets)


def _node_model(op, inputs, outputs, opset=18, inits=(), **attrs):
    names = [n for n, *_ in inputs] + [n for n, _ in inits]
    node = helper.make_node(op, names, [n for n, *_ in outputs], **attrs)
    return _model([node], inputs, outputs, opset, inits)


def _ort(model, feeds):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _traced(model, feeds):
    """Run with every input traced (``ProjcBackend`` binds integer inputs as static)."""
    fwd = Forward(ir.serde.deserialize_model(model))
    return [np.asarray(o) for o in fwd(feeds, params={})]


def _check(ours, ref, rtol=1e-5, atol=1e-6):
    assert len(ours) == len(ref)
    for a, b in zip(ours, ref):
        assert a.dtype == b.dtype and a.shape == b.shape, (a.dtype, a.shape, b.dtype, b.shape)
        np.testing.assert_allclose(a.astype(np.float64), b.astype(np.float64), rtol, atol)


def _like_ort(model, feeds, traced=False, **tol):
    ours = _traced(model, feeds) if traced else ProjcBackend.prepare(model).run(feeds)
    _check(ours, _ort(model, feeds), **tol)


X = _RNG.standard_normal((2, 3, 4, 5)).astype(np.float32)


@pytest.mark.parametrize(
    "op,inits,attrs,opset",
    [
        ("Reshape", [("s", np.array([0, -1, 5]))], {}, 18),
        ("Reshape", [("s", np.array([6, 4, 5]))], {"allowzero": 1}, 18),
        ("Slice", [("st", np.array([-1, 1])), ("en", np.array([-100, 4])),
                   ("ax", np.array([3, 1])), ("sp", np.array([-2, 1]))], {}, 18),
        ("Pad", [("p", np.array([1, 2, 2, 1])), ("c", np.float32(0)), ("ax", np.array([2, 3]))],
         {"mode": "reflect"}, 18),
        ("Pad", [("p", np.array([3, -1, 0, 2])), ("c", np.float32(0)), ("ax", np.array([3, 1]))],
         {"mode": "wrap"}, 19),
        ("Pad", [("p", np.array([0, 0, 1, 0, 0, 0, 2, 3]))], {"mode": "edge"}, 18),
        ("Squeeze", [("ax", np.array([0]))], {}, 18),
        ("Unsqueeze", [("ax", np.array([-1, 1]))], {}, 18),
        ("Expand", [("s", np.array([3, 1, 1, 1, 1]))], {}, 18),
        ("Tile", [("r", np.array([1, 2, 1, 3]))], {}, 18),
        ("Trilu", [("k", np.array(-1))], {"upper": 0}, 18),
        ("DepthToSpace", [], {"blocksize": 1, "mode": "CRD"}, 18),
        ("CenterCropPad", [("s", np.array([2, 7]))], {"axes": [1, 3]}, 18),
        ("Transpose", [], {"perm": [2, 0, 3, 1]}, 18),
        ("Flatten", [], {"axis": -2}, 18),
    ],
)
def test_shape_ops_match_onnxruntime(op, inits, attrs, opset):
    x = X[:1] if op == "Squeeze" else X
    model = _node_model(op, [("x", F32, x.shape)], [("y", F32, None)], opset, inits, **attrs)
    _like_ort(model, {"x": x})


def test_split_num_outputs_uneven_and_shape_chain():
    # Shape -> Gather -> Concat -> Reshape stays static while x is traced.
    nodes = [
        helper.make_node("Split", ["x"], ["a", "b", "c"], axis=3, num_outputs=3),
        helper.make_node("Shape", ["x"], ["s"], start=1, end=-1),
        helper.make_node("Gather", ["s", "i"], ["g"]),
        helper.make_node("Concat", ["g", "m1"], ["t"], axis=0),
        helper.make_node("Reshape", ["a", "t"], ["r"]),
    ]
    inits = [("i", np.array([-1])), ("m1", np.array([-1]))]
    outs = [("b", F32, None), ("c", F32, None), ("r", F32, None)]
    model = _model(nodes, [("x", F32, X.shape)], outs, 18, inits)
    ours = ProjcBackend.prepare(model).run({"x": X})
    assert [o.shape for o in ours] == [(2, 3, 4, 2), (2, 3, 4, 1), (4, 12)]
    _check(ours, _ort(model, {"x": X}))


def test_reshape_allowzero_keeps_literal_zeros():
    model = _node_model("Reshape", [("x", F32, [0, 3])], [("y", F32, None)], 18,
                        [("s", np.array([3, 0]))], allowzero=1)
    (y,) = ProjcBackend.prepare(model).run({"x": np.zeros((0, 3), np.float32)})
    assert y.shape == (3, 0)


def test_traced_reshape_target_is_a_clear_error():
    model = _node_model("Reshape", [("x", F32, [6]), ("s", I64, [2])], [("y", F32, None)])
    with pytest.raises(ShapeError, match="target shape must be known"):
        _traced(model, {"x": np.zeros(6, np.float32), "s": np.array([2, 3])})


IDX = np.array([[-1, 0, 2], [1, -3, 0]])


@pytest.mark.parametrize(
    "op,attrs,extra",
    [
        ("Gather", {"axis": 1}, []),
        ("GatherElements", {"axis": 1}, []),
        ("ScatterElements", {"axis": 1, "reduction": "add"}, [("u", F32, [2, 3])]),
        ("ScatterElements", {"axis": 0}, [("u", F32, [2, 3])]),
    ],
)
@pytest.mark.parametrize("traced", [False, True])
def test_gathers_and_scatters_with_negative_indices(op, attrs, extra, traced):
    x = _RNG.standard_normal((3, 4)).astype(np.float32)
    idx = IDX if op != "ScatterElements" or attrs["axis"] == 1 else np.array([[1, 0, 2], [2, 1, 0]])
    feeds = {"x": x, "i": idx}
    feeds.update({n: _RNG.standard_normal(s).astype(np.float32) for n, _, s in extra})
    ins = [("x", F32, x.shape), ("i", I64, idx.shape)] + extra
    _like_ort(_node_model(op, ins, [("y", F32, None)], 18, **attrs), feeds, traced=traced)


def test_gather_nd_batch_dims_and_scatter_nd_reduction():
    x = _RNG.standard_normal((2, 3, 4)).astype(np.float32)
    idx = np.array([[[2], [0]], [[1], [1]]])
    gnd = _node_model("GatherND", [("x", F32, x.shape), ("i", I64, idx.shape)],
                      [("y", F32, None)], 18, batch_dims=1)
    _like_ort(gnd, {"x": x, "i": idx}, traced=True)
    upd = _RNG.standard_normal((2, 4)).astype(np.float32)
    ind = np.array([[1, 2], [1, 2]])
    ins = [("x", F32, x.shape), ("i", I64, ind.shape), ("u", F32, upd.shape)]
    snd = _node_model("ScatterND", ins,
                      [("y", F32, None)], 18, reduction="mul")
    _like_ort(snd, {"x": x, "i": ind, "u": upd})


@pytest.mark.parametrize("largest", [0, 1])
def test_top_k_prefers_lower_indices_on_ties(largest):
    x = np.array([[3, 1, 3, 2, 1, 3]], np.float32)
    model = _node_model("TopK", [("x", F32, x.shape)], [("v", F32, None), ("i", I64, None)],
                        18, [("k", np.array([3]))], largest=largest)
    _like_ort(model, {"x": x})


@pytest.mark.parametrize(
    "attrs,scales",
    [
        ({"mode": "linear", "antialias": 1}, [1, 1, 0.6, 0.5]),
        ({"mode": "cubic", "coordinate_transformation_mode": "align_corners"}, [1, 1, 1.5, 2.0]),
        ({"mode": "nearest", "nearest_mode": "ceil"}, [1, 1, 2.0, 0.8]),
    ],
)
def test_resize_with_constant_scales(attrs, scales):
    inits = [("roi", np.zeros(0, np.float32)), ("sc", np.asarray(scales, np.float32))]
    model = _node_model("Resize", [("x", F32, X.shape)], [("y", F32, None)], 18, inits, **attrs)
    _like_ort(model, {"x": X}, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("scales", [[1, 1, 2.0, 1.5], [1, 1, 0.5, 0.6]])
def test_resize_10_nearest_floors_up_and_ceils_down(scales):
    inits = [("sc", np.asarray(scales, np.float32))]
    model = _node_model("Resize", [("x", F32, X.shape)], [("y", F32, None)], 10, inits)
    _like_ort(model, {"x": X})


def _branch(name, op, value):
    c = helper.make_node("Constant", [], [f"{name}_c"], value=numpy_helper.from_array(value))
    node = helper.make_node(op, ["x", f"{name}_c"], [f"{name}_y"])
    out = helper.make_tensor_value_info(f"{name}_y", F32, None)
    return helper.make_graph([c, node], name, [], [out])


@pytest.mark.parametrize("cond", [True, False])
@pytest.mark.parametrize("traced", [False, True])
def test_if_static_and_traced_condition(cond, traced):
    two = np.float32(2.0)
    node = helper.make_node("If", ["c"], ["y"], then_branch=_branch("t", "Add", two),
                            else_branch=_branch("e", "Mul", two))
    model = _model([node], [("c", BOOL, []), ("x", F32, [3])], [("y", F32, None)])
    feeds = {"c": np.array(cond), "x": np.arange(3, dtype=np.float32)}
    _like_ort(model, feeds, traced=traced)


def _loop_model(trip_count, stop_at=None):
    """acc += x each iteration, scan output acc * i; with ``stop_at``, run while acc0 < stop_at."""
    nodes = [helper.make_node("Add", ["acc", "x"], ["acc2"]),
             helper.make_node("Cast", ["i"], ["fi"], to=F32),
             helper.make_node("Mul", ["acc2", "fi"], ["scan"])]
    if stop_at is None:
        nodes.append(helper.make_node("Identity", ["cin"], ["cout"]))
    else:
        nodes += [helper.make_node("Constant", [], ["lim"], value_float=stop_at),
                  helper.make_node("ReduceMin", ["acc2"], ["lo"], keepdims=0),
                  helper.make_node("Less", ["lo", "lim"], ["cout"])]
    outs = [("cout", BOOL), ("acc2", F32)] + ([("scan", F32)] if stop_at is None else [])
    body = helper.make_graph(
        nodes, "body",
        [helper.make_tensor_value_info(n, t, s) for n, t, s in
         (("i", I64, []), ("cin", BOOL, []), ("acc", F32, [2]))],
        [helper.make_tensor_value_info(n, t, None) for n, t in outs],
    )
    results = ["acc", "scans"] if stop_at is None else ["acc"]
    node = helper.make_node("Loop", ["m", "", "a0"], results, body=body)
    return _model([node], [("x", F32, [2]), ("a0", F32, [2])],
                  [(r, F32, None) for r in results], 18, [("m", np.array(trip_count))])


@pytest.mark.parametrize("trip_count", [4, 300])  # unrolled, and a lax.scan past MAX_UNROLL
def test_loop_with_carried_and_scan_outputs(trip_count):
    feeds = {"x": np.array([1, 2], np.float32), "a0": np.array([0.5, -1], np.float32)}
    _like_ort(_loop_model(trip_count), feeds, rtol=1e-5, atol=1e-3)


def test_loop_with_run_time_condition_is_masked():
    feeds = {"x": np.array([1, 2], np.float32), "a0": np.array([0.5, -1], np.float32)}
    _like_ort(_loop_model(10, stop_at=4.0), feeds)


def test_scan_reverse_cumulative_sum():
    body = helper.make_graph(
        [helper.make_node("Add", ["s", "xi"], ["s2"]), helper.make_node("Identity", ["s2"], ["o"])],
        "body",
        [helper.make_tensor_value_info(n, F32, [3]) for n in ("s", "xi")],
        [helper.make_tensor_value_info(n, F32, [3]) for n in ("s2", "o")],
    )
    node = helper.make_node("Scan", ["s0", "x"], ["sf", "ys"], body=body, num_scan_inputs=1,
                            scan_input_axes=[1], scan_input_directions=[1], scan_output_axes=[-1])
    model = _model([node], [("s0", F32, [3]), ("x", F32, [3, 4])],
                   [("sf", F32, None), ("ys", F32, None)])
    feeds = {"s0": np.zeros(3, np.float32), "x": _RNG.standard_normal((3, 4)).astype(np.float32)}
    _like_ort(model, feeds)


def test_sequence_round_trip():
    nodes = [
        helper.make_node("SplitToSequence", ["x", "sp"], ["seq"], axis=3),
        helper.make_node("SequenceErase", ["seq", "zero"], ["seq2"]),
        helper.make_node("SequenceInsert", ["seq2", "x", "zero"], ["seq3"]),
        helper.make_node("SequenceLength", ["seq3"], ["n"]),
        helper.make_node("SequenceAt", ["seq3", "last"], ["tail"]),
        helper.make_node("ConcatFromSequence", ["seq3"], ["cat"], axis=3),
    ]
    inits = [("sp", np.array(2)), ("zero", np.array(0)), ("last", np.array(-1))]
    outs = [("n", I64, None), ("tail", F32, None), ("cat", F32, None)]
    model = _model(nodes, [("x", F32, X.shape)], outs, 18, inits)
    _like_ort(model, {"x": X})


def test_ml_linear_classifier_and_scaler():
    x = _RNG.standard_normal((5, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Scaler", ["x"], ["xs"], domain="ai.onnx.ml",
                         offset=[0.1, -0.2, 0.0], scale=[2.0, 1.0, 0.5]),
        helper.make_node("LinearClassifier", ["xs"], ["label", "p"], domain="ai.onnx.ml",
                         coefficients=list(_RNG.standard_normal(9)), intercepts=[0.1, 0.0, -0.1],
                         classlabels_ints=[4, 5, 6], post_transform="SOFTMAX"),
    ]
    model = _model(nodes, [("x", F32, x.shape)], [("label", I64, None), ("p", F32, None)],
                   18, ml=True)
    model.opset_import[1].version = 1
    _like_ort(model, {"x": x})


@pytest.mark.parametrize(
    "op,attrs,extra",
    [
        ("LinearRegressor", {"coefficients": [0.5, -1.0, 2.0, 1.0, 0.0, -0.5], "targets": 2,
                             "intercepts": [0.1, 0.2]}, []),
        ("Normalizer", {"norm": "L2"}, []),
        ("Binarizer", {"threshold": 0.2}, []),
        ("ArrayFeatureExtractor", {}, [("i", np.array([2, 0]))]),
    ],
)
def test_ml_ops(op, attrs, extra):
    x = _RNG.standard_normal((4, 3)).astype(np.float32)
    names = ["x"] + [n for n, _ in extra]
    node = helper.make_node(op, names, ["y"], domain="ai.onnx.ml", **attrs)
    model = _model([node], [("x", F32, x.shape)], [("y", F32, None)], 18, extra, ml=True)
    model.opset_import[1].version = 1
    _like_ort(model, {"x": x})


def test_ml_imputer_and_feature_vectorizer():
    x = np.array([[1, np.nan, 3], [np.nan, 5, 6]], np.float32)
    nodes = [
        helper.make_node("Imputer", ["x"], ["xi"], domain="ai.onnx.ml",
                         imputed_value_floats=[-1.0, -2.0, -3.0], replaced_value_float=np.nan),
        helper.make_node("FeatureVectorizer", ["xi", "x"], ["y"], domain="ai.onnx.ml",
                         inputdimensions=[2, 4]),
    ]
    model = _model(nodes, [("x", F32, x.shape)], [("y", F32, None)], 18, ml=True)
    model.opset_import[1].version = 1
    (y,) = ProjcBackend.prepare(model).run({"x": x})
    np.testing.assert_array_equal(y[:, :2], [[1, -2], [-1, 5]])
    _like_ort(model, {"x": x})


@pytest.mark.parametrize(
    "x,cats",
    [(np.array([[2, 9], [0, 2]]), {"cats_int64s": [0, 2, 5]}),
     (np.array([["b", "z"], ["a", "b"]], dtype=object), {"cats_strings": ["a", "b"]})],
)
def test_ml_one_hot_encoder_after_gather(x, cats):
    elem = I64 if x.dtype == np.int64 else TensorProto.STRING
    nodes = [helper.make_node("Gather", ["x", "i"], ["col"], axis=1),
             helper.make_node("OneHotEncoder", ["col"], ["y"], domain="ai.onnx.ml", **cats)]
    model = _model(nodes, [("x", elem, x.shape)], [("y", F32, None)], 18, [("i", np.array([1, 0]))],
                   ml=True)
    model.opset_import[1].version = 1
    _like_ort(model, {"x": x})


def test_eye_like_dtype_attribute():
    model = _node_model("EyeLike", [("x", F32, [3, 4])], [("y", I64, None)], 18,
                        k=1, dtype=I64)
    _like_ort(model, {"x": np.zeros((3, 4), np.float32)})


_TREES = dict(  # tree 0: x0 <= 0 ? leaf 1 : (x1 > 0.5 ? leaf 3 : leaf 4); tree 1: a single leaf
    nodes_treeids=[0, 0, 0, 0, 0, 1], nodes_nodeids=[0, 1, 2, 3, 4, 0],
    nodes_featureids=[0, 0, 1, 0, 0, 0], nodes_values=[0.0, 0, 0.5, 0, 0, 0],
    nodes_modes=["BRANCH_LEQ", "LEAF", "BRANCH_GT", "LEAF", "LEAF", "LEAF"],
    nodes_truenodeids=[1, 0, 3, 0, 0, 0], nodes_falsenodeids=[2, 0, 4, 0, 0, 0],
)
_LEAVES = dict(treeids=[0, 0, 0, 0, 1, 1], nodeids=[1, 3, 4, 4, 0, 0], ids=[0, 1, 0, 2, 0, 1],
               weights=[1.0, 2.0, -1.0, 0.5, 0.25, 0.3])


@pytest.mark.parametrize(
    "op,labels", [("TreeEnsembleRegressor", None), ("TreeEnsembleClassifier", [7, 8, 9]),
                  ("TreeEnsembleClassifier", [3, 5])],  # binary: one score column
)
def test_ml_tree_ensembles(op, labels):
    x = np.array([[-1, 0], [1, 1], [1, 0], [0, 2]], np.float32)
    prefix = "target" if labels is None else "class"
    leaves = {f"{prefix}_{k}": v for k, v in _LEAVES.items()}
    extra = {"n_targets": 3} if labels is None else {"classlabels_int64s": labels}
    if labels is not None and len(labels) == 2:
        leaves.update(class_ids=[1] * 6, class_weights=[0.2, 0.9, 0.1, 0.3, 0.4, 0.0])
    outs = [("y", F32, None)] if prefix == "target" else [("l", I64, None), ("y", F32, None)]
    node = helper.make_node(op, ["x"], [n for n, *_ in outs], domain="ai.onnx.ml",
                            **_TREES, **leaves, **extra)
    model = _model([node], [("x", F32, x.shape)], outs, 18, ml=True)
    model.opset_import[1].version = 3
    _like_ort(model, {"x": x})
