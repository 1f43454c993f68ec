"""Factored alternating projections (backends/jax/factored.py) against materialised AP."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from projc.backends.jax import algorithms, factored
from projc.backends.jax.iterate import BlockProjector, read_parameters
from projc.backends.jax.program_forward import forward_values
from projc.backends.jax.projections.dot import project_dot
from projc.backends.jax.state import init_state
from projc.backends.jax.train_step import StepConfig, make_step
from projc.datasets import load_dataset
from projc.errors import ProjcError
from projc.frontend import load_model
from projc.index_map import IndexMap
from projc.passes.bipartize import bipartize
from projc.passes.lower_to_constraints import lower
from projc.passes.schedule_blocks import schedule

MODELS = Path(__file__).resolve().parents[2] / "models"
ITERATIONS = 6


def _setup(name: str | Path, batch: int, colouring: str = "two-sets"):
    model = load_model(name if isinstance(name, Path) else MODELS / f"{name}.onnx", batch_size=batch)
    prog = lower(model)
    bipartize(prog)
    params = {n: v.const_value.numpy() for n, v in model.graph.initializers.items() if n in prog.variables}
    return prog, schedule(prog, colouring), params


def _minibatch(prog, seed=0):
    """Digits rows for the digits models, Gaussian pixels for the others; one-hot labels."""
    rng = np.random.default_rng(seed)
    shape = prog.variables["x"].shape
    if shape[1:] == (64,):
        x = load_dataset("digits").x_train[rng.permutation(1437)[: shape[0]]]
    else:
        x = rng.standard_normal(shape).astype(np.float32)
    classes = prog.variables["labels"].shape
    return x, np.eye(classes[-1], dtype=np.float32)[rng.integers(0, classes[-1], classes[:-1])]


def _both(name, batch, dtype, compat=False, gram=True, relax=1.0):
    """Materialised and factored AP (relaxed by ``relax``) from the same forward state: (params,
    residuals, violation, full final state) of each, and the factored AP object."""
    prog, sched, params = _setup(name, batch)
    x, y = _minibatch(prog)
    proj = BlockProjector(sched, {"x": x, "labels": y}, dtype=dtype, compat=compat)
    values = forward_values(prog, {"x": x, **params})

    def materialised(s):
        final, res = algorithms.run(proj.project, 2, s, "ap", ITERATIONS, relax=relax)
        return read_parameters(proj, final), res, algorithms.violation(proj.project, 2, final), final

    fap = factored.FactoredAP(proj, factored.plan(sched), gram=gram)

    def factored_ap(s):
        final, res = factored.run(fap, s, ITERATIONS, relax=relax)
        return fap.parameters(final), res, fap.violation(final), fap.materialise(final)

    mat = jax.jit(materialised)(init_state(prog, values, dtype))
    fac = jax.jit(factored_ap)(fap.init(values))
    return mat, fac, fap, params


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def _assert_same(mat, fac, params, tol):
    (mp, mres, mviol, mstate), (fp, fres, fviol, fstate) = mat, fac
    assert set(fp) == set(mp) == set(params)
    for k in mp:
        assert fp[k].dtype == mp[k].dtype
        assert _rel(fp[k], mp[k]) < tol, (k, _rel(fp[k], mp[k]))
    # the parameters moved, so agreeing is not trivial
    assert max(_rel(mp[k], params[k]) for k in mp) > 100 * tol
    assert fres.shape == mres.shape == (ITERATIONS,)
    np.testing.assert_allclose(np.asarray(fres), np.asarray(mres), rtol=tol)
    np.testing.assert_allclose(float(fviol), float(mviol), rtol=tol)
    assert set(fstate) == set(mstate)
    for k in mstate:
        assert _rel(fstate[k], mstate[k]) < 10 * tol, (k, _rel(fstate[k], mstate[k]))


def test_the_plan_factors_both_dense_layers_of_an_mlp():
    prog, sched, _ = _setup("mlp_digits", 8)
    plan = factored.plan(sched)
    assert set(plan.groups) == {"linear_0", "dot_0"} and plan.reason is None
    assert plan.variables == ("fc1.weight", "fc2.weight", "relu_3")
    lin, dot = plan.groups["linear_0"], plan.groups["dot_0"]
    assert (lin.row.role, lin.row.var, lin.row.copy) == ("c", "x", False)  # the data rows: no copies
    assert (lin.col.role, lin.col.var) == ("x", "fc1.weight")
    assert (dot.row.var, dot.col.var) == ("relu_3", "fc2.weight")


def test_choose_follows_the_mode_and_says_why_not():
    _, sched, _ = _setup("mlp_digits", 8)
    assert factored.choose(sched, "ap", "auto")
    assert factored.choose(sched, "ap", "off") is None
    assert factored.choose(sched, "dr", "auto") is None
    with pytest.raises(ProjcError, match="alternating projections only"):
        factored.choose(sched, "dr", "on")
    with pytest.raises(ProjcError, match="one device"):
        factored.choose(sched, "ap", "on", devices=2)
    with pytest.raises(ProjcError, match="expected one of"):
        factored.choose(sched, "ap", "sometimes")
    _, layered, _ = _setup("mlp_digits", 8, "layers")
    with pytest.raises(ProjcError, match="two-block"):
        factored.choose(layered, "ap", "on")


def test_groups_that_do_not_factor_say_why():
    prog, sched, _ = _setup("cnn_digits", 4)
    plan = factored.plan(sched)
    assert set(plan.groups) == {"dot_0"}  # the dense head; the convolution is projected second
    assert "not in the block AP projects first" in factored.factor_group(prog, sched.colour, prog.groups["linear_0"])
    assert "sum_act groups do not factor" in factored.factor_group(prog, sched.colour, prog.groups["sum_act_0"])


@pytest.mark.parametrize("name", ["mlp_digits", "mlp_mnist_128"])
def test_factored_iterates_equal_materialised_ap_in_float64(name):
    mat, fac, _, params = _both(name, 32, jnp.float64)
    _assert_same(mat, fac, params, 1e-5)


@pytest.mark.parametrize("name", ["mlp_digits", "mlp_mnist_128"])
def test_factored_iterates_are_close_in_float32(name):
    mat, fac, _, params = _both(name, 32, jnp.float32)
    _assert_same(mat, fac, params, 2e-4)


def _transposed_mlp(path: Path, batch: int) -> Path:
    """An MLP whose first layer is ``(W0 x^T)^T``: the parameter on the group's row side."""
    rng = np.random.default_rng(0)
    arr = lambda *shape: rng.standard_normal(shape).astype(np.float32) / np.sqrt(shape[-1])  # noqa: E731
    inits = [numpy_helper.from_array(a, n) for a, n in
             ((arr(6, 16), "W0"), (arr(6), "b0"), (arr(6, 10), "W1"), (arr(10), "b1"))]
    nodes = [helper.make_node("Gemm", ["W0", "x"], ["ht"], transB=1),
             helper.make_node("Transpose", ["ht"], ["h"], perm=[1, 0]),
             helper.make_node("Add", ["h", "b0"], ["hb"]), helper.make_node("Relu", ["hb"], ["r"]),
             helper.make_node("MatMul", ["r", "W1"], ["z"]), helper.make_node("Add", ["z", "b1"], ["logits"])]
    graph = helper.make_graph(nodes, "transposed", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 16])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 10])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_a_data_layer_runs_in_gram_form_where_that_saves_work():
    prog, sched, _ = _setup("mlp_digits", 32)  # 32 rows of data, 64 wide: G = X X^T is smaller
    fap = factored.FactoredAP(BlockProjector(sched, {}), factored.plan(sched))
    assert set(fap.gram) == {"linear_0"} and fap.gram["linear_0"].var == "fc1.weight"
    assert fap.gram["linear_0"].n == 32
    prog, sched, _ = _setup("mlp_digits", 128)  # 128 rows > 64: the plain factored form is cheaper
    assert factored.gram_group(prog, factored.plan(sched).groups["linear_0"]) is None
    assert not factored.FactoredAP(BlockProjector(sched, {}), factored.plan(sched)).gram


