"""Property tests of the identity, linear and max projections."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from projc.backends.jax.projections.identity import project_identity
from projc.backends.jax.projections.linear import project_linear
from projc.backends.jax.projections.maxproj import project_max
from projc.backends.reference import projections_bilinear as ref

from compiled import written_arrays  # tests/projections/compiled.py

DTYPES = (np.float32, np.float64)
BATCHES = ((), (5,), (2, 3))

_identity = jax.jit(project_identity)
_linear = jax.jit(project_linear)
_max = jax.jit(project_max)


def _eps(dtype):
    return float(np.finfo(dtype).eps)


def _sq(x):
    return (np.float64(x) ** 2).sum(-1)


def _weights(rng, batch, weighted):
    return rng.uniform(0.2, 30.0, size=batch) if weighted else np.ones(batch)


# --- identity and linear -----------------------------------------------------------------


def _linear_query(seed, dtype, batch, n, weighted):
    rng = np.random.default_rng(seed)
    scale = 10.0 ** rng.uniform(-2, 3)
    x = scale * rng.normal(size=batch + (n,))
    c = rng.normal(size=(1,) * len(batch) + (n,)) * (rng.random() > 0.1)  # c = 0 now and then
    y = scale * rng.normal(size=batch) * 10.0 ** rng.uniform(-1, 2)
    d = rng.normal(size=batch)
    return tuple(np.asarray(v, dtype) for v in (x, y, c, d, _weights(rng, batch, weighted)))


def _linear_cost(x, y, w, x2, y2):
    return _sq(np.float64(x2) - np.float64(x)) + np.float64(w) * (np.float64(y2) - y) ** 2


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    dtype_batch=st.sampled_from([(d, b) for d in DTYPES for b in BATCHES]),
    weighted=st.booleans(),
)
def test_linear_is_the_minimiser(seed, dtype_batch, weighted):
    (dtype, batch), n = dtype_batch, 3
    x, y, c, d, w = _linear_query(seed, dtype, batch, n, weighted)
    x2, y2 = (np.asarray(o) for o in _linear(x, y, c, d, w))
    assert x2.dtype == y2.dtype == dtype and x2.shape == x.shape and y2.shape == y.shape
    eps = _eps(dtype)
    size = 1 + np.sqrt(_sq(x2) * _sq(c)) + np.abs(d) + np.abs(y) + np.abs(y2)
    # on the graph
    gap = np.abs(np.float64(y2) - (np.float64(c) * x2).sum(-1) - d)
    assert np.all(gap <= 8 * (n + 2) * eps * size)
    # twice changes nothing
    x3, y3 = _linear(x2, y2, c, d, w)
    assert np.all(np.abs(np.float64(y3) - y2) <= 8 * (n + 2) * eps * size)
    # the twin, and random points on the graph, are no closer
    cost = _linear_cost(x, y, w, x2, y2)
    tol = 64 * (n + 2) * eps * (1 + _sq(x) + _sq(x2) + np.float64(w) * (y * y + y2 * y2))
    xt, yt = ref.project_linear(x, y, c, d, w)
    assert np.all(np.abs(cost - _linear_cost(x, y, w, xt, yt)) <= tol)
    rng = np.random.default_rng(seed + 1)
    for _ in range(30):
        xc = np.float64(x) + 10.0 ** rng.uniform(-3, 2) * rng.normal(size=x.shape)
        yc = (np.float64(c) * xc).sum(-1) + d
        assert np.all(cost <= _linear_cost(x, y, w, xc, yc) + tol)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    dtype=st.sampled_from(DTYPES),
    batch=st.sampled_from(BATCHES),
    weighted=st.booleans(),
)
def test_identity_is_the_weighted_mean(seed, dtype, batch, weighted):
    rng = np.random.default_rng(seed)
    a, y = (np.asarray(10.0 ** rng.uniform(-2, 3) * rng.normal(size=batch), dtype) for _ in "ay")
    w = np.asarray(_weights(rng, batch, weighted), dtype)
    a2, y2 = (np.asarray(o) for o in _identity(a, y, w))
    assert a2.dtype == y2.dtype == dtype and a2.shape == batch
    np.testing.assert_array_equal(a2, y2)
    # the minimiser of (a' - a)^2 + w (a' - y)^2 makes its derivative vanish
    resid = (np.float64(a2) - a) + np.float64(w) * (np.float64(a2) - y)
    assert np.all(np.abs(resid) <= 8 * _eps(dtype) * (1 + w) * (np.abs(a) + np.abs(y)))
    # a weighted mean of a and y rounds at their scale, not at the (possibly cancelled) result's
    scale = 8 * _eps(dtype) * float(np.max(np.abs(a) + np.abs(y)))
    np.testing.assert_allclose(a2, ref.project_identity(a, y, w)[0], rtol=8 * _eps(dtype), atol=scale)
    np.testing.assert_allclose(_identity(a2, y2, w)[0], a2, rtol=4 * _eps(dtype))


def test_linear_broadcasts_constant_coefficients():
    """c of shape (B, 1, n) against copies x of shape (B, M, n): the data operand of a layer."""
    rng = np.random.default_rng(0)
    x, c = rng.normal(size=(4, 3, 5)), rng.normal(size=(4, 1, 5))
    y, w = rng.normal(size=(4, 3)), rng.uniform(1, 5, size=(4, 3))
    x2, y2 = _linear(x, y, c, 0.5, w)
    xt, yt = ref.project_linear(x, y, c, 0.5, w)
    np.testing.assert_allclose(x2, xt, rtol=1e-12)
    np.testing.assert_allclose(y2, yt, rtol=1e-12)
    np.testing.assert_allclose(y2, (c * np.asarray(x2)).sum(-1) + 0.5, rtol=1e-12)


# --- max -----------------------------------------------------------------------------------


def _max_query(seed, dtype, batch, n, weighted):
    rng = np.random.default_rng(seed)
    scale = 10.0 ** rng.uniform(-2, 2)
    a = scale * rng.normal(size=batch + (n,))
    if rng.random() < 0.5:  # ties: values from a small set
        a = scale * rng.integers(-2, 3, size=batch + (n,))
    z = scale * (a.max(-1) / scale + 10.0 ** rng.uniform(-2, 2) * rng.normal(size=batch))
    return tuple(np.asarray(v, dtype) for v in (a, z, _weights(rng, batch, weighted)))


def _max_cost(a, z, w, a2, z2):
    return _sq(np.float64(a2) - np.float64(a)) + np.float64(w) * (np.float64(z2) - z) ** 2


def _max_bruteforce(a, z, w, points=2001):
    """Least cost over a grid of common values m: entries above m cut, the largest raised."""
    a, z, w = np.float64(a), np.float64(z), np.float64(w)
    lo = np.minimum(a.min(-1), z) - 1
    hi = np.maximum(a.max(-1), z) + 1
    m = np.linspace(lo, hi, points, axis=-1)
    cut = np.maximum(a[..., None, :] - m[..., None], 0) ** 2
    raise_top = np.maximum(m - a.max(-1)[..., None], 0) ** 2
    return (cut.sum(-1) + raise_top + w[..., None] * (m - z[..., None]) ** 2).min(-1)


# a network sort up to n = 16, jnp.sort beyond; batch shapes varied at n = 4
MAX_CASES = [(d, b, 4) for d in DTYPES for b in BATCHES] + [(d, (5,), n) for d in DTYPES
                                                             for n in (1, 9, 33)]


@settings(max_examples=50, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    case=st.sampled_from(MAX_CASES),
    weighted=st.booleans(),
)
def test_max_is_the_minimiser(seed, case, weighted):
    dtype, batch, n = case
    a, z, w = _max_query(seed, dtype, batch, n, weighted)
    a2, z2 = (np.asarray(o) for o in _max(a, z, w))
    assert a2.dtype == z2.dtype == dtype and a2.shape == a.shape and z2.shape == z.shape
    np.testing.assert_array_equal(a2.max(-1), z2)  # on the graph, exactly
    a3, z3 = _max(a2, z2, w)
    size = 1 + np.abs(a2).max(-1, initial=0) + np.abs(z2)
    assert np.all(np.abs(np.float64(z3) - z2) <= 16 * n * _eps(dtype) * size)
    cost = _max_cost(a, z, w, a2, z2)
    tol = 64 * n * _eps(dtype) * (1 + _sq(a) + _sq(a2) + np.float64(w) * (z * z + z2 * z2))
    assert np.all(cost <= _max_bruteforce(a, z, w) + tol)
    at, zt = ref.project_max(a, z, w)
    assert np.all(np.abs(cost - _max_cost(a, z, w, at, zt)) <= tol)
    rng = np.random.default_rng(seed + 1)
    for _ in range(20):
        ac = np.float64(a2) + 10.0 ** rng.uniform(-3, 1) * rng.normal(size=a.shape)
        assert np.all(cost <= _max_cost(a, z, w, ac, ac.max(-1)) + tol)


@pytest.mark.parametrize("n", (4, 40))
def test_max_raises_exactly_one_of_tied_entries(n):
    a = np.zeros((2, n))
    a[:, :3] = 1.0  # a three-way tie at the top
    z = np.array([5.0, 0.5])
    a2, z2 = (np.asarray(o) for o in _max(a, z, 1.0))
    # z above the max: one entry rises to (1 + 5)/2 = 3, the others stay
    np.testing.assert_allclose(z2[0], 3.0)
    assert np.sum(a2[0] != a[0]) == 1 and a2[0].max() == 3.0
    # z below: the three tied entries come down together to (3 + 0.5)/4
    np.testing.assert_allclose(z2[1], 3.5 / 4)
    np.testing.assert_allclose(a2[1, :3], 3.5 / 4)
    np.testing.assert_array_equal(a2[1, 3:], 0.0)


def test_max_pooling_writes_only_its_outputs():
    """2x2 pooling (n = 4): one pass for z' and one for a'; the raised entry's index is
    computed inside the second (an argmax was a third array, written and read back)."""
    shape = (8, 16, 49, 4)
    written = written_arrays(project_max, shape, shape[:-1], size=np.prod(shape[:-1]))
    assert len(written) == 2, written


def test_max_builds_no_n_by_n_intermediate():
    n = 512
    jaxpr = jax.make_jaxpr(project_max)(np.zeros((2, n), np.float32), np.zeros(2, np.float32))
    sizes = [int(np.prod(v.aval.shape)) for eqn in jaxpr.jaxpr.eqns for v in eqn.outvars]
    assert max(sizes) <= 2 * n


@pytest.mark.parametrize("dtype", DTYPES)
def test_max_long_rows_in_blocks_match_the_twin(dtype):
    """Rows above the block size go through `lax.map` over blocks: each row its own answer."""
    from projc.backends.jax.projections import maxproj

    rng = np.random.default_rng(11)
    rows = 3 * maxproj._BLOCK_ROWS  # three blocks
    a = rng.normal(size=(rows, 50))
    z = rng.normal(size=rows) * 10.0 ** rng.uniform(-1, 1.5, size=rows)
    w = rng.uniform(0.2, 30.0, size=rows)
    a, z, w = (np.asarray(v, dtype) for v in (a, z, w))
    a2, z2 = (np.asarray(o) for o in _max(a.reshape(3, -1, 50), z.reshape(3, -1), w.reshape(3, -1)))
    a2, z2 = a2.reshape(rows, 50), z2.reshape(rows)
    at, zt = ref.project_max(a, z, w)
    tol = 64 * 50 * _eps(dtype) * (1 + np.abs(zt))
    np.testing.assert_allclose(z2, zt, rtol=0, atol=tol.max())
    np.testing.assert_array_equal(a2.max(-1), z2)
    assert np.all(_max_cost(a, z, w, a2, z2) <= _max_cost(a, z, w, at, zt) + tol * (1 + _sq(a)))


def test_max_newton_cap_falls_back_to_the_sort(monkeypatch):
    """A block whose Newton iteration hits the cap is solved by the sort: same answer."""
    from projc.backends.jax.projections import maxproj

    rng = np.random.default_rng(12)
    a = rng.normal(size=(40, 64))
    z = rng.normal(size=40) - 3  # far below the max: many entries move, Newton needs passes
    want = [np.asarray(o) for o in maxproj.project_max(a, z, 2.0)]
    _, done = maxproj._newton_rows(a, z, np.full(40, 2.0))
    assert bool(done)
    monkeypatch.setattr(maxproj, "_NEWTON_CAP", 1)
    _, done = maxproj._newton_rows(a, z, np.full(40, 2.0))
    assert not bool(done)  # so the sort ran below
    got = [np.asarray(o) for o in maxproj.project_max(a, z, 2.0)]
    for g, t in zip(got, want):
        np.testing.assert_allclose(g, t, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got[1], ref.project_max(a, z, 2.0)[1], rtol=1e-12)


def test_max_block_rows_tile_exactly():
    from projc.backends.jax.projections.maxproj import _BLOCK_ROWS, _block_rows

    assert _block_rows(32768) == _BLOCK_ROWS
    assert _block_rows(7) == 7  # few rows: one block
    assert _block_rows(3 * 97) == 97
    assert _block_rows(2 * 1009) == 2 * 1009  # no useful divisor: one block of all rows
    for rows in (1, 5, 96, 250, 4096, 2 * 1009):
        assert rows % _block_rows(rows) == 0


def test_linear_with_broadcastable_coefficients_matches_the_materialised_form():
    """Constant data rows shared by every neuron arrive with a size-1 axis (never written out
    at the state's size); the projection is the one of the broadcast coefficients."""
    import jax.numpy as jnp

    from projc.backends.jax.projections.linear import project_linear

    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 3, 7))
    y = rng.normal(size=(5, 3))
    c = rng.normal(size=(5, 1, 7))
    w = rng.uniform(0.5, 4, size=(5, 3))
    compact = project_linear(jnp.asarray(x), y, c, 0.3, w)
    full = project_linear(jnp.asarray(x), y, np.broadcast_to(c, x.shape), 0.3, w)
    for a, b in zip(compact, full):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=1e-12)
