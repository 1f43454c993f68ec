"""Property tests of the dot and mul projections against brute force and the NumPy twin."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from projc.backends.jax.projections.dot import project_dot, project_mul
from projc.backends.reference import projections_bilinear as ref

from compiled import written_arrays  # tests/projections/compiled.py

DTYPES = (np.float32, np.float64)
BATCHES = ((), (3,), (2, 3))
# adversarial query families of the brief: offsets up to 1e4, a or b near zero, a ~ +-b
MODES = ("generic", "a_near_b", "a_near_minus_b", "a_equals_b", "a_equals_minus_b",
         "a_small", "b_zero", "both_zero")
OFFSETS = (0.0, 1e-3, 1.0, 10.0, 100.0, 1e4)

_dot = jax.jit(project_dot, static_argnames="compat")
_mul = jax.jit(project_mul, static_argnames="compat")


def _row(mode, rng, n):
    """One query row `(a, b)` of the given family."""
    a = 10.0 ** rng.uniform(-1, 1) * rng.normal(size=n)
    noise = rng.normal(size=n)
    table = {
        "generic": lambda: (a, noise),
        "a_near_b": lambda: (a, a + 1e-4 * noise),
        "a_near_minus_b": lambda: (a, -a + 1e-4 * noise),
        "a_equals_b": lambda: (a, a),
        "a_equals_minus_b": lambda: (a, -a),
        "a_small": lambda: (1e-6 * a, noise),
        "b_zero": lambda: (a, 0 * a),
        "both_zero": lambda: (0 * a, 0 * a),
    }
    return table[mode]()


def _query(seed, dtype, batch, n, weighted):
    """A batch of queries, each row of a random family and offset, one weight per row."""
    rng = np.random.default_rng(seed)
    rows = [_row(MODES[rng.integers(len(MODES))], rng, n) for _ in range(int(np.prod(batch)))]
    a = np.array([r[0] for r in rows]).reshape(batch + (n,))
    b = np.array([r[1] for r in rows]).reshape(batch + (n,))
    offset = np.array(OFFSETS)[rng.integers(len(OFFSETS), size=batch)]
    z = (a * b).sum(-1) + offset * rng.normal(size=batch)
    w = rng.uniform(0.2, 30.0, size=batch) if weighted else np.ones(batch)
    return tuple(np.asarray(x, dtype) for x in (a, b, z, w))


def _eps(dtype):
    return float(np.finfo(dtype).eps)


def _scale2(a, b, z, w, a2, b2, z2):
    """Squared size of the query and answer: the cost's rounding floor is eps times this."""
    sq = lambda x: (np.asarray(x, np.float64) ** 2).sum(-1)  # noqa: E731
    w = np.asarray(w, np.float64)
    return 1e-30 + sq(a) + sq(b) + sq(a2) + sq(b2) + w * (np.float64(z) ** 2 + np.float64(z2) ** 2)


def _candidates(a, b, z, w, count=64, seed=0):
    """Least cost of random points on the graph near the query and near the twin's answer."""
    rng = np.random.default_rng(seed)
    a, b = np.float64(a), np.float64(b)
    a_t, b_t, _ = ref.project_dot(a, b, z, w)
    best = np.full(np.shape(z), np.inf)
    for i in range(count):
        base_a, base_b = (a, b) if i % 2 else (a_t, b_t)
        step = 10.0 ** rng.uniform(-4, 1)
        ca = base_a + step * rng.normal(size=a.shape)
        cb = base_b + step * rng.normal(size=b.shape)
        best = np.minimum(best, ref.dot_cost(a, b, z, ca, cb, (ca * cb).sum(-1), w))
    return best


def _check_projection(a, b, z, w, out):
    a2, b2, z2 = (np.asarray(o) for o in out)
    dtype, n = a.dtype, a.shape[-1]
    assert a2.dtype == b2.dtype == z2.dtype == dtype
    assert a2.shape == a.shape and b2.shape == b.shape and z2.shape == z.shape
    assert np.all(np.isfinite(a2)) and np.all(np.isfinite(b2)) and np.all(np.isfinite(z2))
    eps = _eps(dtype)
    # on the graph
    sq = lambda x: (np.float64(x) ** 2).sum(-1)  # noqa: E731
    gap = np.abs(np.float64(z2) - (np.float64(a2) * np.float64(b2)).sum(-1))
    assert np.all(gap <= 4 * (n + 4) * eps * (sq(a2) + sq(b2)) + 1e-30), gap
    # no farther than brute force, random candidates and the twin; and the twin no farther
    cost = ref.dot_cost(a, b, z, a2, b2, z2, w)
    tol = 64 * (n + 4) * eps * _scale2(a, b, z, w, a2, b2, z2)
    twin = ref.dot_cost(a, b, z, *ref.project_dot(a, b, z, w), w=w)
    assert np.all(cost <= ref.dot_bruteforce(a, b, z, w) + tol)
    assert np.all(cost <= _candidates(a, b, z, w) + tol)
    assert np.all(np.abs(cost - twin) <= tol), (cost, twin)


