"""``fold-constants``: constant subgraphs become initializers; parameters never fold."""

from __future__ import annotations

import numpy as np

from passutil import assert_idempotent, check_pipeline, op_types, parse, verify_after
from projc.frontend import IMPORT_PIPELINE, load_model, save_model, to_proto
from projc.ir import CONST, PARAM, ROLE_KEY
from projc.passes import run_pipeline
from projc.passes.fold_constants import FoldConstants

HEAD = '<ir_version: 8, opset_import: ["" : 17]>'

# torch.onnx's flatten: x.view(x.size(0), -1)
TORCH_FLATTEN = HEAD + """
flatten (float[2,3,4] x) => (float[2,12] y) {
  s = Shape(x)
  zero = Constant<value = int64 {0}>()
  n = Gather<axis=0>(s, zero)
  axes = Constant<value = int64[1] {0}>()
  n1 = Unsqueeze(n, axes)
  minus1 = Constant<value = int64[1] {-1}>()
  shp = Concat<axis=0>(n1, minus1)
  y = Reshape(x, shp)
}
"""


def _init(model, name):
    return model.graph.initializers[name]


def test_torch_flatten_chain_folds_to_one_reshape():
    model = check_pipeline(parse(TORCH_FLATTEN), "fold-constants,dce").model
    assert op_types(model) == ["Reshape"]
    shape = model.graph.node(0).inputs[1]
    assert shape.is_initializer() and shape.meta[ROLE_KEY] == CONST
    assert shape.const_value.numpy().tolist() == [2, -1]


def test_shape_of_intermediate_folds_once_shapes_are_inferred():
    text = HEAD + """
    g (float[2,3,4] x) => (float[6,4] y) {
      r = Relu(x)
      s = Shape<start = 0, end = -1>(r)
      p = ReduceProd<keepdims = 1>(s)
      last = Shape<start = -1>(r)
      shp = Concat<axis=0>(p, last)
      y = Reshape(r, shp)
    }
    """
    model = parse(text)
    check_pipeline(model, [FoldConstants(infer_shapes=False)])
    assert "Shape" in op_types(model)  # %r has no shape before inference
    model = check_pipeline(model, "fold-constants,dce").model
    assert op_types(model) == ["Relu", "Reshape"]
    assert model.graph.node(1).inputs[1].const_value.numpy().tolist() == [6, 4]


def test_shape_chains_several_levels_deep_fold_in_one_run():
    # each Reshape's shape comes from the Shape of the previous Reshape's output
    text = HEAD + """
    g (float[2,3,4] x) => (float[24] y) {
      s0 = Shape(x)
      a0 = Constant<value = int64[1] {0}>()
      d0 = Gather<axis = 0>(s0, a0)
      m1 = Constant<value = int64[1] {-1}>()
      shp1 = Concat<axis = 0>(d0, m1)
      r1 = Reshape(x, shp1)
      s1 = Shape(r1)
      shp2 = ReduceProd<keepdims = 1>(s1)
      r2 = Reshape(r1, shp2)
      s2 = Shape(r2)
      y = Reshape(r2, s2)
    }
    """
    model = check_pipeline(parse(text), "fold-constants,dce").model
    assert op_types(model) == ["Reshape", "Reshape", "Reshape"]
    shapes = [n.inputs[1].const_value.numpy().tolist() for n in model.graph]
    assert shapes == [[2, -1], [24], [24]]


def test_size_range_cast_constantofshape_expand_chain():
    text = HEAD + """
    g (float[2,3] x) => (float[2,3] y) {
      n = Size(x)
      s = Shape(x)
      zero = Constant<value = int64 {0}>()
      one = Constant<value = int64 {1}>()
      r = Range(zero, n, one)
      rf = Cast<to = 1>(r)
      sixf = Cast<to = 1>(n)
      w = Div(rf, sixf)
      ones = ConstantOfShape<value = float[1] {1.0}>(s)
      wr = Reshape(w, s)
      e = Expand(wr, s)
      c = Add(e, ones)
      y = Mul(x, c)
    }
    """
    model = check_pipeline(parse(text), "fold-constants,dce").model
    assert op_types(model) == ["Mul"]
    c = model.graph.node(0).inputs[1]
    np.testing.assert_allclose(c.const_value.numpy(), 1 + np.arange(6).reshape(2, 3) / 6, rtol=1e-6)


def test_constant_fed_arithmetic_folds_and_keeps_dtype():
    text = HEAD + """
    g (float16[3] x) => (float16[3] y) {
      a = Constant<value = float[3] {1.0, 2.0, 3.0}>()
      b = Constant<value_float = 0.5>()
      ab = Mul(a, b)
      h = Cast<to = 10>(ab)
      y = Add(x, h)
    }
    """
    model = check_pipeline(parse(text), "fold-constants,dce").model
    assert op_types(model) == ["Add"]
    h = model.graph.node(0).inputs[1]
    assert h.name == "h" and h.const_value.numpy().dtype == np.float16
    assert h.const_value.numpy().tolist() == [0.5, 1.0, 1.5]


