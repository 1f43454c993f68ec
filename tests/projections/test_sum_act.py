"""Property tests of the sum_act projection against its NumPy twin and brute force."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from projc.backends.jax.projections import blocks
from projc.backends.jax.projections.sum_act import (
    ACTIVATIONS,
    activation_forward,
    project_sum_act,
)
from projc.backends.reference import least_cost
from projc.backends.reference import projections_act as ref

ACTS = {
    "relu": {},
    "leaky_relu": {"alpha": 0.1},
    "clip": {"lo": -1.0, "hi": 2.0},
    "identity": {},
    "sigmoid": {},
    "tanh": {},
    "softplus": {},
    "sign": {},
    "step": {},
    "quantize": {"levels": 4, "scale": 1.5},
}
STEP_FUNCTIONS = {"sign", "step", "quantize"}
BATCH = 8
F32, F64 = np.float32, np.float64
# (dtype, k) pairs per activation: each k with each dtype somewhere, and few compilations (the
# smooth solver takes seconds to compile on a busy CPU).
CASES = [(act, dtype, k) for act, pairs in {
    "relu": [(F64, 1), (F64, 3), (F32, 2)],
    "leaky_relu": [(F64, 2), (F32, 3)],
    "clip": [(F64, 3), (F32, 1)],
    "identity": [(F64, 1), (F32, 2)],
    "sigmoid": [(F64, 3), (F32, 1)],
    "tanh": [(F64, 1), (F32, 2)],
    "softplus": [(F64, 2), (F32, 3)],
    "sign": [(F64, 1), (F64, 2), (F32, 3)],
    "step": [(F64, 3), (F32, 1)],
    "quantize": [(F64, 2), (F32, 3)],
}.items() for dtype, k in pairs]
SETTINGS = settings(max_examples=20, deadline=None)


def _queries(draw, dtype, k):
    """Random (x, y, w) of a batch of constraints, at mixed scales like DR's reflections."""
    scale = draw(st.sampled_from([0.1, 1.0, 10.0, 100.0]))
    unit = st.floats(-1, 1, width=32, allow_subnormal=False)
    x = np.array(draw(st.lists(unit, min_size=BATCH * k, max_size=BATCH * k)))
    x = x.reshape(BATCH, k) * scale
    near_range = draw(st.lists(st.sampled_from([-1.0, 0.0, 1e-4, 0.5, 0.9999, 1.0, 1.5]),
                               min_size=BATCH, max_size=BATCH))
    y = np.array(draw(st.lists(unit, min_size=BATCH, max_size=BATCH))) * scale
    y = np.where(draw(st.booleans()), near_range, y)
    w = np.array(draw(st.lists(st.floats(0.05, 20), min_size=BATCH, max_size=BATCH)))
    return x.astype(dtype), y.astype(dtype), w.astype(dtype)


def _distance(x, y, x2, y2, w):
    return np.sqrt(ref.sum_act_cost(x, y, x2, y2, w))


def _brute_force(x, y, w, act, params, rng):
    """The least distance over random candidates around s and a grid in s (the 1-D problem)."""
    k, s = x.shape[-1], x.astype(float).sum(-1)
    radius = np.sqrt(k * w) * np.abs(ref.activation_forward(act, s, **params) - y) + 1
    t = s[:, None] + radius[:, None] * np.concatenate(
        [rng.uniform(-1, 1, (len(s), 2000)), np.linspace(-1, 1, 4001)[None].repeat(len(s), 0)],
        axis=1)
    f = ref.activation_forward(act, t, **params)
    cost = (t - s[:, None]) ** 2 / k + w[:, None] * (f - y[:, None]) ** 2
    return np.sqrt(cost.min(axis=1))


def _check_on_graph(act, params, x2, y2, dtype, x=None):
    s2 = x2.astype(float).sum(-1)
    # x2 = x + shift: re-summing it rounds at the scale of the query's inputs, not only of x2's
    mag = np.abs(x2).sum(-1) + (0 if x is None else np.abs(np.asarray(x, float)).sum(-1))
    if act in STEP_FUNCTIONS:
        fwd = np.asarray(activation_forward(act, x2.sum(-1), **params))
        # Only sign's one-point cell {0} cannot survive the rounding of the re-sum (k > 1).
        zero_cell = (act == "sign") & (y2 == 0) & (np.abs(s2) < 1e-5 * (1 + np.abs(x2).sum(-1)))
        assert np.all((fwd == y2) | zero_cell)
    else:
        f = ref.activation_forward(act, s2, **params)
        eps = np.finfo(dtype).eps
        assert np.allclose(f, y2, rtol=8 * eps, atol=8 * eps * (1 + mag))