@pytest.mark.parametrize("model", ["mlp_mnist_128", "residual_mlp_digits", "transposed"])
def test_gram_form_iterates_equal_the_plain_factored_ones_and_materialised_ap(model, tmp_path):
    name = _transposed_mlp(tmp_path / "t.onnx", 8) if model == "transposed" else model
    gram, plain = _both(name, 8, jnp.float64), _both(name, 8, jnp.float64, gram=False)
    assert gram[2].gram and not plain[2].gram
    if model == "transposed":
        assert gram[2].gram["linear_0"].x_is_row
    _assert_same(gram[0], gram[1], gram[3], 1e-5)  # against materialised AP
    for got, want in zip(gram[1][:3], plain[1][:3]):  # parameters, residuals, violation
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            assert _rel(a, b) < 1e-9


@pytest.mark.parametrize("model, gram", [("mlp_mnist_128", True), ("residual_mlp_digits", False)])
def test_relaxed_factored_ap_equals_relaxed_materialised_ap(model, gram):
    relaxed = _both(model, 8, jnp.float64, gram=gram, relax=1.7)
    assert bool(relaxed[2].gram) == gram
    _assert_same(relaxed[0], relaxed[1], relaxed[3], 1e-5)
    plain = _both(model, 8, jnp.float64)[1][0]
    assert max(_rel(relaxed[1][0][k], plain[k]) for k in plain) > 1e-3  # the relaxation changed the path