# random queries of 16 constraints: seed, dtype, length n, weighted or not
RANDOM_QUERIES = lambda test: settings(max_examples=40, deadline=None)(given(  # noqa: E731
    seed=st.integers(0, 2**32 - 1),
    dtype=st.sampled_from(DTYPES),
    n=st.sampled_from((1, 5)),
    weighted=st.booleans(),
)(test))


@RANDOM_QUERIES
def test_dot_is_the_global_minimiser(seed, dtype, n, weighted):
    a, b, z, w = _query(seed, dtype, (16,), n, weighted)
    _check_projection(a, b, z, w, _dot(a, b, z, w))


@pytest.mark.parametrize("batch,dtype", zip(BATCHES, (np.float64, np.float32, np.float64)))
def test_dot_batch_shapes(batch, dtype):
    for seed in range(3):
        a, b, z, w = _query(seed, dtype, batch, 4, weighted=True)
        _check_projection(a, b, z, w, _dot(a, b, z, w))


@RANDOM_QUERIES
def test_dot_twice_changes_nothing(seed, dtype, n, weighted):
    a, b, z, w = _query(seed, dtype, (16,), n, weighted)
    once = [np.asarray(o) for o in _dot(a, b, z, w)]
    twice = [np.asarray(o) for o in _dot(*once, w)]
    size = 1 + max(np.abs(np.float64(o)).max() for o in once) ** 2
    for x1, x2 in zip(once, twice):
        assert np.all(np.abs(np.float64(x2) - np.float64(x1)) <= 64 * _eps(dtype) * size)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    dtype=st.sampled_from(DTYPES),
    weighted=st.booleans(),
)
def test_mul_is_dot_with_one_entry(seed, dtype, weighted):
    a, b, z, w = _query(seed, dtype, (4, 4), 1, weighted)
    out = _mul(a[..., 0], b[..., 0], z, w)
    _check_projection(a, b, z, w, [out[0][..., None], out[1][..., None], out[2]])
    twin = ref.project_mul(a[..., 0], b[..., 0], z, w)
    np.testing.assert_allclose(ref.dot_cost(a[..., 0:1], b[..., 0:1], z, out[0][..., None],
                                            out[1][..., None], out[2], w),
                               ref.dot_cost(a[..., 0:1], b[..., 0:1], z, twin[0][..., None],
                                            twin[1][..., None], twin[2], w),
                               rtol=1e-4 if dtype == np.float32 else 1e-9, atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_generic_points_match_the_twin(dtype):
    """Away from the measure-zero set of ties the minimiser is unique: points agree."""
    rng = np.random.default_rng(7)
    a, b = rng.normal(size=(2, 200, 8))
    z = (a * b).sum(-1) + 10.0 ** rng.uniform(-2, 4, size=200) * rng.choice([-1, 1], 200)
    w = rng.uniform(0.5, 10, size=200)
    a, b, z, w = (np.asarray(x, dtype) for x in (a, b, z, w))
    out, twin = _dot(a, b, z, w), ref.project_dot(a, b, z, w)
    tol = 1e-4 if dtype == np.float32 else 1e-10
    for o, t in zip(out, twin):
        np.testing.assert_allclose(np.float64(o), t, rtol=tol, atol=tol * np.abs(t).max())


def test_degenerate_cases_reach_the_sphere_of_minimisers():
    # a = b = 0 and z = 5: a' = b' with |a'|^2 = z - 1/w = 4, along the equal-entries vector
    a2, b2, z2 = _dot(np.zeros(4), np.zeros(4), np.float64(5.0))
    np.testing.assert_allclose(a2, np.full(4, 1.0))
    np.testing.assert_allclose(b2, np.full(4, 1.0))
    np.testing.assert_allclose(z2, 4.0)
    # a = -b, z above the threshold 1/w - V/4: a' - b' = a, |a' + b'|^2 = 4 (z + V/4 - 1/w)
    a = np.array([1.0, 2.0])
    a2, b2, z2 = _dot(a, -a, np.float64(5.0), 2.0)
    np.testing.assert_allclose(a2 - b2, a)
    np.testing.assert_allclose(((a2 + b2) ** 2).sum(), 4 * (5 + 5 / 4 - 0.5))
    np.testing.assert_allclose(z2, 5 - 0.5)
    # a = b, z below U/4 - 1/w: a' + b' = a, a' - b' on a sphere; float32 stays finite
    a32 = np.array([3.0, 0.0, 4.0], np.float32)
    a2, b2, z2 = _dot(a32, a32, np.float32(-50.0))
    np.testing.assert_allclose(a2 + b2, a32, rtol=1e-6)
    np.testing.assert_allclose(z2, -49.0, rtol=1e-6)
    assert abs(float(z2) - float(np.dot(np.float64(a2), np.float64(b2)))) < 1e-4


@pytest.mark.parametrize("dtype", DTYPES)
def test_t_near_plus_and_minus_one(dtype):
    """Roots within 1e-6 of t = +-1 (tiny U or V, large |z|) stay accurate in float32."""
    rng = np.random.default_rng(3)
    a = rng.normal(size=(50, 6))
    b = np.where(np.arange(50)[:, None] < 25, -a, a) + 1e-5 * rng.normal(size=(50, 6))
    z = np.where(np.arange(50) < 25, 1.0, -1.0) * 10.0 ** rng.uniform(0, 4, size=50)
    a, b, z = (np.asarray(x, dtype) for x in (a, b, z))
    _check_projection(a, b, z, 1.0, _dot(a, b, z))


def test_compat_reproduces_the_pjax_rule_and_misses_for_large_offsets():
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(2, 400, 8))
    for offset, expect_worse in ((0.1, False), (100.0, True)):
        z = (a * b).sum(-1) + offset * rng.normal(size=400)
        compat, pjax = _dot(a, b, z, compat=True), ref.project_dot_compat(a, b, z)
        small = np.isfinite(pjax[2]) & (np.abs(pjax[2]) < 1e6)
        for o, t in zip(compat, pjax):
            np.testing.assert_allclose(np.asarray(o)[small], t[small], rtol=1e-8, atol=1e-8)
        c_compat = ref.dot_cost(a, b, z, *compat)
        c_exact = ref.dot_cost(a, b, z, *_dot(a, b, z))
        worse = np.mean(~(c_compat <= c_exact * (1 + 1e-6)))
        assert (worse > 0.5) if expect_worse else (worse == 0.0), worse