@pytest.mark.parametrize("act,dtype,k", CASES, ids=lambda c: getattr(c, "__name__", str(c)))
@SETTINGS
@given(data=st.data())
def test_projection_properties(act, dtype, k, data):
    params = ACTS[act]
    x, y, w = _queries(data.draw, dtype, k)
    x2, y2 = (np.asarray(a) for a in project_sum_act(x, y, act, w, **params))
    assert x2.dtype == dtype and y2.dtype == dtype and x2.shape == x.shape and y2.shape == y.shape
    _check_on_graph(act, params, x2, y2, dtype, x)
    atol = least_cost.tolerance(x, y, w, dtype)
    # Global optimality: no worse than the twin, random candidates and a dense grid in s.
    dist = _distance(x, y, x2, y2, w)
    rx, ry = ref.project_sum_act(x, y, act, w, **params)
    assert np.all(dist <= _distance(x, y, rx, ry, w) + atol)
    rng = np.random.default_rng(0)
    assert np.all(dist <= _brute_force(x, y, w, act, params, rng) + atol)
    # And the twin agrees: it is no better than the kernel either.
    assert np.all(_distance(x, y, rx, ry, w) <= dist + atol)
    # Projecting again changes nothing.
    x3, y3 = (np.asarray(a) for a in project_sum_act(x2, y2, act, w, **params))
    assert np.all(_distance(x2, y2, x3, y3, w) <= atol)


@pytest.mark.parametrize("act", ["relu", "quantize"])
def test_batch_shapes_and_scalar_weight(act):
    rng = np.random.default_rng(1)
    params = ACTS[act]
    x = rng.normal(size=(2, 3, 2)) * 3
    y = rng.normal(size=(2, 3))
    x2, y2 = project_sum_act(x, y, act, 2.5, **params)
    flat = project_sum_act(x.reshape(6, 2), y.reshape(6), act, np.full(6, 2.5), **params)
    np.testing.assert_allclose(np.asarray(x2).reshape(6, 2), flat[0], rtol=1e-12)
    np.testing.assert_allclose(np.asarray(y2).reshape(6), flat[1], rtol=1e-12)
    # y broadcasts over the batch, and the jitted function accepts traced weights.
    jitted = jax.jit(lambda x, w: project_sum_act(x, 0.5, act, w, **params))
    xb, yb = jitted(x, np.full((2, 3), 2.5))
    np.testing.assert_allclose(
        xb, project_sum_act(x, np.full((2, 3), 0.5), act, 2.5, **params)[0], rtol=1e-12)


def test_relu_branches_by_hand():
    # s = -1, y = -0.5, k = 1: staying put (cost y^2 = 0.25) beats moving to 0 (cost 1.25).
    x2, y2 = project_sum_act(np.array([[-1.0]]), np.array([-0.5]), "relu")
    np.testing.assert_allclose(x2, [[-1.0]])
    np.testing.assert_allclose(y2, [0.0])
    # Output weight w pulls s' towards y on the positive branch: s' = (s + k w y)/(1 + k w).
    x2, y2 = project_sum_act(np.array([[1.0, 1.0]]), np.array([4.0]), "relu", 3.0)
    np.testing.assert_allclose(y2, [(2 + 2 * 3 * 4) / (1 + 2 * 3)])
    np.testing.assert_allclose(x2, [[1 + (26 / 7 - 2) / 2] * 2])


def test_relu_compat_is_pjax():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(500, 2)) * 3
    y = rng.normal(size=500) * 3
    y[:20] = 0.0  # PJAX's branch rule tests y == 0
    x2, y2 = project_sum_act(x, y, "relu", 7.0, compat=True)
    rx, ry = ref.project_sum_act(x, y, "relu", 7.0, compat=True)
    np.testing.assert_allclose(x2, rx, atol=1e-12)
    np.testing.assert_allclose(y2, np.maximum(np.asarray(x2).sum(-1), 0))
    # Its wrong-variable branch test: s = -1, y = -0.5 moves to s' = 0 (cost 1.25, not 0.25).
    x2, _ = project_sum_act(np.array([[-1.0]]), np.array([-0.5]), "relu", compat=True)
    np.testing.assert_allclose(x2, [[0.0]])


