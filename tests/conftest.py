"""Test configuration shared by every suite."""

import os

# Tests run on the CPU, with a few virtual devices available to sharding tests that ask.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import projc.backends.jax  # noqa: E402,F401  (enables x64 before any JAX array exists)