def test_pjax_compatible_operators_factor_too():
    mat, fac, _, params = _both("mlp_digits", 32, jnp.float64, compat=True)
    _assert_same(mat, fac, params, 1e-5)


def test_a_partly_factored_program_equals_materialised_ap():
    """Groups that do not factor keep their copies next to the ones that do (a skip connection:
    one variable read by two dense layers, a dense layer projected second)."""
    mat, fac, fap, params = _both("residual_mlp_digits", 8, jnp.float64)
    assert fap.plan and any(g.kind in ("dot", "linear") and g.name not in fap.plan.groups
                            for g in fap.prog.groups.values())
    _assert_same(mat, fac, params, 1e-5)


def test_near_equal_pairs_keep_float32_accuracy():
    """h_i ~ +-w_j: q +- 2p cancels; the near pairs are solved from their own vectors."""
    rng = np.random.default_rng(1)
    rows, cols, n = 16, 8, 32
    h, w = rng.standard_normal((rows, n)), rng.standard_normal((cols, n))
    h[0] = w[0] + 1e-3 * rng.standard_normal(n)
    h[1] = -w[1] + 1e-3 * rng.standard_normal(n)
    h[2] = w[2] + 1e-5 * rng.standard_normal(n)
    z = 100 * rng.standard_normal((rows, cols))
    a, b = np.broadcast_to(h[:, None], (rows, cols, n)), np.broadcast_to(w[None], (rows, cols, n))
    a2, b2, z2 = (np.asarray(t) for t in jax.jit(project_dot)(a, b, z, 1.0))  # float64 reference
    group = factored.FactoredGroup("g", "dot", "z", factored.Side("a", "h", IndexMap((rows, n)), True),
                                   factored.Side("b", "w", IndexMap((cols, n)), True))
    h_new, w_new = rng.standard_normal((rows, n)), rng.standard_normal((cols, n))

    @jax.jit
    def project(h, w, z, h_new, w_new):
        sides, fz = factored._dot(group, h, w, z, jnp.float32(1.0), False)
        deviation = sides["a"].deviation(h_new) + sides["b"].deviation(w_new)
        return sides["a"].total(), sides["b"].total(), fz, deviation

    f32 = lambda v: jnp.asarray(v, jnp.float32)  # noqa: E731
    rows_total, cols_total, fz, got = project(f32(h), f32(w), f32(z), f32(h_new), f32(w_new))
    assert _rel(rows_total, a2.sum(1)) < 2e-3  # without the near pairs: 7e-2
    assert _rel(cols_total, b2.sum(0)) < 2e-3
    assert _rel(fz, z2) < 1e-5
    # the shadow's distance to the equal copies, from matrix products and the near pairs
    want = np.sum((h_new[:, None] - a2) ** 2) + np.sum((w_new[None] - b2) ** 2)
    assert abs(float(got) - want) < 1e-4 * want


