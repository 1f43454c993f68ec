"""Exact projection operators, one module per constraint kind, vectorised over batches.

Every operator takes a tensor-shaped batch of independent constraints (a constraint *group*)
and returns the projected point: the global minimiser of ``|x' - x|^2 + w |f(x') - y|^2`` over
the constraint's graph, with ``w`` the output (fan-out) weight of method.md section 1.
``compat=True`` reproduces the reference framework PJAX's operator as it is, for side-by-side
comparisons. ``KINDS`` maps the constraint IR's group kinds to their operators.
"""

from projc.backends.jax.projections.dot import project_dot, project_mul
from projc.backends.jax.projections.identity import project_identity
from projc.backends.jax.projections.linear import project_linear
from projc.backends.jax.projections.losses import project_margin, prox_cross_entropy, prox_mse
from projc.backends.jax.projections.maxproj import project_max
from projc.backends.jax.projections.sum_act import ACTIVATIONS, activation_forward, project_sum_act

KINDS = {
    "identity": project_identity,
    "linear": project_linear,
    "dot": project_dot,
    "mul": project_mul,
    "max": project_max,
    "sum_act": project_sum_act,
}

LOSSES = {
    "cross-entropy": prox_cross_entropy,
    "margin": project_margin,
    "mse": prox_mse,
}

__all__ = [
    "ACTIVATIONS", "KINDS", "LOSSES", "activation_forward", "project_dot", "project_identity",
    "project_linear", "project_margin", "project_max", "project_mul", "project_sum_act",
    "prox_cross_entropy", "prox_mse",
]
