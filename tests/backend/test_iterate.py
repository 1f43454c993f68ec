"""Block projections and Douglas-Rachford over a lowered MLP, on a digits minibatch."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from projc.backends.jax import algorithms
from projc.backends.jax.algorithms import distance as fixed_point_residual
from projc.backends.jax.iterate import BlockProjector, read_parameters
from projc.backends.jax.state import init_state
from projc.backends.reference.constraint_eval import evaluate_program
from projc.datasets import load_dataset
from projc.frontend import load_model
from projc.passes.bipartize import bipartize
from projc.passes.lower_to_constraints import lower
from projc.passes.schedule_blocks import schedule

MODELS = Path(__file__).resolve().parents[2] / "models"
BATCH = 64


def _setup():
    model = load_model(MODELS / "mlp_digits.onnx", batch_size=BATCH)
    prog = lower(model)
    bipartize(prog)
    sched = schedule(prog)
    data = load_dataset("digits")
    x, y = data.x_train[:BATCH], data.y_train[:BATCH]
    onehot = np.eye(10, dtype=np.float32)[y]
    params = {n: v.const_value.numpy() for n, v in model.graph.initializers.items() if n in prog.variables}
    return prog, sched, x, y, onehot, params


def _loss(prog, x, y, params):
    logits = evaluate_program(prog, {"x": x, **{k: np.asarray(v, np.float64) for k, v in params.items()}})["logits"]
    logp = logits - logits.max(1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(1, keepdims=True))
    return float(-logp[np.arange(len(y)), y].mean())


def test_block_projection_is_idempotent_and_keeps_the_state_layout():
    prog, sched, x, _, onehot, params = _setup()
    state = init_state(prog, evaluate_program(prog, {"x": x, **params}))
    proj = BlockProjector(sched, {"x": x, "labels": onehot})
    for block in (0, 1):
        once = proj.project(state, block)
        twice = proj.project(once, block)
        assert set(once) == set(state)
        assert all(once[k].shape == state[k].shape for k in state)
        assert float(fixed_point_residual(once, twice)) < 1e-3 * (1 + float(fixed_point_residual(state, once)))
    # the forward state already satisfies block B's constraints except where the loss moved nothing
    moved = proj.project(state, 0)
    assert float(fixed_point_residual(state, moved)) > 0  # the loss prox moves the logits


@pytest.mark.parametrize("algorithm", ["dr", "ap", "dm", "ar"])
def test_two_set_algorithms_lower_the_minibatch_loss(algorithm):
    prog, sched, x, y, onehot, params = _setup()
    state = init_state(prog, evaluate_program(prog, {"x": x, **params}))
    proj = BlockProjector(sched, {"x": x, "labels": onehot})
    run = jax.jit(lambda s: algorithms.run(proj.project, proj.blocks, s, algorithm, 30))
    final, residuals = run(state)
    assert residuals.shape == (30,)
    assert all(bool(jnp.all(jnp.isfinite(v))) for v in final.values())
    new_params = {k: np.asarray(v) for k, v in read_parameters(proj, final).items()}
    assert set(new_params) == set(params)
    before, after = _loss(prog, x, y, params), _loss(prog, x, y, new_params)
    # alternating reflections does not converge in general; it must still move towards the data
    assert after < (0.95 if algorithm == "ar" else 0.8) * before, (before, after)


@pytest.mark.parametrize("algorithm", ["cp", "cdr"])
def test_cyclic_algorithms_over_breadth_first_layers(algorithm):
    prog, _, x, y, onehot, params = _setup()
    sched = schedule(prog, "layers")
    assert len(sched.blocks) > 2 and sched.blocks[0].kernels[0].groups == ["loss"]
    state = init_state(prog, evaluate_program(prog, {"x": x, **params}))
    proj = BlockProjector(sched, {"x": x, "labels": onehot})
    final, residuals = jax.jit(lambda s: algorithms.run(proj.project, proj.blocks, s, algorithm, 30))(state)
    new_params = {k: np.asarray(v) for k, v in read_parameters(proj, final).items()}
    before, after = _loss(prog, x, y, params), _loss(prog, x, y, new_params)
    assert after < 0.9 * before, (before, after)
    if algorithm == "cp":  # a composition of projections is non-expansive: residuals never grow
        r = np.asarray(residuals)
        assert np.all(np.diff(r) <= 1e-4 * r[0] + 1e-6), r


def test_alternating_projections_reach_the_feasible_point_of_two_lines():
    """On two lines through the origin, every algorithm converges to the intersection (0)."""
    u = jnp.array([1.0, 0.0])
    v = jnp.array([1.0, 1.0]) / jnp.sqrt(2.0)

    def project(x, i):
        d = u if i == 0 else v
        return {"p": jnp.dot(x["p"], d) * d}

    start = {"p": jnp.array([3.0, -2.0])}
    for name in ("ap", "dr", "dm", "cp", "cdr"):
        final, residuals = algorithms.run(project, 2, start, name, 200)
        shadow = project(final, 0)["p"]  # DR and DM converge in their shadow
        assert float(jnp.linalg.norm(shadow)) < 1e-4, (name, shadow)
    final, _ = algorithms.run(project, 2, start, "dm", 50, beta=0.7)
    assert float(jnp.linalg.norm(project(final, 0)["p"])) < 1e-3


def test_violation_is_zero_exactly_at_a_feasible_point():
    def project(x, i):
        return {"p": jnp.clip(x["p"], 0.0, None)} if i == 0 else {"p": jnp.clip(x["p"], None, 1.0)}

    assert float(algorithms.violation(project, 2, {"p": jnp.array([0.5, 0.2])})) == 0.0
    assert float(algorithms.violation(project, 2, {"p": jnp.array([3.0, -1.0])})) == pytest.approx(2.0)


def test_two_set_algorithms_refuse_a_layered_schedule():
    with pytest.raises(ValueError, match="two-block"):
        algorithms.run(lambda x, i: x, 3, {"p": jnp.zeros(2)}, "dr", 1)
    with pytest.raises(Exception, match="expected one of"):
        algorithms.get("sgd")


@pytest.mark.parametrize("algorithm,colouring", [("dr", "two-sets"), ("ap", "two-sets"), ("dm", "two-sets"),
                                                 ("ar", "two-sets"), ("cp", "layers"), ("cdr", "layers")])
def test_folded_linear_updates_give_the_same_iterates(algorithm, colouring):
    """`lazy=True` keeps a linear group's projected copies as base + coef * rows and folds the
    reflections into the consensus: every algorithm's iterates and monitors stay the same."""
    prog, _, x, _, onehot, params = _setup()
    sched = schedule(prog, colouring)
    state = init_state(prog, evaluate_program(prog, {"x": x, **params}), jnp.float64)
    runs = []
    for lazy in (False, True):
        proj = BlockProjector(sched, {"x": x, "labels": onehot}, dtype=jnp.float64, lazy=lazy)
        def run(s, proj=proj):  # one program: outside jit the violation ran op by op, each op compiled
            final, residuals = algorithms.run(proj.project, proj.blocks, s, algorithm, 5)
            return final, residuals, algorithms.violation(proj.project, proj.blocks, final)

        runs.append(jax.jit(run)(state))
    (plain, r0, v0), (folded, r1, v1) = runs
    scale = max(float(jnp.max(jnp.abs(v))) for v in plain.values())
    assert max(float(jnp.max(jnp.abs(plain[k] - folded[k]))) for k in plain) < 1e-10 * scale
    np.testing.assert_allclose(r1, r0, rtol=1e-9)
    np.testing.assert_allclose(v1, v0, rtol=1e-9)
    assert float(r0[-1]) > 0  # the iterations did move


