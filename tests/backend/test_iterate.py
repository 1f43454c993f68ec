"""Block projections and Douglas-Rachford over a lowered MLP, on a digits minibatch."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from projc.backends.jax.iterate import BlockProjector, douglas_rachford, fixed_point_residual, read_parameters
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


def test_douglas_rachford_lowers_the_minibatch_loss():
    prog, sched, x, y, onehot, params = _setup()
    state = init_state(prog, evaluate_program(prog, {"x": x, **params}))
    proj = BlockProjector(sched, {"x": x, "labels": onehot})
    run = jax.jit(lambda s: douglas_rachford(proj, s, iterations=30))
    final = run(state)
    assert all(bool(jnp.all(jnp.isfinite(v))) for v in final.values())
    new_params = {k: np.asarray(v) for k, v in read_parameters(proj, final).items()}
    assert set(new_params) == set(params)
    before, after = _loss(prog, x, y, params), _loss(prog, x, y, new_params)
    assert after < 0.8 * before, (before, after)
