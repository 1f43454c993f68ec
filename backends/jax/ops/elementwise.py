"""Forward rules: elementwise arithmetic, comparisons, logic, casts and activations."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from projc.backends.jax.ops._registry import register

_BINARY = {
    "Add": jnp.add,
    "Sub": jnp.subtract,
    "Mul": jnp.multiply,
}

for _op, _fn in _BINARY.items():
    register(_op, since=7)(lambda ctx, a, b, _fn=_fn: _fn(a, b))


@register("Relu", since=6)
def _relu(ctx, x):
    return jax.nn.relu(x)