def test_gather_of_a_shifted_value_on_any_broadcast_axis():
    """The consensus of `scale * base + coef * rows` over broadcast axes anywhere in the shape
    equals that of the array written out."""
    from projc.backends.jax.state import Shifted, gather
    from projc.index_map import Broadcast, IndexMap

    rng = np.random.default_rng(0)
    imap = IndexMap((3, 4), (Broadcast(1, 5), Broadcast(0, 2)))  # copies (2, 3, 5, 4)
    base = jnp.asarray(rng.normal(size=(2, 3, 5, 4)))
    coef = jnp.asarray(rng.normal(size=(2, 3, 5)))
    for rows_shape in [(2, 3, 5, 4), (2, 1, 1, 4), (1, 3, 1, 4), (1, 1, 5, 4)]:
        value = Shifted(base, -0.5, coef, jnp.asarray(rng.normal(size=rows_shape)))
        np.testing.assert_allclose(gather(imap, value, jnp.float64), gather(imap, value.dense(), jnp.float64),
                                   rtol=1e-12, atol=1e-12)


def test_monitoring_only_the_last_residual():
    """`monitor="last"` computes the residual in the
    last iteration only: the same value and final state as per-iteration monitoring."""
    prog, sched, x, _, onehot, params = _setup()
    state = init_state(prog, evaluate_program(prog, {"x": x, **params}))
    proj = BlockProjector(sched, {"x": x, "labels": onehot}, lazy=True)
    runs = {m: jax.jit(lambda s, m=m: algorithms.run(proj.project, proj.blocks, s, "dr", 6, monitor=m))(state)
            for m in (True, "last", False)}
    every, last, none = runs[True], runs["last"], runs[False]
    assert every[1].shape == (6,) and last[1].shape == (1,) and none[1].shape == (0,)
    np.testing.assert_allclose(last[1][0], every[1][-1], rtol=1e-6)
    for k in every[0]:
        np.testing.assert_array_equal(last[0][k], every[0][k])
    with pytest.raises(ValueError, match="monitor"):
        algorithms.run(proj.project, proj.blocks, state, "dr", 2, monitor="sometimes")
