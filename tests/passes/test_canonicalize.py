"""``canonicalize``: Identity and inference-mode Dropout disappear; outputs keep their names."""

from __future__ import annotations

import pytest

from passutil import assert_idempotent, check_pipeline, op_types, parse

HEAD = '<ir_version: 8, opset_import: ["" : 17]>'


def _run(text: str):
    model = check_pipeline(parse(text), "canonicalize").model
    assert_idempotent(model, "canonicalize")
    return model


def test_identity_chain_collapses_and_output_keeps_name():
    model = _run(HEAD + """
    g (float[2,3] x) => (float[2,3] y) {
      a = Identity(x)
      b = Identity(a)
      r = Relu(b)
      c = Identity(r)
      y = Identity(c)
    }
    """)
    assert op_types(model) == ["Relu"]
    relu = model.graph.node(0)
    assert relu.inputs[0].name == "x" and relu.outputs[0].name == "y"
    assert model.graph.outputs[0] is relu.outputs[0]


def test_identity_of_a_graph_input_into_an_output_stays():
    model = _run(HEAD + """
    g (float[2] x) => (float[2] y) { y = Identity(x) }
    """)
    assert op_types(model) == ["Identity"]


def test_identity_of_an_initializer_into_an_output_stays():
    model = _run(HEAD + """
    g (float[2] x) => (float[2] y, float[2] k) <float[2] w = {1.0, 2.0}> {
      y = Neg(x)
      k = Identity(w)
    }
    """)
    assert op_types(model) == ["Neg", "Identity"]


def test_identity_output_that_is_also_used_inside_the_graph():
    model = _run(HEAD + """
    g (float[2] x) => (float[2] y, float[2] z) {
      r = Relu(x)
      y = Identity(r)
      z = Neg(y)
    }
    """)
    assert op_types(model) == ["Relu", "Neg"]
    relu, neg = model.graph
    assert relu.outputs[0].name == "y" and neg.inputs[0] is relu.outputs[0]


def test_two_outputs_from_one_value_keep_one_identity():
    model = _run(HEAD + """
    g (float[2] x) => (float[2] y, float[2] z) {
      r = Relu(x)
      y = Identity(r)
      z = Identity(r)
    }
    """)
    assert op_types(model) == ["Relu", "Identity"]
    assert [v.name for v in model.graph.outputs] == ["y", "z"]


@pytest.mark.parametrize("dropout", [
    "d = Dropout(r)",
    "d, unused_mask = Dropout(r)",
    "d = Dropout(r, ratio)",
    "d = Dropout(r, ratio, off)",
])
def test_inference_dropout_is_removed(dropout):
    model = _run(HEAD + f"""
    g (float[2,3] x) => (float[2,3] y) <float ratio = {{0.5}}, bool off = {{0}}> {{
      r = Relu(x)
      {dropout}
      y = Neg(d)
    }}
    """)
    assert op_types(model) == ["Relu", "Neg"]


def test_dropout_with_a_used_mask_stays():
    model = _run(HEAD + """
    g (float[2,3] x) => (float[2,3] y, bool[2,3] m) {
      r = Relu(x)
      d, m = Dropout(r)
      y = Neg(d)
    }
    """)
    assert op_types(model) == ["Relu", "Dropout", "Neg"]


def test_training_mode_dropout_stays():
    text = HEAD + """
    g (float[2,3] x, bool t) => (float[2,3] y) <float ratio = {0.0}> {
      d = Dropout(x, ratio, t)
      y = Neg(d)
    }
    """
    model = _run(text)
    assert op_types(model) == ["Dropout", "Neg"]
    model = _run(text.replace("bool t) =>", "bool u) =>").replace("<float ratio = {0.0}>",
                 "<float ratio = {0.0}, bool t = {1}>"))
    assert op_types(model) == ["Dropout", "Neg"]


def test_identity_inside_a_subgraph_is_removed():
    model = _run(HEAD + """
    g (bool c, float[2] x) => (float[2] y) {
      y = If(c) <
        then_branch = t () => (float[2] a) { n = Neg(x)  i = Identity(n)  a = Identity(i) },
        else_branch = e () => (float[2] b) { b = Identity(x) }
      >
    }
    """)
    then_branch = model.graph.node(0).attributes["then_branch"].value
    else_branch = model.graph.node(0).attributes["else_branch"].value
    assert [n.op_type for n in then_branch] == ["Neg"]
    assert then_branch.outputs[0].name == "a"
    # the else branch returns an outer-scope value, so its Identity must stay
    assert [n.op_type for n in else_branch] == ["Identity"]
