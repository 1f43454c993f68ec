"""Test configuration shared by every suite."""

import os

# Tests run on the CPU, with a few virtual devices available to sharding tests that ask.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# tests compile afresh: no persistent XLA cache shared with other processes (the CLI turns it on)
os.environ.setdefault("PROJC_CACHE_DIR", "off")

import projc.backends.jax  # noqa: E402,F401  (enables x64 before any JAX array exists)

from hypothesis import settings  # noqa: E402

# CI must not fail at random: property tests draw the same examples on every run. Explore with
# new random examples locally with PROJC_HYPOTHESIS=explore.
settings.register_profile("ci", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False)
settings.load_profile("explore" if os.environ.get("PROJC_HYPOTHESIS") == "explore" else "ci")