@pytest.mark.parametrize("near", [0, 3, 40])
def test_near_pairs_are_all_the_near_ones_or_the_worst_k(near):
    """At most k = max(R, C) near pairs: exactly those; more: the k of least min(U, V) / q;
    none: every entry unused, pointing past the last row."""
    rng = np.random.default_rng(near)
    rows, cols = 16, 8
    q = rng.uniform(1, 2, (rows, cols))
    small = rng.uniform(0.1, 2, (rows, cols))
    flat = rng.permutation(rows * cols)[:near]
    small.flat[flat] = rng.uniform(1e-6, 1e-3, near)  # ratio below _NEAR = 1e-2
    i, j, valid = (np.asarray(t) for t in jax.jit(factored._near_pairs)(None, None, small * q, 9 * q, q))
    got = {(a, b) for a, b, v in zip(i, j, valid) if v}
    ratio = small.ravel()
    if near == 0:
        assert not got and np.all(i == rows)
    elif near <= rows:
        assert got == {divmod(int(f), cols) for f in flat}
    else:
        assert got == {divmod(int(f), cols) for f in np.argsort(ratio)[:rows]}


def test_make_step_selects_the_factored_path_for_ap():
    prog, sched, params = _setup("mlp_digits", 32)
    x, y = _minibatch(prog, seed=1)
    cfg = StepConfig(algorithm="ap", iterations=5)
    auto_params, auto_stats = make_step(sched, cfg)(params, x, y)
    off_params, off_stats = make_step(sched, cfg, factored="off")(params, x, y)
    assert set(auto_stats) == set(off_stats) == {"residuals", "finite", "violation"}
    assert bool(auto_stats["finite"])
    for k in params:
        assert auto_params[k].dtype == off_params[k].dtype == np.float32
        assert _rel(auto_params[k], off_params[k]) < 2e-4, k
    np.testing.assert_allclose(np.asarray(auto_stats["residuals"]), np.asarray(off_stats["residuals"]), rtol=2e-4)
    np.testing.assert_allclose(float(auto_stats["violation"]), float(off_stats["violation"]), rtol=2e-4)
    with pytest.raises(ProjcError, match="alternating projections only"):
        make_step(sched, cfg, algorithm="dr", factored="on")


def test_factored_ap_trains_the_digits_mlp():
    batch = 128
    prog, sched, params = _setup("mlp_digits", batch)
    data = load_dataset("digits")
    predict = jax.jit(lambda p, x: forward_values(prog, {"x": x, **p})["logits"])

    def accuracy(p):
        n = len(data.x_test) // batch * batch
        hits = [np.asarray(predict(p, data.x_test[i:i + batch])).argmax(1) == data.y_test[i:i + batch]
                for i in range(0, n, batch)]
        return float(np.concatenate(hits).mean())

    step = make_step(sched, algorithm="ap", iterations=30, factored="on", monitor=False)
    before = accuracy(params)
    rng = np.random.default_rng(0)
    for _ in range(2):  # epochs
        order = rng.permutation(len(data.x_train))
        for i in range(0, len(order) - batch + 1, batch):
            idx = order[i:i + batch]
            params, stats = step(params, data.x_train[idx], np.eye(10, dtype=np.float32)[data.y_train[idx]])
            assert bool(stats["finite"]) and stats["residuals"].shape == (0,) and "violation" not in stats
    after = accuracy(params)
    assert before < 0.3 and after > 0.85, (before, after)


def test_factored_step_reports_what_the_monitor_asks_for():
    """The factored step returns the residuals the materialised one would for each monitor."""
    prog, sched, params = _setup("mlp_digits", 16)
    x, y = _minibatch(prog)
    shapes = {}
    for monitor in (True, "last", "violation", False):
        step = make_step(sched, algorithm="ap", iterations=3, factored="on", monitor=monitor)
        _, stats = jax.eval_shape(step, params, x, y)  # traced, not compiled: shapes are the point
        shapes[monitor] = (stats["residuals"].shape, "violation" in stats)
    assert shapes == {True: ((3,), True), "last": ((1,), True), "violation": ((0,), True), False: ((0,), False)}