@pytest.mark.parametrize("dtype", DTYPES)
def test_weights_broadcast_and_dtype_is_kept(dtype):
    rng = np.random.default_rng(2)
    a, b = (np.asarray(x, dtype) for x in rng.normal(size=(2, 2, 3, 5)))
    z = np.asarray(rng.normal(size=(2, 3)), dtype)
    w = np.asarray([[1.0], [4.0]], dtype)  # one weight per row, broadcast over the columns
    out = _dot(a, b, z, w)
    assert all(o.dtype == dtype for o in out)
    rows = [_dot(a[i], b[i], z[i], float(w[i, 0])) for i in range(2)]
    for k in range(3):
        # the batch iterates until all its rows converge: agreement to solver tolerance
        np.testing.assert_allclose(out[k], np.stack([r[k] for r in rows]), rtol=2e-5, atol=1e-6)
    # a larger weight pulls the output closer to z
    heavy = _dot(a, b, z, 100.0)[2]
    light = _dot(a, b, z, 0.01)[2]
    assert np.all(np.abs(heavy - z) <= np.abs(light - z) + 1e-6)


def test_dot_writes_only_its_outputs_at_full_size():
    """The (..., n) arrays the compiled operator writes are a' and b' alone: the sums U, V
    read a and b, not a written-out a + b and a - b (XLA shares those with the output pass
    when they are the same expressions, and a state-sized copy then costs a pass each way)."""
    shape = (8, 16, 784)
    written = written_arrays(project_dot, shape, shape, shape[:-1], size=np.prod(shape))
    assert len(written) == 2, written


# --- the blocked fast solver of project_mul and its per-block fallback ----------------------

from projc.backends.jax.projections import dot as dot_module  # noqa: E402


def _mul_queries(seed, dtype, size):
    """`size` mul queries of the adversarial families, offsets up to 1e4, weighted."""
    a, b, z, w = _query(seed, dtype, (size,), 1, weighted=True)
    return a[:, 0], b[:, 0], z, w


def _check_mul(a, b, z, w, out):
    _check_projection(a[:, None], b[:, None], z, w, [out[0][:, None], out[1][:, None], out[2]])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("steps, retry", [(0, 0), (3, 3), (3, None), (None, None)])
def test_mul_blocks_with_forced_fallback(dtype, steps, retry, monkeypatch):
    """Few Newton steps leave elements unsettled: their blocks retry with more steps, then
    take the exact solver.

    (0, 0): every block falls back to the exact solver; (3, 3): some do; (3, shipped): the
    retry settles some blocks; the shipped counts last. Several blocks and a padded last one
    (block size 64 for 300 queries).
    """
    monkeypatch.setattr(dot_module, "_MUL_BLOCK", 64)
    if steps is not None:
        monkeypatch.setattr(dot_module, "_MUL_STEPS", steps)
    if retry is not None:
        monkeypatch.setattr(dot_module, "_MUL_RETRY_STEPS", retry)
    a, b, z, w = _mul_queries(11, dtype, 300)
    out = jax.jit(lambda *x: project_mul(*x))(a, b, z, w)  # a fresh trace sees the patch
    _check_mul(a, b, z, w, out)


