"""The JAX state layout: copies sent through index maps, gathered back by their adjoints."""

from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from projc.backends.jax.state import compact, consensus, gather, init_state, send
from projc.backends.reference.constraint_eval import evaluate_program
from projc.constraints import VarKind
from projc.frontend import load_model
from projc.passes.lower_to_constraints import lower

MODELS = Path(__file__).resolve().parents[2] / "models"


@pytest.mark.parametrize("name", ["mlp_digits", "cnn_digits", "lstm_digits"])
def test_state_from_forward_values_and_consensus_read_out(name):
    model = load_model(MODELS / f"{name}.onnx", batch_size=3)
    prog = lower(model)
    x_var = next(v for v in prog.variables.values() if v.kind is VarKind.DATA)
    params = {n: v.const_value.numpy() for n, v in model.graph.initializers.items() if n in prog.variables}
    values = evaluate_program(prog, {x_var.name: np.random.default_rng(0).random(x_var.shape), **params})
    state = init_state(prog, values, dtype=jnp.float64)
    assert sum(int(np.prod(a.shape)) for a in state.values()) == prog.state_size()
    # at the forward state, the consensus of every parameter's copies is the parameter itself
    for name_, value in params.items():
        np.testing.assert_allclose(np.asarray(consensus(prog, state, name_, jnp.float64)), value, rtol=1e-12, atol=1e-12)


def test_gather_is_the_adjoint_of_send():
    """<G x, c> == <x, G^T c> for the maps of a padded conv (take with padding, broadcasts)."""
    prog = lower(load_model(MODELS / "cnn_digits.onnx", batch_size=2))
    rng = np.random.default_rng(1)
    checked = 0
    for group in prog.groups.values():
        for slot in group.slots:
            x = rng.standard_normal(slot.imap.src_shape)
            c = rng.standard_normal(slot.imap.shape)
            lhs = float(jnp.sum(send(slot.imap, jnp.asarray(x)) * c))
            gt = gather(slot.imap, jnp.asarray(c), jnp.float64)
            assert abs(lhs - float(jnp.sum(jnp.asarray(x) * gt))) < 1e-8 * (1 + abs(lhs))
            np.testing.assert_allclose(np.asarray(gt), slot.imap.adjoint(c), rtol=1e-10, atol=1e-10)
            checked += 1
    assert checked >= 8


@pytest.mark.parametrize("name", ["mlp_digits", "cnn_digits", "lstm_digits", "residual_mlp_digits"])
def test_counts_is_the_adjoint_of_ones_counted_entry_by_entry(name):
    """``counts`` (walked back with the count kept as one number while it is constant) equals
    the fan-out counted the slow way: every operand entry's source index, tallied."""
    prog = lower(load_model(MODELS / f"{name}.onnx", batch_size=3))
    kinds = set()
    for group in prog.groups.values():
        for slot in group.slots:
            imap = slot.imap
            size = int(np.prod(imap.src_shape))
            sources = np.asarray(imap.apply(np.arange(1, size + 1).reshape(imap.src_shape))).reshape(-1)
            want = np.bincount(sources, minlength=size + 1)[1:].reshape(imap.src_shape)  # 0: padding
            np.testing.assert_array_equal(imap.counts(), want)
            np.testing.assert_array_equal(imap.adjoint(np.ones(imap.shape)), want)
            kinds |= {type(step).__name__ for step in imap.steps}
    assert "Broadcast" in kinds  # the maps exercised more than the identity
    if name == "cnn_digits":
        assert {"Take", "Transpose", "Reshape"} <= kinds


def test_compact_keeps_only_the_axes_that_vary():
    rng = np.random.default_rng(0)
    varying = rng.integers(0, 3, (1, 5, 1)).astype(float)
    full = np.broadcast_to(varying, (4, 5, 6)).copy()
    small = compact(full)
    assert small.shape == (1, 5, 1)
    np.testing.assert_array_equal(np.broadcast_to(small, full.shape), full)
    mixed = full.copy()
    mixed[3, 0, 5] += 1  # one entry off: no axis is constant any more
    assert compact(mixed).shape == mixed.shape
    assert compact(np.ones(())).shape == ()
