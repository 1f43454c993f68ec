"""Forward rules: ml ops."""

from __future__ import annotations

import jax.numpy as jnp  # noqa: F401

from projc.backends.jax.ops._registry import register  # noqa: F401
