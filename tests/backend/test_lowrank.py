"""The copies of a data operand's partner held factored across iterations (``state.Lowrank``):
the same values, iterates and monitors as the copies written out."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from projc.backends.jax import algorithms
from projc.backends.jax.iterate import BlockProjector, read_parameters
from projc.backends.jax.program_forward import forward_values
from projc.backends.jax.state import GramLowrank, Lowrank, dense, gather, send_compact, sqnorm
from projc.backends.jax.train_step import make_step
from projc.datasets import load_dataset
from projc.factored_copies import held, split_broadcasts
from projc.frontend import load_model
from projc.index_map import Broadcast, IndexMap, Reshape
from projc.passes.bipartize import bipartize
from projc.passes.lower_to_constraints import lower
from projc.passes.schedule_blocks import schedule

MODELS = Path(__file__).resolve().parents[2] / "models"


@pytest.mark.parametrize("imap", [
    IndexMap((3, 5), (Broadcast(0, 4),)),
    IndexMap((3, 5), (Broadcast(1, 4),)),
    IndexMap((15,), (Reshape((3, 5)), Broadcast(0, 4), Broadcast(1, 2))),  # a kernel per sample and position
], ids=["leading", "inner", "reshape-then-two"])
def test_a_lowrank_value_computes_as_its_written_out_array(imap):
    """Contraction with the rows, squared norm, consensus sum, combinations and shifts of
    ``broadcast(mean) + coef * rows`` equal those of the array it stands for."""
    rng = np.random.default_rng(len(imap.steps))
    shape = imap.shape
    broadcast_axes = {step.axis for step in split_broadcasts(imap)[1].steps}
    rows_shape = tuple(n if i in broadcast_axes or i == len(shape) - 1 else 1 for i, n in enumerate(shape))
    mean = send_compact(imap, jnp.asarray(rng.normal(size=imap.src_shape)))
    rows = jnp.asarray(rng.normal(size=rows_shape))

    def value():
        return Lowrank(mean * rng.normal(), jnp.asarray(rng.normal(size=shape[:-1])), rows, shape)

    u, v = value(), value()
    full = np.asarray(u.dense())
    assert full.shape == shape
    np.testing.assert_allclose(u.contract_rows(), np.sum(full * np.asarray(rows), -1), rtol=1e-12)
    np.testing.assert_allclose(sqnorm(u), np.sum(full ** 2), rtol=1e-12)
    np.testing.assert_allclose(gather(imap, u, jnp.float64), gather(imap, jnp.asarray(full), jnp.float64),
                               rtol=1e-12, atol=1e-12)
    both = u.combine(2.0, v, -0.5)
    np.testing.assert_allclose(both.dense(), 2.0 * full - 0.5 * np.asarray(v.dense()), rtol=1e-12, atol=1e-12)
    assert u.combine(1.0, jnp.asarray(full), 1.0) is None  # only a Lowrank of the same slot folds
    shift = jnp.asarray(rng.normal(size=shape[:-1]))
    np.testing.assert_allclose(u.shifted(shift).dense(), full + np.asarray(shift)[..., None] * np.asarray(rows),
                               rtol=1e-12, atol=1e-12)


def test_a_gram_lowrank_value_computes_as_its_written_out_array():
    """The Gram form: contraction, squared norm, consensus sum, the parameter's consensus,
    combinations and shifts equal those of the array it stands for."""
    rng = np.random.default_rng(3)
    n, m, k = 5, 3, 7
    rows = jnp.asarray(rng.normal(size=(n, 1, k)))
    imap = IndexMap((m, k), (Broadcast(0, n),))
    start = GramLowrank.broadcast(jnp.asarray(rng.normal(size=(1, m, k))), rows, imap.shape)

    def moved(v):  # a value with every factor nonzero: a projection, a consensus, another shift
        v = v.shifted(jnp.asarray(rng.normal(size=(n, m)))).consensus()
        return v.shifted(jnp.asarray(rng.normal(size=(n, m))))

    u, v = moved(start), moved(start).combine(0.5, start, -1.5)  # scales 1 and -1
    for value in (u, v, u.combine(1.0, v, -1.0)):  # the last: scale 2, as a residual's difference
        full = np.asarray(value.dense())
        assert full.shape == imap.shape
        np.testing.assert_allclose(value.contract_rows(), np.sum(full * np.asarray(rows), -1), rtol=1e-11)
        np.testing.assert_allclose(sqnorm(value), np.sum(full ** 2), rtol=1e-11)
        np.testing.assert_allclose(value.gather(imap, jnp.float64), full.sum(0), rtol=1e-11, atol=1e-11)
        np.testing.assert_allclose(value.consensus().dense(), np.broadcast_to(full.mean(0), full.shape),
                                   rtol=1e-11, atol=1e-11)
    assert u.combine(1.0, Lowrank.broadcast(start.mean, rows, imap.shape), 1.0) is None


def test_what_is_held_factored_and_its_size():
    """The dense first layer of the MNIST MLP at batch 256 (256 rows < 784 inputs) in Gram form,
    the digits MLP at batch 256 (256 rows > 64 inputs) and the CNN's kernel plainly factored."""
    sizes = {}
    for name, batch in (("mlp_mnist_128", 256), ("mlp_digits", 256), ("cnn_digits", 16)):
        (slot,) = held(lower(load_model(MODELS / f"{name}.onnx", batch_size=batch)))
        sizes[name] = slot
    assert sizes["mlp_mnist_128"] == {"key": "linear_0.x", "var": "fc1.weight", "copies": 256 * 128 * 784,
                                      "floats": 128 * 784 + 3 * 256 * 128 + 256 ** 2, "form": "gram"}
    assert sizes["mlp_digits"]["form"] == "lowrank"
    assert sizes["mlp_digits"]["floats"] == 32 * 64 + 256 * 32  # the mean and one coefficient per copy
    assert sizes["cnn_digits"]["form"] == "lowrank"
    assert sizes["cnn_digits"]["floats"] == 8 * 9 + 16 * 8 * 8 * 8  # the 3x3 kernels, one per (sample, position, channel)


