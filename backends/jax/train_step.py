"""One minibatch of gradient-free training as one jitted function (method.md section 3):
initialise the state by a forward pass at the current parameters, run the algorithm's
iterations in a ``lax.scan``, read the parameters from the consensus of the final state.

The step returns the new parameters and the minibatch's diagnostics: the fixed-point residual
of every iteration, the constraint violation of the final state, and whether every new
parameter is finite (a diverged run keeps its last good parameters).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from projc.backends.jax import algorithms, factored, sharding
from projc.backends.jax.iterate import BlockProjector, read_parameters
from projc.backends.jax.program_forward import forward_values
from projc.backends.jax.sharding import MeshShape
from projc.backends.jax.state import send
from projc.constraints import Program, Slot, VarKind
from projc.passes.schedule_blocks import Schedule


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """Everything that shapes the compiled step besides the schedule."""

    algorithm: str = "dr"
    iterations: int = 50
    lam: float = 0.5  # Douglas-Rachford relaxation
    beta: float = 1.0  # difference-map parameter
    loss_lambda: float = 5.0  # weight of the loss in its proximal operator
    fanout: str = "exact"
    compat: bool = False  # the reference framework's operators
    # residuals of every iteration (True), of the last one ("last"), or none (False): see
    # algorithms.run; "violation": no residuals, only the final state's violation
    monitor: bool | str = True
    devices: int = 1  # > 1: the state sharded over a device mesh (backends/jax/sharding.py)
    model_parallel: int = 1  # of those devices, how many split the neuron axis of large groups
    factored: str = "auto"  # AP without the big copies (backends/jax/factored.py): auto / on / off
    state_dtype: str = "float32"  # storage of the iterate between iterations (float32 / bfloat16)
    relax: float = 1.0  # alternating projections' relaxation: x + relax (P_1 P_0 x - x)

    @property
    def residuals(self) -> bool | str:
        """The residuals the iteration loop computes: ``monitor`` as ``algorithms.run`` takes it."""
        return False if self.monitor == "violation" else self.monitor


# What the iterate may be stored as between iterations (the solves stay float32); None: as is.
STATE_DTYPES = {"float32": None, "bfloat16": jnp.bfloat16}


def io_names(prog: Program) -> tuple[str, str, Slot]:
    """(data variable, label variable, the loss's logits slot) of a lowered program."""
    (data,) = [v.name for v in prog.variables.values() if v.kind is VarKind.DATA]
    (label,) = [v.name for v in prog.variables.values() if v.kind is VarKind.LABEL]
    loss = next(g for g in prog.groups.values() if g.kind == "loss")
    return data, label, next(s for s in loss.slots if s.role == "v")


def make_step(schedule: Schedule, config: StepConfig | None = None, **overrides) -> Callable:
    """``step(params, x, labels) -> (params, stats)``, jitted.

    ``stats`` holds ``residuals`` (per ``monitor``: one per iteration, the last one, or empty),
    ``violation`` (of the final state; absent when ``monitor`` is False) and ``finite`` (every
    new parameter finite).

    With ``devices > 1`` the step is a :class:`~projc.backends.jax.sharding.ShardedStep`: the
    minibatch split over the mesh's batch axis, the state laid out by
    :func:`~projc.backends.jax.sharding.plan`, the parameters replicated in and out.
    """
    config = dataclasses.replace(config or StepConfig(), **overrides)
    algo = algorithms.get(config.algorithm)
    prog = schedule.program
    data, label, _ = io_names(prog)
    mesh = MeshShape(config.devices, config.model_parallel).check(prog.batch_size)
    # a data operand's partner copies stay factored (state.Lowrank) and linear updates folded
    # (state.Shifted); the sharded step pins the written-out arrays' layouts and lets XLA
    # place the small factors
    projector = BlockProjector(schedule, fanout=config.fanout, loss_lambda=config.loss_lambda,
                               compat=config.compat, lowrank=True)
    if algo.two_sets and projector.blocks != 2:
        raise ValueError(f"{algo.title} needs a two-set schedule; this one has {projector.blocks} blocks")

    plan = factored.choose(schedule, config.algorithm, config.factored, config.devices)
    if plan is not None:  # same iterates as below, without materialising the dense layers' copies
        return jax.jit(factored.step_function(schedule, plan, projector, config, (data, label)))
    constrain = lambda state: state  # noqa: E731 - one device: no layout to pin
    if mesh.sharded:
        jax_mesh = sharding.make_mesh(mesh)
        constrain = sharding.constrainer(sharding.plan(prog, mesh), jax_mesh)

    def step(params, x, labels):
        proj = projector.with_data({data: x, label: labels})
        state = constrain(proj.initial_state(forward_values(prog, {data: x, **params})))
        # pinning each block's output keeps the scan's carry in the planned layout
        project = proj.project if not mesh.sharded else (lambda s, b: constrain(proj.project(s, b)))
        final, residuals = algorithms.run(project, proj.blocks, state, config.algorithm, config.iterations,
                                          lam=config.lam, beta=config.beta, relax=config.relax,
                                          monitor=config.residuals,
                                          storage=STATE_DTYPES[config.state_dtype])
        new = read_parameters(proj, final)
        finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(v)) for v in new.values()]))
        stats = {"residuals": residuals, "finite": finite}
        if config.monitor:
            stats["violation"] = algorithms.violation(project, proj.blocks, final)
        return new, stats

    if not mesh.sharded:
        return jax.jit(step)
    params = [v for v, var in prog.variables.items() if var.kind is VarKind.PARAM]
    in_sh, out_sh = sharding.io_shardings(jax_mesh, params)
    return sharding.ShardedStep(jax.jit(step, in_shardings=in_sh, out_shardings=out_sh), in_sh, jax_mesh)


def make_predict(prog: Program) -> Callable:
    """``predict(params, x) -> logits``, jitted: the forward pass of the lowered program."""
    data, _, logits = io_names(prog)

    @jax.jit
    def predict(params, x):
        return send(logits.imap, forward_values(prog, {data: x, **params})[logits.var])

    return predict


__all__ = ["StepConfig", "io_names", "make_predict", "make_step"]
