"""Every constraint kind of the constraint IR has a projection operator, and every loss a prox."""

import jax.numpy as jnp
import numpy as np

from projc.backends.jax.projections import ACTIVATIONS, KINDS, LOSSES, activation_forward
from projc.constraints import KINDS as IR_KINDS
from projc.passes.lower_to_constraints import LOSSES as IR_LOSSES
from projc.backends.reference.constraint_eval import ACTIVATIONS as REFERENCE_ACTIVATIONS


def test_every_ir_kind_has_an_operator():
    # concat is an identity on each part; loss is served by LOSSES
    assert set(IR_KINDS) - {"concat", "loss"} <= set(KINDS)
    assert set(IR_LOSSES) == set(LOSSES)


def test_lowered_activations_are_projectable_and_agree_forward():
    s = jnp.linspace(-3.0, 3.0, 61, dtype=jnp.float32)
    for act, ref in REFERENCE_ACTIVATIONS.items():
        assert act in ACTIVATIONS, act
        params = {"lo": -1.0, "hi": 1.0} if act == "clip" else {}
        np.testing.assert_allclose(np.asarray(activation_forward(act, s, **params)), ref(np.asarray(s, np.float64), **params),
                                   rtol=1e-6, atol=1e-6, err_msg=act)
