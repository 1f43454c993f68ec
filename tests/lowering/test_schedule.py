"""Scheduling: colouring into blocks, bipartization, kernels and the cost model."""

from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from projc.backends.reference.constraint_eval import evaluate_program, residuals
from projc.constraints import Group, Program, Slot, Variable, VarKind, verify_program
from projc.frontend import load_model
from projc.index_map import IndexMap
from projc.passes.bipartize import bipartize, constraint_graph, producer_node
from projc.passes.lower_to_constraints import lower
from projc.passes.schedule_blocks import schedule

MODELS = Path(__file__).resolve().parents[2] / "models"


def check_invariants(prog: Program, sched) -> None:
    graph = constraint_graph(prog)
    # every constraint (group, consensus, clamp) is in exactly one block
    assert set(sched.colour) == set(graph.nodes)
    in_blocks = [g for b in sched.blocks for k in b.kernels for g in k.groups]
    assert sorted(in_blocks) == sorted(graph.nodes)
    # no two constraints of one block share a copy: every copy joins two different blocks,
    # so each copy belongs to exactly one constraint per colour class
    for u, v in graph.edges():
        assert sched.colour[u] != sched.colour[v]
    # a kernel batches groups of one kind and shape
    for b in sched.blocks:
        for k in b.kernels:
            kinds = {prog.groups[g].kind if g in prog.groups else g.split(":")[0] for g in k.groups}
            assert len(kinds) == 1


def test_mnist_mlp_has_two_blocks_and_the_materialised_state():
    prog = lower(load_model(MODELS / "mlp_mnist_128.onnx", batch_size=256))
    assert bipartize(prog) == 0
    sched = schedule(prog)
    check_invariants(prog, sched)
    assert len(sched.blocks) == 2
    assert sched.colour["loss"] == 0
    # the state is every copy: the sum of the copy slots' operand sizes
    assert sched.state_floats == sum(
        int(np.prod(s.shape)) for g in prog.groups.values() for s in g.slots if s.copy)
    assert sched.summary()["state_bytes"] == 4 * sched.state_floats


def _fused_residual(path: Path) -> Path:
    """y = relu(h + W h + b): the sum reads h directly and through the dense layer, which
    closes a triangle (an odd cycle) in the constraint graph."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 6)).astype(np.float32), "W0"),
        numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "W1"),
        numpy_helper.from_array(rng.standard_normal((8,)).astype(np.float32), "b1"),
        numpy_helper.from_array(rng.standard_normal((4, 8)).astype(np.float32), "W2"),
    ]
    nodes = [
        helper.make_node("Gemm", ["x", "W0"], ["h0"], transB=1, name="stem"),
        helper.make_node("Relu", ["h0"], ["h"], name="act0"),
        helper.make_node("Gemm", ["h", "W1", "b1"], ["u"], transB=1, name="fc1"),
        helper.make_node("Add", ["h", "u"], ["s"], name="skip"),
        helper.make_node("Relu", ["s"], ["y"], name="act1"),
        helper.make_node("Gemm", ["y", "W2"], ["logits"], transB=1, name="head"),
    ]
    graph = helper.make_graph(
        nodes, "fused_residual", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 6])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_bipartize_repairs_an_odd_cycle_and_keeps_the_solutions(tmp_path):
    model = load_model(_fused_residual(tmp_path / "r.onnx"), batch_size=3)
    prog = lower(model)
    with pytest.raises(Exception, match="2-colourable"):
        schedule(prog)
    rng = np.random.default_rng(1)
    leaves = {"x": rng.random((3, 6))}
    leaves.update({n: v.const_value.numpy() for n, v in model.graph.initializers.items() if n in prog.variables})
    before = evaluate_program(prog, leaves)
    added = bipartize(prog)
    assert added >= 1
    verify_program(prog)
    sched = schedule(prog)
    check_invariants(prog, sched)
    assert len(sched.blocks) == 2
    after = evaluate_program(prog, leaves)
    np.testing.assert_allclose(after["logits"], before["logits"])
    assert max(residuals(prog, after).values()) == 0.0


def test_cyclic_schedule_accepts_odd_cycles(tmp_path):
    prog = lower(load_model(_fused_residual(tmp_path / "r.onnx"), batch_size=2))
    sched = schedule(prog, "greedy")
    check_invariants(prog, sched)
    assert len(sched.blocks) >= 3


@st.composite
def random_programs(draw):
    """Random small DAGs of sum_act/mul/identity groups over (B, C) variables, with a loss."""
    b, c = 2, 3
    prog = Program("random", b)
    names = []
    for i in range(draw(st.integers(1, 3))):
        prog.add_variable(Variable(f"p{i}", (b, c), VarKind.PARAM))
        names.append(f"p{i}")
    for i in range(draw(st.integers(1, 7))):
        kind = draw(st.sampled_from(["sum_act", "mul", "identity"]))
        arity = {"sum_act": draw(st.integers(1, 3)), "mul": 2, "identity": 1}[kind]
        ins = [draw(st.sampled_from(names)) for _ in range(arity)]
        roles = {"sum_act": [f"x{j}" for j in range(arity)], "mul": ["a", "b"], "identity": ["a"]}[kind]
        out = f"v{i}"
        prog.add_variable(Variable(out, (b, c), VarKind.HIDDEN))
        attrs = {"act": draw(st.sampled_from(["relu", "tanh", "identity"]))} if kind == "sum_act" else {}
        prog.add_group(Group(f"g{i}", kind, (b, c), [Slot(r, v, IndexMap((b, c))) for r, v in zip(roles, ins)],
                             out, attrs))
        names.append(out)
    prog.add_variable(Variable("labels", (b, c), VarKind.LABEL))
    prog.add_group(Group("loss", "loss", (b,), [Slot("v", names[-1], IndexMap((b, c))),
                                                 Slot("y", "labels", IndexMap((b, c)), copy=False)], None))
    return prog


@settings(max_examples=60, deadline=None)
@given(random_programs(), st.integers(0, 2**31 - 1))
def test_random_graphs_schedule_invariants(prog, seed):
    verify_program(prog)
    rng = np.random.default_rng(seed)
    leaves = {v.name: rng.standard_normal(v.shape) for v in prog.variables.values() if v.kind is VarKind.PARAM}
    before = evaluate_program(prog, leaves)
    last = prog.groups["loss"].slots[0].var
    bipartize(prog)
    verify_program(prog)
    sched = schedule(prog)
    check_invariants(prog, sched)
    after = evaluate_program(prog, leaves)
    # bipartization preserves the solutions: the same forward values, zero residual
    np.testing.assert_allclose(after[prog.groups["loss"].slots[0].var], before[last])
    assert max(residuals(prog, after).values(), default=0.0) == 0.0
    # every copy's producer is a node of the graph
    for g in prog.groups.values():
        for s in g.slots:
            if s.copy:
                assert producer_node(prog, s.var) in sched.colour


@pytest.mark.slow
def test_densenet_schedule_from_the_onnx_test_zoo():
    path = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light" / "light_densenet121.onnx"
    model = load_model(path, batch_size=1)
    assert len(list(model.graph)) > 500
    prog = lower(model)
    bipartize(prog)
    sched = schedule(prog)
    check_invariants(prog, sched)
    assert len(sched.blocks) == 2
