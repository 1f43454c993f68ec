"""``dce``: dead nodes and unused initializers go, in one run; outer-scope reads stay live."""

from __future__ import annotations

from passutil import assert_idempotent, check_pipeline, op_types, parse

HEAD = '<ir_version: 8, opset_import: ["" : 17]>'


def _run(text: str):
    model = check_pipeline(parse(text), "dce").model
    assert_idempotent(model, "dce")
    return model


def test_dead_branches_and_their_initializers_go():
    model = _run(HEAD + """
    g (float[2] x) => (float[2] y) <float[2] used = {1.0, 2.0}, float[2] dead = {3.0, 4.0},
                                      float[2] never = {5.0, 6.0}> {
      y = Add(x, used)
      n = Neg(x)
      e = Exp(n)
      f = Mul(e, dead)
    }
    """)
    assert op_types(model) == ["Add"]
    assert list(model.graph.initializers) == ["used"]
    assert model.graph.outputs[0].name == "y"


def test_unused_outputs_of_a_live_node_do_not_keep_it_dead():
    model = _run(HEAD + """
    g (float[4] x) => (float[2] y) {
      y, z = Split(x)
      w = Neg(z)
    }
    """)
    assert op_types(model) == ["Split"]


def test_values_read_by_a_subgraph_stay_alive():
    model = _run(HEAD + """
    g (bool c, float[2] x) => (float[2] y) <float[2] k = {1.0, 2.0}> {
      n = Neg(x)
      m = Exp(x)
      y = If(c) <
        then_branch = t () => (float[2] a) { a = Add(n, k) },
        else_branch = e () => (float[2] b) {
          b = If(c) < then_branch = t2 () => (float[2] p) { p = Abs(m) },
                      else_branch = e2 () => (float[2] q) { q = Abs(x) } >
        }
      >
    }
    """)
    assert op_types(model) == ["Neg", "Exp", "If"]
    assert list(model.graph.initializers) == ["k"]


def test_dead_nodes_inside_subgraphs_go_and_free_outer_values():
    model = _run(HEAD + """
    g (bool c, float[2] x) => (float[2] y) <float[2] k = {1.0, 2.0}> {
      n = Neg(x)
      y = If(c) <
        then_branch = t () => (float[2] a) { unused = Add(n, k)  a = Abs(x) },
        else_branch = e () => (float[2] b) { b = Sin(x) }
      >
    }
    """)
    assert op_types(model) == ["If"]
    assert [n.op_type for n in model.graph.node(0).attributes["then_branch"].value] == ["Abs"]
    assert not model.graph.initializers


def test_initializers_that_are_graph_inputs_or_outputs_stay():
    model = _run("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2] x, float[2] w) => (float[2] y, float[2] k)
      <float[2] w = {1.0, 2.0}, float[2] k = {3.0, 4.0}> {
      y = Neg(x)
    }
    """)
    assert op_types(model) == ["Neg"]
    assert set(model.graph.initializers) == {"w", "k"}
