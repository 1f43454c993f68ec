"""Backends: ``jax`` (the real one) and ``reference`` (a small NumPy interpreter for tests)."""
