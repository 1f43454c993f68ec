"""The suite's kernel count (benchmarks/suite.py): the deterministic figure next to compile time."""

import importlib.util
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

_SPEC = importlib.util.spec_from_file_location("bench_suite", Path(__file__).resolve().parents[1] / "benchmarks" / "suite.py")
suite = sys.modules["bench_suite"] = importlib.util.module_from_spec(_SPEC)  # its dataclasses look it up
_SPEC.loader.exec_module(suite)


def _count(fn, *args):
    return suite.kernel_count(jax.jit(fn).lower(*args).compile())


def test_kernel_count_counts_fusions_once_and_looks_into_loops():
    x = jnp.ones((64, 8), jnp.float32)
    one = _count(lambda x: jnp.tanh(jnp.exp(x) * 2 + 1), x)
    assert one == 1  # a chain of elementwise ops: one fusion
    # a row sum feeding an elementwise pass: the reduction is a kernel of its own
    assert _count(lambda x: x - jnp.sum(jnp.exp(x), -1, keepdims=True), x) >= 2

    def looped(x):
        body = lambda s: (s[0] + 1, jnp.exp(s[1]) - jnp.sum(s[1], -1, keepdims=True))  # noqa: E731
        return jax.lax.while_loop(lambda s: s[0] < 3, body, (0, x))[1]

    # the loop's body and condition are counted, not the while instruction alone
    assert _count(looped, x) >= 3


def test_kernel_count_looks_into_loops_that_carry_many_values():
    """A loop carrying six or more values prints its tuple type with "/*index=5*/" in it."""
    x = jnp.ones((64, 8), jnp.float32)

    def looped(x, n):
        def body(s):
            i, *vs = s
            return (i + 1, *(jnp.exp(v) - jnp.sum(v, -1, keepdims=True) for v in vs))

        return jax.lax.while_loop(lambda s: s[0] < 3, body, (0, *(x + k for k in range(n))))[1:]

    text = jax.jit(lambda x: looped(x, 6)).lower(x).compile().as_text()
    assert "/*index=5*/" in text
    # the body's kernels are counted: one pass per carried value, so six values count more than one
    assert _count(lambda x: looped(x, 6), x) > _count(lambda x: looped(x, 1), x) + 5