def test_compat_other_activations_are_unweighted_exact():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(5, 2)), rng.normal(size=5)
    got = project_sum_act(x, y, "clip", 9.0, compat=True)
    want = project_sum_act(x, y, "clip", 1.0)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tie_rules(dtype):
    s = np.array([-1.0, -0.0, 0.0, 1e-30, 0.25, 0.5, 0.75], dtype)
    np.testing.assert_array_equal(activation_forward("step", s), [0, 1, 1, 1, 1, 1, 1])
    np.testing.assert_array_equal(activation_forward("sign", s), [-1, 0, 0, 1, 1, 1, 1])
    # Three levels on [-1, 1]: -1, 0, 1; the midpoints -0.5 and 0.5 round up.
    q = activation_forward("quantize", np.array([-0.5, 0.5, 0.4999, 2.0], dtype), levels=3)
    np.testing.assert_array_equal(q, [0, 1, 0, 1])
    np.testing.assert_array_equal(q, ref.activation_forward(
        "quantize", np.array([-0.5, 0.5, 0.4999, 2.0]), levels=3))
    # A query whose best level is 1 lands inside level 1's cell, and the forward agrees.
    x2, y2 = project_sum_act(np.array([[0.2]], dtype), np.array([1.0], dtype), "quantize",
                             levels=3)
    assert y2[0] == 1 and activation_forward("quantize", x2.sum(-1), levels=3)[0] == 1


def test_unknown_activation_and_parameters():
    with pytest.raises(ValueError, match="unknown activation 'gelu'"):
        project_sum_act(np.zeros((1, 1)), np.zeros(1), "gelu")
    with pytest.raises(TypeError, match="unknown"):
        project_sum_act(np.zeros((1, 1)), np.zeros(1), "relu", beta=2)
    with pytest.raises(ValueError, match="levels >= 2"):
        activation_forward("quantize", np.zeros(1), levels=1)
    assert set(ACTS) == set(ACTIVATIONS)


