"""One minibatch of gradient-free training as one jitted function (method.md section 3):
initialise the state by a forward pass at the current parameters, run the algorithm's
iterations in a ``lax.scan``, read the parameters from the consensus of the final state."""

from __future__ import annotations

from typing import Callable

import jax

from projc.backends.jax.iterate import BlockProjector, douglas_rachford, read_parameters
from projc.backends.jax.program_forward import forward_values
from projc.backends.jax.state import init_state
from projc.constraints import VarKind
from projc.passes.schedule_blocks import Schedule


def make_step(schedule: Schedule, *, iterations: int = 50, lam: float = 0.5, fanout: str = "exact",
              loss_lambda: float = 5.0) -> Callable:
    """``step(params, x, labels) -> params`` for Douglas-Rachford on ``schedule``."""
    prog = schedule.program
    (data,) = [v.name for v in prog.variables.values() if v.kind is VarKind.DATA]
    (label,) = [v.name for v in prog.variables.values() if v.kind is VarKind.LABEL]
    projector = BlockProjector(schedule, fanout=fanout, loss_lambda=loss_lambda)

    @jax.jit
    def step(params, x, labels):
        state = init_state(prog, forward_values(prog, {data: x, **params}))
        proj = projector.with_data({data: x, label: labels})
        return read_parameters(proj, douglas_rachford(proj, state, iterations, lam))

    return step