def test_parameters_are_never_folded():
    text = HEAD + """
    g (float[2,3] x) => (float[2,3] y) <float[3,3] w = {1,2,3,4,5,6,7,8,9}, float[3] b = {1,1,1}> {
      wt = Transpose<perm = [1, 0]>(w)
      two = Constant<value = float {2.0}>()
      w2 = Mul(wt, two)
      xw = MatMul(x, w2)
      y = Add(xw, b)
    }
    """
    model = check_pipeline(parse(text), "fold-constants,dce").model
    assert op_types(model) == ["Transpose", "Mul", "MatMul", "Add"]
    assert _init(model, "w").meta[ROLE_KEY] == PARAM
    assert _init(model, "b").meta[ROLE_KEY] == PARAM
    assert _init(model, "two").meta[ROLE_KEY] == CONST


def test_constant_scalar_initializers_fold():
    text = HEAD + """
    g (float[4] x) => (float[4] y) <float d = {16.0}> {
      s = Sqrt(d)
      y = Div(x, s)
    }
    """
    model = check_pipeline(parse(text), "fold-constants,dce").model
    assert op_types(model) == ["Div"]
    assert _init(model, "s").const_value.numpy() == 4.0
    assert "d" not in model.graph.initializers


def test_folded_graph_output_keeps_its_name():
    text = HEAD + """
    g (float[2] x) => (float[2] y, int64[2] k) {
      y = Neg(x)
      a = Constant<value = int64[2] {1, 2}>()
      k = Add(a, a)
    }
    """
    model = check_pipeline(parse(text), "fold-constants,dce").model
    assert [v.name for v in model.graph.outputs] == ["y", "k"]
    assert model.graph.outputs[1].const_value.numpy().tolist() == [2, 4]


def test_large_outputs_random_ops_and_foreign_domains_stay():
    text = """
    <ir_version: 8, opset_import: ["" : 17, "custom" : 1]>
    g (float[4,4] x) => (float[4,4] y) {
      s = Constant<value = int64[2] {4, 4}>()
      z = ConstantOfShape<value = float[1] {1.0}>(s)
      r = RandomNormal<shape = [4, 4]>()
      c = custom.Twice(s)
      xz = Add(x, z)
      y = Add(xz, r)
    }
    """
    model = parse(text)
    result = run_pipeline(model, [FoldConstants(max_elements=15)], after_each=verify_after)
    assert result.modified  # the Constant became an initializer
    assert op_types(result.model) == ["ConstantOfShape", "RandomNormal", "Twice", "Add", "Add"]
    model = run_pipeline(model, [FoldConstants(max_elements=16)]).model
    assert op_types(model) == ["RandomNormal", "Twice", "Add", "Add"]


def test_subgraph_nodes_are_left_alone():
    text = HEAD + """
    g (bool c, float[2] x) => (float[2] y) {
      y = If(c) <
        then_branch = t () => (float[2] a) {
          k = Constant<value = float[2] {1.0, 2.0}>()
          a = Add(x, k)
        },
        else_branch = e () => (float[2] b) { b = Neg(x) }
      >
    }
    """
    model = check_pipeline(parse(text), "fold-constants").model
    assert op_types(model) == ["If"]


def test_fold_constants_and_the_import_pipeline_are_idempotent():
    model = check_pipeline(parse(TORCH_FLATTEN), IMPORT_PIPELINE).model
    assert_idempotent(model, "fold-constants")
    assert_idempotent(model, IMPORT_PIPELINE)


def test_folded_weight_like_constants_stay_constants_after_load(tmp_path):
    text = HEAD + """
    g (float[N,3] x) => (float[N,3] y) <float[3,3] w = {1,0,0,0,1,0,0,0,1}> {
      r = Constant<value = float[3] {0.0, 1.0, 2.0}>()
      half = Constant<value = float {0.5}>()
      pe = Mul(r, half)
      xw = MatMul(x, w)
      y = Add(xw, pe)
    }
    """
    path = tmp_path / "m.onnx"
    save_model(parse(text), path)
    model = load_model(path, batch_size=2)
    assert _init(model, "w").meta[ROLE_KEY] == PARAM
    assert _init(model, "pe").meta[ROLE_KEY] == CONST  # looks like a bias, but it was computed
    assert op_types(model) == ["MatMul", "Add"]
    assert [d for d in model.graph.outputs[0].shape] == [2, 3]
    assert to_proto(model).graph.output[0].name == "y"
