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



@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cross_entropy_rows_do_not_depend_on_their_batch(dtype):
    """The Newton loop runs while any row is unsettled; settled rows stay as they are, so a
    batch gives each row the answer it gets alone (confident wrong rows take more steps than
    mild ones)."""
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


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_wright_omega_solves_its_equation_everywhere(dtype):
    """`w + log w = z` to rounding from far below zero (where `w = e^z`, down to underflow)
    to far above."""
    import jax.numpy as jnp

    from projc.backends.jax.projections.losses import wright_omega

    z = np.concatenate([-np.logspace(-6, 3, 400), [0.0], np.logspace(-6, 6, 400)]).astype(dtype)
    w = np.asarray(wright_omega(jnp.asarray(z))).astype(float)
    assert np.all(w >= 0)
    eps = np.finfo(dtype).eps
    live = w > np.finfo(dtype).tiny * 1e3
    np.testing.assert_allclose((w + np.log(np.where(live, w, 1)))[live], z[live].astype(float),
                               rtol=8 * eps, atol=8 * eps)
    # below the normal range the answer is e^z, flushed to zero where that underflows
    np.testing.assert_allclose(w[~live], np.exp(z[~live].astype(float)), rtol=1e-3, atol=1e3 * np.finfo(dtype).tiny)


def test_wright_omega_in_float32_is_the_float64_value_rounded():
    """Two fourth-order steps in float32: within a few ulp of the float64 value everywhere."""
    import jax.numpy as jnp

    from projc.backends.jax.projections.losses import wright_omega

    z = np.concatenate([np.linspace(-80, 80, 200_001), np.geomspace(1e-6, 1e18, 20_000)]).astype(np.float32)
    got = np.asarray(wright_omega(jnp.asarray(z))).astype(float)
    want = np.asarray(wright_omega(jnp.asarray(z.astype(np.float64))))
    assert np.max(np.abs(got - want) / want) < 16 * np.finfo(np.float32).eps


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cross_entropy_settles_in_few_newton_steps_for_extreme_queries(dtype, monkeypatch):
    """Monotone Newton from its start settles every row of extreme batches (loss weights 1e-3
    to 1e4, logits up to 1e5, soft and one-hot labels) within 10 steps: capping the loop at
    10 changes no output bit. The results are optimal to the dtype's accuracy."""
    import jax

    from projc.backends.jax.projections import losses

    rng = np.random.default_rng(7)
    cases = []
    for scale in (0.01, 1.0, 30.0, 1e3, 1e5):
        v = (rng.normal(size=(128, CLASSES)) * scale).astype(dtype)
        hard = np.eye(CLASSES, dtype=dtype)[np.argmin(v, axis=-1)]
        soft = rng.dirichlet(np.ones(CLASSES), size=128).astype(dtype)
        cases += [(v, y, lam) for y in (hard, soft) for lam in (1e-3, 1.0, 20.0, 1e4)]

    def run():
        fn = jax.jit(lambda v, y, lam: losses._prox_ce(v, y, lam, False))
        return [np.asarray(fn(v, y, lam)) for v, y, lam in cases]

    full = run()
    monkeypatch.setattr(losses, "_CE_STEPS", 10)
    capped = run()
    for (v, y, lam), x, x10 in zip(cases, full, capped):
        np.testing.assert_array_equal(x10, x)
        xf, vf, yf = (a.astype(float) for a in (x, v, y))
        resid = xf - vf + lam * (yf.sum(-1, keepdims=True) * _softmax(xf) - yf)
        # x is found to the rounding of u = v + lam y (a shift of v by eps |u|, which moves the
        # prox by as much), and lam softmax(x) moves by lam |dx| with x
        scale = (1 + lam) * (1 + np.abs(vf + lam * yf).max(-1, keepdims=True))
        assert np.all(np.abs(resid) <= 16 * np.finfo(dtype).eps * scale)
        if dtype == np.float64 and max(lam, np.abs(vf).max()) <= 1e3:  # the twin's damped Newton
            np.testing.assert_allclose(xf, ref.prox_cross_entropy(vf, yf, lam), rtol=0,
                                       atol=1e-9 * scale.max())


def test_cross_entropy_unlabelled_rows_are_left_alone():
    """A row whose labels sum to 0 has no loss: its prox is the query itself."""
    v = np.random.default_rng(2).normal(size=(3, CLASSES)) * 5
    y = np.zeros_like(v)
    y[1, 4] = 1
    x = np.asarray(prox_cross_entropy(v, y, 5.0))
    np.testing.assert_array_equal(x[[0, 2]], v[[0, 2]])
    assert np.abs(x[1] - v[1]).max() > 0.1


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cross_entropy_stacked_and_transposed_answers_agree(dtype, monkeypatch):
    """For many rows the class sums are products with ones and (for few classes) the answer
    returns to the rows layout as a stack of its class rows; otherwise reductions and a
    transpose. Forcing either on the same queries (10 and 40 classes, mild and confident rows,
    soft labels) gives the same prox to a few ulp."""
    import jax

    from projc.backends.jax.projections import losses

    rng = np.random.default_rng(11)
    for classes in (10, 40):
        v = (rng.normal(size=(96, classes)) * np.repeat([0.3, 3.0, 30.0], 32)[:, None]).astype(dtype)
        y = np.eye(classes, dtype=dtype)[np.argmin(v, axis=-1)]
        y[::7] = rng.dirichlet(np.ones(classes), size=len(y[::7]))
        got = {}
        for stack_rows in (0, 10**9):
            monkeypatch.setattr(losses, "_MANY_ROWS", stack_rows)
            monkeypatch.setattr(losses, "_STACK_CLASSES", 64)
            got[stack_rows] = np.asarray(jax.jit(lambda v, y: losses._prox_ce(v, y, 20.0, False))(v, y))
        assert got[0].shape == v.shape
        scale = 1 + np.abs(v).max() + 20.0
        np.testing.assert_allclose(got[0], got[10**9], rtol=0, atol=8 * np.finfo(dtype).eps * scale)
        resid = got[0] - v + 20.0 * (y.sum(-1, keepdims=True) * _softmax(got[0].astype(float)) - y)
        assert np.abs(resid).max() <= 16 * np.finfo(dtype).eps * 20.0 * scale