def test_mul_slow_queries_settle_on_the_retry():
    """Queries with a ~ -b and z > 0 (two of 3.2M random ones) are not settled after
    `_MUL_STEPS` but are after `_MUL_RETRY_STEPS`, and the operator's point is the twin's."""
    a = np.array([0.5591437816619873, -0.880287230014801], np.float32)
    b = np.array([-0.5577410459518433, 0.88224196434021], np.float32)
    z = np.array([0.9225337505340576, 0.8059759140014648], np.float32)
    w = np.ones(2, np.float32)
    for steps, settled in ((dot_module._MUL_STEPS, False), (dot_module._MUL_RETRY_STEPS, True)):
        _, ok = jax.jit(lambda *x, n=steps: dot_module._mul_fast(*x, n))(a, b, z, w)
        assert np.all(np.asarray(ok) == settled)
    out = _mul(a, b, z, w)
    _check_mul(a, b, z, w, out)
    for o, t in zip(out, ref.project_mul(a, b, z, w)):
        np.testing.assert_allclose(np.float64(o), t, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_mul_fast_path_settles_and_matches_the_twin(dtype):
    """Generic queries settle on the fast path, and its points are the twin's."""
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(2, 4096))
    z = a * b + 10.0 ** rng.uniform(-2, 3, size=4096) * rng.choice([-1, 1], 4096)
    w = rng.uniform(0.5, 10, size=4096)
    a, b, z, w = (np.asarray(x, dtype) for x in (a, b, z, w))
    out, ok = jax.jit(lambda *x: dot_module._mul_fast(*x, dot_module._MUL_STEPS))(a, b, z, 1 / w)
    assert np.all(np.asarray(ok))
    twin = ref.project_mul(a, b, z, w)
    tol = 1e-5 if dtype == np.float32 else 1e-11
    for o, t in zip(out, twin):
        np.testing.assert_allclose(np.float64(o), t, rtol=tol, atol=tol * np.abs(t).max())


@pytest.mark.parametrize("dtype", DTYPES)
def test_mul_fast_path_flags_what_it_cannot_do(dtype):
    """Roots beyond the fast path's reach (a = +-b on the sphere of minimisers) are flagged,
    and the operator still returns the exact solver's limit point."""
    a = np.array([1.0, 2.0, 0.0, 1.0], dtype)
    b = np.array([1.0, -2.0, 0.0, 1.0], dtype)
    z = np.array([-50.0, 50.0, 5.0, 1.0], dtype)  # the last one is an ordinary query
    w = np.ones(4, dtype)
    _, ok = jax.jit(lambda *x: dot_module._mul_fast(*x, dot_module._MUL_STEPS))(a, b, z, w)
    assert list(np.asarray(ok)) == [False, False, False, True]
    out = _mul(a, b, z, w)
    _check_mul(a, b, z, w, out)
    want = _dot(a[:, None], b[:, None], z, w)
    for o, t in zip(out, (want[0][:, 0], want[1][:, 0], want[2])):
        np.testing.assert_allclose(o, t, rtol=1e-6)


def test_mul_shapes_broadcast_weights_and_empty():
    rng = np.random.default_rng(6)
    a, b, z = (np.asarray(x, np.float32) for x in rng.normal(size=(3, 2, 3)))
    w = np.asarray([[1.0], [4.0]], np.float32)
    out = _mul(a, b, z, w)
    assert all(o.shape == (2, 3) and o.dtype == np.float32 for o in out)
    flat = _mul(a.ravel(), b.ravel(), z.ravel(), np.broadcast_to(w, (2, 3)).ravel())
    for o, f in zip(out, flat):
        np.testing.assert_allclose(np.asarray(o).ravel(), f, rtol=1e-6)
    empty = _mul(np.zeros((0, 3)), np.zeros((0, 3)), np.zeros((0, 3)))
    assert all(o.shape == (0, 3) for o in empty)


@pytest.mark.parametrize("dtype", DTYPES)
def test_mul_queries_on_the_graph_stay_put(dtype):
    """z = a b exactly: the root is t = 0 and either orientation of the fast solver applies;
    it must pick one consistently (a regression: FMA contraction made copies disagree)."""
    rng = np.random.default_rng(8)
    a, b = (np.asarray(x, dtype) for x in rng.normal(size=(2, 5000)))
    z = a * b
    out = _mul(a, b, z, np.ones_like(a))
    _check_mul(a, b, z, np.ones_like(a), out)
    for o, want in zip(out, (a, b, z)):
        np.testing.assert_allclose(o, want, rtol=4 * _eps(dtype), atol=4 * _eps(dtype))
