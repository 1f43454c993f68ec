"""Tests of the output constraints: cross-entropy prox, margin box and squared-error prox."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from projc.backends.jax.projections.losses import prox_cross_entropy, project_margin, prox_mse
from projc.backends.reference import projections_act as ref

BATCH, CLASSES = 6, 10
SETTINGS = settings(max_examples=30, deadline=None)


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _logits(draw, dtype, scale=None):
    scale = scale or draw(st.sampled_from([1.0, 3.0, 10.0, 30.0]))
    unit = st.floats(-1, 1, width=32, allow_subnormal=False)
    v = np.array(draw(st.lists(unit, min_size=BATCH * CLASSES, max_size=BATCH * CLASSES)))
    return (v.reshape(BATCH, CLASSES) * scale).astype(dtype)


def _labels(draw, dtype, soft):
    if soft:  # probabilities
        raw = np.array(draw(st.lists(st.floats(0, 1), min_size=BATCH * CLASSES,
                                     max_size=BATCH * CLASSES))).reshape(BATCH, CLASSES) + 1e-3
        return (raw / raw.sum(-1, keepdims=True)).astype(dtype)
    cls = draw(st.lists(st.integers(0, CLASSES - 1), min_size=BATCH, max_size=BATCH))
    return np.eye(CLASSES, dtype=dtype)[cls]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@settings(max_examples=25, deadline=None)
@given(data=st.data(), soft=st.booleans(), lam=st.sampled_from([1.0, 5.0, 20.0]))
def test_cross_entropy_prox_is_optimal(dtype, data, soft, lam):
    v, y = _logits(data.draw, dtype), _labels(data.draw, dtype, soft)
    x = np.asarray(prox_cross_entropy(v, y, lam))
    assert x.dtype == dtype and x.shape == v.shape
    xf, vf, yf = (a.astype(float) for a in (x, v, y))
    # Optimality: x - v + lam (sum(y) softmax(x) - y) = 0, to the dtype's accuracy.
    resid = xf - vf + lam * (yf.sum(-1, keepdims=True) * _softmax(xf) - yf)
    tol = (16 if dtype == np.float32 else 1e5) * np.finfo(dtype).eps * lam
    assert np.all(np.abs(resid) <= tol * (1 + np.abs(vf).max(-1, keepdims=True)))
    # No random perturbation does better, and the float64 twin agrees.
    f = ref.ce_objective(xf, vf, yf, lam)
    rng = np.random.default_rng(0)
    for step in (1e-1, 1e-2):
        pert = xf[None] + step * rng.normal(size=(200,) + x.shape)
        assert np.all(f <= ref.ce_objective(pert, vf, yf, lam).min(0) + 1e-9 * (1 + np.abs(f)))
    np.testing.assert_allclose(xf, ref.prox_cross_entropy(vf, yf, lam),
                               atol=tol * (1 + np.abs(vf).max()))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cross_entropy_confident_wrong_logits(dtype):
    # |v| ~ 30 with the label on the least likely class: the hard case for fixed points.
    rng = np.random.default_rng(1)
    v = (rng.normal(size=(64, CLASSES)) * 30).astype(dtype)
    y = np.eye(CLASSES, dtype=dtype)[np.argmin(v, axis=-1)]
    for lam in (1.0, 5.0, 20.0):
        x = np.asarray(prox_cross_entropy(v, y, lam)).astype(float)
        resid = x - v + lam * (_softmax(x) - y)
        assert np.abs(resid).max() <= 16 * np.finfo(dtype).eps * lam * (1 + np.abs(v).max())


def test_cross_entropy_compat_is_pjax_fixed_point():
    rng = np.random.default_rng(2)
    v = rng.normal(size=(50, CLASSES)) * 3
    y = np.eye(CLASSES)[rng.integers(0, CLASSES, 50)]
    got = np.asarray(prox_cross_entropy(v, y, 5.0, compat=True))
    np.testing.assert_allclose(got, ref.prox_cross_entropy(v, y, 5.0, compat=True), rtol=1e-12)
    # At lam = 5 the fixed point does not contract: it misses the prox by a lot.
    exact = np.asarray(prox_cross_entropy(v, y, 5.0))
    assert np.median(np.linalg.norm(got - exact, axis=-1) / np.linalg.norm(exact, axis=-1)) > 0.1
    # At lam = 1 it contracts (Lipschitz <= 1/2) and agrees to about 2^-10.
    got1 = np.asarray(prox_cross_entropy(v, y, 1.0, compat=True))
    np.testing.assert_allclose(got1, np.asarray(prox_cross_entropy(v, y, 1.0)), atol=1e-2)


def test_cross_entropy_broadcasts_labels_and_batch_shapes():
    rng = np.random.default_rng(3)
    v = rng.normal(size=(2, 3, 4)).astype(np.float32)
    y = np.eye(4, dtype=np.float32)[1]
    x = np.asarray(prox_cross_entropy(v, y, 5.0))
    assert x.shape == v.shape and x.dtype == np.float32
    np.testing.assert_allclose(x.reshape(6, 4), np.asarray(
        prox_cross_entropy(v.reshape(6, 4), np.tile(y, (6, 1)), 5.0)), rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@SETTINGS
@given(data=st.data())
def test_margin_is_the_box_projection(dtype, data):
    v, y = _logits(data.draw, dtype), _labels(data.draw, dtype, soft=False)
    x = np.asarray(project_margin(v, y))
    assert x.dtype == dtype
    true = y > 0
    assert np.all(x[true] >= 1) and np.all(x[~true] <= 0)
    np.testing.assert_array_equal(np.asarray(project_margin(x, y)), x)  # idempotent
    np.testing.assert_array_equal(x, ref.project_margin(v, y).astype(dtype))
    # The nearest point of the box: any other box point is at least as far.
    rng = np.random.default_rng(0)
    box = np.where(true, 1 + rng.exponential(size=(100,) + v.shape),
                   -rng.exponential(size=(100,) + v.shape))
    box = np.where(rng.uniform(size=box.shape) < 0.5, np.where(true, 1.0, 0.0), box)
    d = np.linalg.norm(x.astype(float) - v, axis=-1)
    assert np.all(d <= np.linalg.norm(box - v, axis=-1).min(0) + 1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@SETTINGS
@given(data=st.data(), lam=st.sampled_from([0.1, 1.0, 7.5]))
def test_mse_prox(dtype, data, lam):
    v, y = _logits(data.draw, dtype), _logits(data.draw, dtype)
    x = np.asarray(prox_mse(v, y, lam))
    assert x.dtype == dtype
    # Optimality of (lam/2)|x - y|^2 + |x - v|^2/2: (x - v) + lam (x - y) = 0.
    resid = (x - v) + lam * (x - y)
    assert np.abs(resid).max() <= 8 * np.finfo(dtype).eps * (1 + lam) * (1 + np.abs(v).max()
                                                                          + np.abs(y).max())
    np.testing.assert_allclose(x, ref.prox_mse(v, y, lam), rtol=8 * np.finfo(dtype).eps,
                               atol=8 * np.finfo(dtype).eps * (1 + np.abs(v).max()))



def test_cross_entropy_line_search_picks_the_first_armijo_step():
    """The step sizes are tried one at a time while any row still searches; each row must get
    the rule's answer as if all eight had been tried at once: the first step size with
    enough decrease, else the best decrease, else no step."""
    import jax
    import jax.numpy as jnp

    from projc.backends.jax.projections import losses

    rng = np.random.default_rng(4)
    rows = 64
    x = rng.normal(size=(rows, CLASSES)) * rng.choice([0.3, 3.0, 30.0], size=(rows, 1))
    v = x + rng.normal(size=x.shape) * rng.choice([0.1, 10.0, 100.0], size=(rows, 1))
    y = np.eye(CLASSES)[rng.integers(0, CLASSES, rows)]
    sy, lam = y.sum(-1, keepdims=True), 20.0
    logp = np.asarray(jax.nn.log_softmax(x, axis=-1))
    p = np.exp(logp)
    d, grad = (np.asarray(a) for a in losses._newton_direction(x, v, y, sy, lam, p))
    d = d * rng.choice([1.0, 1.0, 40.0], size=(rows, 1))  # some too long: halvings needed
    gd, dd = (grad * d).sum(-1, keepdims=True), (d * d).sum(-1, keepdims=True)
    step = np.asarray(losses._line_search(p, logp, d, gd, dd, sy, lam, np.ones_like(gd, bool)))[:, 0]
    alphas = 0.5 ** np.arange(losses._HALVINGS)
    change = np.concatenate([np.asarray(losses._objective_change(jnp.float64(al), p, logp, d, gd,
                                                                 dd, sy, lam)) for al in alphas], -1)
    ok = change <= losses._ARMIJO * alphas * gd
    first = np.where(ok.any(-1), alphas[np.argmax(ok, -1)], np.nan)
    best = alphas[np.argmin(change, -1)]
    want = np.where(ok.any(-1), first, np.where(change.min(-1) <= 0, best, 0.0))
    assert 0 < np.sum(want < 1) < rows  # both kinds of rows are in the batch
    np.testing.assert_array_equal(step, want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cross_entropy_line_search_is_per_row(dtype):
    """The step sizes are tried while any row still searches: rows that accepted a step keep
    it, so a batch gives each row the answer it gets alone (confident wrong rows need
    halvings and the far form of the objective change; mild rows take full steps)."""
    rng = np.random.default_rng(4)
    v = rng.normal(size=(8, CLASSES)) * np.array([0.3, 30.0] * 4)[:, None]
    y = np.eye(CLASSES)[np.argmin(v, axis=-1)]
    v, y = v.astype(dtype), y.astype(dtype)
    batch = np.asarray(prox_cross_entropy(v, y, 20.0))
    rows = np.stack([np.asarray(prox_cross_entropy(v[i:i + 1], y[i:i + 1], 20.0))[0]
                     for i in range(8)])
    np.testing.assert_allclose(batch, rows, rtol=8 * np.finfo(dtype).eps, atol=1e-30)
    np.testing.assert_allclose(batch, ref.prox_cross_entropy(v.astype(float), y.astype(float),
                                                             20.0), rtol=0,
                               atol=1e3 * np.finfo(dtype).eps * 30 * 20)