def _setup(name: str, batch: int, colouring: str):
    model = load_model(MODELS / f"{name}.onnx", batch_size=batch)
    prog = lower(model)
    bipartize(prog)
    params = {n: v.const_value.numpy() for n, v in model.graph.initializers.items() if n in prog.variables}
    data = load_dataset("digits")
    x = data.x_train[:batch].reshape(prog.variables["x"].shape)
    onehot = np.eye(10, dtype=np.float32)[data.y_train[:batch]]
    return prog, schedule(prog, colouring), params, x, onehot


_ALGORITHMS = [("dr", "two-sets"), ("ap", "two-sets"), ("dm", "two-sets"), ("ar", "two-sets"), ("cp", "layers"),
               ("cdr", "layers")]


@pytest.mark.parametrize("model,algorithm,colouring", [
    *((m, a, c) for m in ("mlp_digits", "residual_mlp_digits") for a, c in _ALGORITHMS),
    # a convolution's kernel per sample and position, a recurrent input weight per step
    ("cnn_digits", "dr", "two-sets"), ("lstm_digits", "dr", "two-sets"), ("gru_digits", "ap", "two-sets")])
def test_lowrank_copies_give_the_same_iterates(model, algorithm, colouring):
    """Every algorithm, in float64: the final state, the residual of every iteration, the
    violation and the parameters read out agree with the written-out copies to rounding."""
    prog, sched, params, x, onehot = _setup(model, 16, colouring)
    values = forward_values(prog, {"x": x, **params})
    # written out; factored; factored with the dense layers' means in Gram form (16 rows < 64)
    forms = {"written out": (dict(lazy=True), set()), "lowrank": (dict(lowrank=True, gram=False), {"Lowrank"}),
             "gram": (dict(lowrank=True), {"GramLowrank"} if model != "cnn_digits" and "lstm" not in model
                      and "gru" not in model else {"Lowrank"})}
    runs = {}
    for name, (options, kinds) in forms.items():
        proj = BlockProjector(sched, {"x": x, "labels": onehot}, dtype=jnp.float64, **options)

        def run(s, proj=proj):
            final, residuals = algorithms.run(proj.project, proj.blocks, s, algorithm, 5, beta=0.7)
            return ({k: dense(v) for k, v in final.items()}, residuals,
                    algorithms.violation(proj.project, proj.blocks, final), read_parameters(proj, final))

        state = proj.initial_state(values)
        assert {type(state["linear_0.x"]).__name__} & {"Lowrank", "GramLowrank"} == kinds
        runs[name] = jax.jit(run)(state)
    plain, r0, v0, p0 = runs.pop("written out")
    scale = max(float(jnp.max(jnp.abs(v))) for v in plain.values())
    for factored, r1, v1, p1 in runs.values():
        assert max(float(jnp.max(jnp.abs(plain[k] - factored[k]))) for k in plain) < 1e-10 * scale
        np.testing.assert_allclose(r1, r0, rtol=1e-9)
        np.testing.assert_allclose(v1, v0, rtol=1e-9)
        for k in p0:
            np.testing.assert_allclose(p1[k], p0[k], rtol=1e-9, atol=1e-12)
    assert float(r0[-1]) > 0  # the iterations did move


def test_the_training_step_never_writes_the_first_layers_copies_out():
    """On one device the step holds the first layer's weight copies factored: its whole
    working memory is a small fraction of those copies written out once (103 MB here)."""
    model = load_model(MODELS / "mlp_mnist_128.onnx", batch_size=256)
    prog = lower(model)
    bipartize(prog)
    params = {n: v.const_value.numpy() for n, v in model.graph.initializers.items() if n in prog.variables}
    rng = np.random.default_rng(0)
    x = rng.standard_normal((256, 784)).astype(np.float32)
    onehot = np.eye(10, dtype=np.float32)[rng.integers(0, 10, 256)]
    memory = make_step(schedule(prog), iterations=3).lower(params, x, onehot).compile().memory_analysis()
    slot = next(s for s in prog.groups["linear_0"].slots if s.role == "x")
    copies = int(np.prod(slot.imap.shape)) * 4
    assert memory.temp_size_in_bytes < copies / 4, (memory.temp_size_in_bytes, copies)  # measured: 1/8


@pytest.mark.parametrize("model,batch", [("mlp_digits", 16), ("cnn_digits", 8), ("lstm_digits", 4)])
def test_the_schedule_reports_the_state_the_step_holds(model, batch):
    """The schedule's one-device state size is the floats of the step's initial state: the
    factored slots' factors (the data rows left out) and every other slot's copies."""
    prog, sched, params, x, onehot = _setup(model, batch, "two-sets")
    proj = BlockProjector(sched, {"x": x, "labels": onehot}, lowrank=True)
    state = proj.initial_state(forward_values(prog, {"x": x, **params}))
    floats = 0
    for value in state.values():
        if isinstance(value, Lowrank):
            leaves = [leaf for leaf in value.tree_flatten()[0] if leaf is not value.rows]
            floats += sum(int(np.size(leaf)) for leaf in leaves if np.ndim(leaf) > 0)  # not the scale
        else:
            floats += int(np.size(value))
    cost = sched.summary()
    assert any(isinstance(v, Lowrank) for v in state.values())
    assert cost["held_state_floats"] == floats < cost["state_floats"]
    assert cost["held_bytes_per_iteration"] < cost["bytes_per_iteration"]