@pytest.mark.parametrize("act, params", [("relu", {}), ("tanh", {}), ("quantize", {"levels": 4, "scale": 1.0})])
@pytest.mark.parametrize("compat", [False, True])
def test_slot_layout_matches_stacked_layout(act, params, compat):
    """k separate arrays (the state's layout) give exactly the stacked-axis result."""
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=(5, 7, 3)).astype(np.float32) * 2)
    y = jnp.asarray(rng.normal(size=(5, 7)).astype(np.float32))
    x2, y2 = project_sum_act(x, y, act, 1.5, compat=compat, **params)
    xs2, ys2 = project_sum_act([x[..., i] for i in range(3)], y, act, 1.5, compat=compat, **params)
    assert isinstance(xs2, tuple) and len(xs2) == 3
    np.testing.assert_allclose(np.stack([np.asarray(v) for v in xs2], -1), np.asarray(x2), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(ys2), np.asarray(y2), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("act", ["tanh", "sigmoid"])
@pytest.mark.parametrize("dtype", [F32, F64])
def test_sigmoidal_extreme_queries(act, dtype):
    """Outputs far outside the range (|y| up to ~1e4) and weights from 1e-3 to 1e3, where the
    minimiser sits deep in the saturated tail or the cost has two local minima: the kernel is
    no worse than a dense grid refined by golden sections."""
    rng = np.random.default_rng(5)
    n, k = 300, 2
    scale = rng.choice([0.1, 1.0, 10.0, 1e2, 1e3, 1e4], size=n)
    s = rng.normal(size=n) * scale
    lo_y = -1.2 if act == "tanh" else -0.2
    y = np.where(rng.random(n) < 0.5, rng.uniform(lo_y, 1.2, n), rng.normal(size=n) * scale)
    w = np.exp(rng.uniform(np.log(1e-3), np.log(1e3), n))
    x = np.stack([s / 2 + 1, s / 2 - 1], -1).astype(dtype)
    y, w = y.astype(dtype), w.astype(dtype)
    x2, y2 = (np.asarray(a) for a in project_sum_act(x, y, act, w))
    _check_on_graph(act, {}, x2, y2, dtype, x)
    best = least_cost.sigmoidal(act, x.astype(float).sum(-1), y, w, x.shape[-1])
    assert np.all(_distance(x, y, x2, y2, w) <= best + least_cost.tolerance(x, y, w, dtype))


@pytest.mark.parametrize("act", ["tanh", "sigmoid"])
def test_sigmoidal_tail_start_saves_steps(act, monkeypatch):
    """Minimisers deep in the saturated tail (|y| from 2 to 1e4, w from 1 to 1e3): float64
    at 5 Newton steps (the fewest on 2000 such queries) with the last chain started left of
    the tail's root is still exact. Without that start (Newton crawling ~1/(2 rate) per
    step) 5 steps left 58% of tanh's and 56% of sigmoid's queries short, and 12 steps 4% and
    0.6% (2000 each)."""
    from projc.backends.jax.projections import sum_act

    monkeypatch.setattr(sum_act, "_SIGMOIDAL_STEPS", {**sum_act._SIGMOIDAL_STEPS, 8: 5})
    jax.clear_caches()  # the jitted projection holds the step count it was traced with
    rng = np.random.default_rng(11)
    n = 600
    s = rng.normal(size=n) * 10
    y = rng.choice([-1, 1], size=n) * np.exp(rng.uniform(np.log(2), np.log(1e4), n))
    w = np.exp(rng.uniform(0, np.log(1e3), n))
    x = np.stack([s / 2 + 1, s / 2 - 1], -1)
    x2, y2 = (np.asarray(a) for a in project_sum_act(x, y, act, w))
    jax.clear_caches()  # nothing traced at 5 steps outlives the test
    best = least_cost.sigmoidal(act, x.astype(float).sum(-1), y, w, x.shape[-1])
    assert np.all(_distance(x, y, x2, y2, w) <= best + least_cost.tolerance(x, y, w, F64))


@pytest.mark.parametrize("dtype", [F32, F64])
def test_tanh_inflection_against_bisection(dtype):
    """The arithmetic-only middle root of the tanh cost's `h'` is the dtype's rounding of the
    root (bisection of the cubic in float64), for |y| from 1e-8 to 1e20 and at 0 and +-inf."""
    from projc.backends.jax.projections.sum_act import _tanh_inflections

    y = np.concatenate([-np.logspace(-8, 20, 400), [0.0], np.logspace(-8, 20, 400)])
    big = np.sqrt(3) / 2 * y
    lo, hi = np.full_like(y, -1.0), np.ones_like(y)  # q(v) = v^3 - Y v^2 - 2v + Y falls there
    for _ in range(200):
        mid = (lo + hi) / 2
        pos = ((mid - big) * mid - 2) * mid + big > 0
        lo, hi = np.where(pos, mid, lo), np.where(pos, hi, mid)
    want = np.where(y == 0, 0.0, (lo + hi) / 2 / np.sqrt(3))
    got = np.asarray(_tanh_inflections(jnp.asarray(y, dtype)))
    assert got.dtype == dtype
    np.testing.assert_allclose(got, want, rtol=4 * np.finfo(dtype).eps, atol=0)
    ends = np.asarray(_tanh_inflections(jnp.asarray([np.inf, -np.inf], dtype)))
    np.testing.assert_allclose(ends, [1 / np.sqrt(3), -1 / np.sqrt(3)], rtol=np.finfo(dtype).eps)


@pytest.mark.parametrize("dtype", [F32, F64])
def test_tanh_derivatives_keep_their_digits(dtype):
    """tanh and 1 - tanh^2 of the Newton loops, near 0 and deep in the saturated tail, within a
    few ulp of float64's (relative: 1 - tanh^2 is ~1e-30 at t = 35)."""
    t = np.concatenate([-np.logspace(-30, 1.5, 300), [0.0], np.logspace(-30, 1.5, 300)])
    t = t.astype(dtype).astype(np.float64)  # the reference at the very same points
    th, d1, _ = ACTIVATIONS["tanh"].derivs(jnp.asarray(t, dtype))
    want_d1 = 1 / np.cosh(t) ** 2
    np.testing.assert_allclose(np.asarray(th), np.tanh(t), rtol=4 * np.finfo(dtype).eps, atol=0)
    np.testing.assert_allclose(np.asarray(d1), want_d1, rtol=8 * np.finfo(dtype).eps, atol=0)


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("k", [1, 3])
def test_softplus_extreme_queries(dtype, k):
    """|s| and |y| up to 1e5, y from 1e-30 to 1e5 and negative, w from 1e-6 to 1e6, and the
    queries an earlier grid-free draft got wrong: the kernel is no worse than dense grids
    (the grid solver it replaced failed up to 2.5% of such queries in float64, by up to
    6e13 eps)."""
    rng = np.random.default_rng(9)
    n = 400
    s = rng.normal(size=n) * rng.choice([1e-8, 1e-3, 1.0, 30.0, 80.0, 1e3, 1e5], size=n)
    kind = rng.integers(0, 3, n)
    y = np.select([kind == 0, kind == 1], [np.exp(rng.uniform(-70, 11, n)),
                                           -np.exp(rng.uniform(-10, 11, n))],
                  np.logaddexp(0, s) * np.exp(rng.normal(size=n) * 0.1))
    w = np.exp(rng.uniform(np.log(1e-6), np.log(1e6), n))
    # a two-minima query far above s whose better minimum is not the bracket's end, a
    # minimiser deep in the tail below s, a query on the graph, and weights of 0
    s[:6] = [-134.8, 0.0056, 5.0, -1.0, -100.0, 2.0]
    y[:6] = [71.26, -0.0033, np.logaddexp(0, 5.0), -2.0, -1e-3, 5.0]
    w[:6] = [5.0, 466.0, 1.0, 0.0, 0.0, 0.0]
    x = np.stack([s / k] * k, -1).astype(dtype)
    y, w = y.astype(dtype), w.astype(dtype)
    x2, y2 = (np.asarray(a) for a in project_sum_act(x, y, "softplus", w))
    _check_on_graph("softplus", {}, x2, y2, dtype, x)
    best = least_cost.softplus(x.astype(float).sum(-1), y, w, k)
    assert np.all(_distance(x, y, x2, y2, w) <= best + least_cost.tolerance(x, y, w, dtype))


@pytest.mark.parametrize("act", ["sigmoid", "tanh", "softplus"])
@pytest.mark.parametrize("dtype", [F32, F64])
def test_smooth_outputs_stay_on_the_graph_at_near_ties(act, dtype):
    """Weights down to 1e-6 and |y| up to 1e5: the cost is dominated by `w (f - y)^2` and
    flat to within its rounding, so candidates tie on it. x2 and y2 must still come from the
    same candidate (comparing the costs themselves, ~0.1% of these sigmoid queries had y2 off
    the graph of x2 by up to 1e7 eps)."""
    rng = np.random.default_rng(13)
    n, k = 4000, 3
    s = rng.normal(size=n) * rng.choice([1e-8, 1.0, 30.0, 80.0, 1e3, 1e5], size=n)
    y = rng.normal(size=n) * rng.choice([1e-3, 1.0, 1e3, 1e5], size=n)
    w = np.exp(rng.uniform(np.log(1e-6), np.log(1e6), n))
    x = np.stack([s / k] * k, -1).astype(dtype)
    x2, y2 = (np.asarray(a) for a in project_sum_act(x, y.astype(dtype), act, w.astype(dtype)))
    _check_on_graph(act, {}, x2, y2, dtype, x)


@pytest.mark.parametrize("act", ["tanh", "sigmoid", "softplus"])
@pytest.mark.parametrize("dtype", [F32, F64])
def test_smooth_solvers_in_blocks_match_whole_arrays(act, dtype, monkeypatch):
    """In cached blocks (here of 64 elements: 300 queries, the last block padded) the smooth
    solvers give the whole-array answer; the padding's queries are dropped."""
    rng = np.random.default_rng(13)
    s = rng.normal(size=300) * rng.choice([0.1, 1.0, 10.0, 1e3], size=300)
    x = np.stack([s / 2 + 1, s / 2 - 1], -1).astype(dtype)
    y = (rng.normal(size=300) * 2).astype(dtype)
    w = np.exp(rng.uniform(-3, 3, 300)).astype(dtype)
    outs = []
    for block in (None, 64):
        monkeypatch.setattr(blocks, "CPU_BLOCK", block or blocks.CPU_BLOCK)
        monkeypatch.setattr(blocks, "cache_blocking", lambda on=block is not None: on)
        jax.clear_caches()  # the jitted operator is retraced with the patched policy
        outs.append([np.asarray(a) for a in project_sum_act(x, y, act, w)])
    _check_on_graph(act, {}, *outs[1], dtype, x)
    for whole, blocked in zip(*outs):
        eps = np.finfo(dtype).eps
        np.testing.assert_allclose(blocked, whole, rtol=8 * eps, atol=8 * eps)


def test_smooth_choice_is_not_rounded_away_by_a_far_candidate():
    """float32, k = 4, w ~ 7.8e3: the chain from s stays at s (cost ~1.4e4) while the last
    chain and the bracket's end lie 1.5e-3 apart in cost at ~1.04. Compared through their
    differences to s, float32 rounded that gap away and returned the bracket's end, 1.2x
    the tolerance farther than the least cost; compared pairwise, the minimiser wins."""
    s, k = 0.42737067, 4
    x = np.full((1, k), s / k, F32)
    y, w = np.array([-0.9237495], F32), np.array([7763.196], F32)
    x2, y2 = (np.asarray(a) for a in project_sum_act(x, y, "tanh", w))
    best = least_cost.sigmoidal("tanh", x.astype(float).sum(-1), y, w, k)
    assert np.all(_distance(x, y, x2, y2, w) <= best + least_cost.tolerance(x, y, w, F32))
