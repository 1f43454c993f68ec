"""`blocks.flat_map`: cached blocks give the whole-array answer, for every shape and policy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from projc.backends.jax.projections import blocks


def _fn(calls):
    def fn(a, b):
        calls.append(a.shape)
        return a * b, a - b

    return fn


@pytest.mark.parametrize("shape, block", [((7, 13), 16), ((7, 13), 13), ((4, 8), 8), ((3,), 16)])
def test_blocks_pad_broadcast_and_return_the_whole_answer(shape, block):
    """A padded last block (91 = 5 x 16 + 11), an exact tiling, one block, and arrays no larger
    than a block (one call on the arrays as they are); the second input broadcasts."""
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.normal(size=shape))
    b = jnp.asarray(rng.normal(size=shape[-1:]))
    calls = []
    out = jax.jit(lambda a, b: blocks.flat_map(_fn(calls), (a, b), (0, 0), block))(a, b)
    assert [o.shape for o in out] == [shape, shape]
    np.testing.assert_array_equal(out[0], a * b)
    np.testing.assert_array_equal(out[1], a - b)
    size = int(np.prod(shape))
    assert calls == ([(block,)] if size > block else [shape])


def test_no_blocks_where_blocking_is_off(monkeypatch):
    """Off a single CPU device (`cache_blocking` false) `fn` sees the whole arrays."""
    monkeypatch.setattr(blocks, "cache_blocking", lambda: False)
    calls = []
    a = jnp.arange(100.0).reshape(10, 10)
    out = blocks.flat_map(_fn(calls), (a, a), (0, 0), 8)
    assert calls == [(10, 10)]
    np.testing.assert_array_equal(out[0], a * a)


def test_blocking_is_on_here():
    """The tests run on one CPU device: the policy blocks (the other tests rely on it)."""
    assert blocks.cache_blocking() == (jax.default_backend() == "cpu" and jax.device_count() == 1)
