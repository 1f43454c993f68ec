"""``fold-constants`` on random arithmetic graphs mixing an input with Constant nodes."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from passutil import assert_idempotent, check_pipeline, parse
from projc.ir import CONST, ROLE_KEY

UNARY = ["Neg", "Abs", "Relu", "Sigmoid"]
BINARY = ["Add", "Sub", "Mul", "Max"]


@st.composite
def graphs(draw):
    """ONNX text of a random DAG over %x (float[3]) and float[3] Constants."""
    lines, values = [], ["x"]
    for i in range(draw(st.integers(2, 10))):
        kind = draw(st.sampled_from(["const", "unary", "binary"]))
        name = f"v{i}"
        if kind == "const":
            nums = draw(st.lists(st.integers(-3, 3), min_size=3, max_size=3))
            body = ", ".join(f"{n}.0" for n in nums)
            lines.append(f"{name} = Constant<value = float[3] {{{body}}}>()")
        elif kind == "unary":
            op, a = draw(st.sampled_from(UNARY)), draw(st.sampled_from(values))
            lines.append(f"{name} = {op}({a})")
        else:
            op = draw(st.sampled_from(BINARY))
            a, b = draw(st.sampled_from(values)), draw(st.sampled_from(values))
            lines.append(f"{name} = {op}({a}, {b})")
        values.append(name)
    lines.append(f"y = Add(x, {values[-1]})")  # the output always depends on %x
    body = "\n  ".join(lines)
    head = '<ir_version: 8, opset_import: ["" : 17]>\ng (float[3] x) => (float[3] y)'
    return f"{head} {{\n  {body}\n}}"


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graphs())
def test_random_graphs_fold_to_nodes_that_read_x(text):
    model = check_pipeline(parse(text), "fold-constants,dce").model
    for node in model.graph:
        assert any(v is not None and not v.is_initializer() for v in node.inputs), node
    assert all(v.meta[ROLE_KEY] == CONST for v in model.graph.initializers.values())
    assert_idempotent(model, "fold-constants,dce")
