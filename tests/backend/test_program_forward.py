"""The JAX forward evaluation of constraint programs agrees with the NumPy reference."""

from pathlib import Path

import numpy as np
import pytest

from projc.backends.jax.program_forward import evaluation_plan, forward_values
from projc.backends.reference.constraint_eval import evaluate_program
from projc.constraints import VarKind
from projc.frontend import load_model
from projc.passes.lower_to_constraints import lower

MODELS = Path(__file__).resolve().parents[2] / "models"


@pytest.mark.parametrize("name, sweeps", [("mlp_digits", 1), ("cnn_digits", 1), ("residual_mlp_digits", 1),
                                          ("lstm_digits", 9), ("gru_digits", 9)])
def test_forward_values_match_the_reference(name, sweeps):
    model = load_model(MODELS / f"{name}.onnx", batch_size=3)
    prog = lower(model)
    assert evaluation_plan(prog)[1] == sweeps  # recurrent programs: T + 1 sweeps
    x_var = next(v for v in prog.variables.values() if v.kind is VarKind.DATA)
    leaves = {x_var.name: np.random.default_rng(0).random(x_var.shape),
              **{n: v.const_value.numpy() for n, v in model.graph.initializers.items() if n in prog.variables}}
    ours = forward_values(prog, leaves)
    ref = evaluate_program(prog, leaves)
    for var in prog.variables:
        if prog.variables[var].kind is VarKind.HIDDEN:
            np.testing.assert_allclose(np.asarray(ours[var]), ref[var], rtol=2e-5, atol=2e-5, err_msg=var)
