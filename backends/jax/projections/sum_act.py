"""Projection onto the graph of `y = act(x_1 + ... + x_k)`, for a table of activations.

The problem depends on the inputs only through `s = sum(x)` (method.md section 2): every
input moves by the same `(s' - s) / k`, and `s'` minimises the 1-D cost
`(s' - s)^2 / k + w (act(s') - y)^2`. Each activation is a spec in `ACTIVATIONS` that knows its
forward function and how to find the global minimiser of that 1-D cost:

- `Piecewise` (relu, leaky_relu, clip, identity): closed form on each linear piece, cheapest.
- `Levels` (sign, step, quantize): one candidate per level, `s` clipped into the level's cell.
  Cells are half-open, `[b_j, b_{j+1})`, and the forward function is defined from the same
  boundaries, so forward rounding and projection agree on ties: `step(0) = 1`,
  `sign(s) = 0` on `[0, 1.2e-38)` (float32's smallest normal number; ONNX's sign(0) = 0), and
  quantize rounds ties up. Candidates keep off the open edge of their cell by the rounding
  error of re-summing the moved inputs, so that `act(sum(x2)) == y2` holds in floating point.
- `Smooth` (softplus): the minimiser lies between `s` and `act^-1(y)` (or a Lipschitz bound
  when `y` is outside the range), where the cost can still have two local minima. Sign
  changes of its derivative on two grids over that bracket (uniform in `s` and in `act(s)`)
  locate the first and the last; a safeguarded Newton solve under `lax.fori_loop` refines
  them, and the cheapest of them and the bracket's ends wins.
- `Sigmoidal` (tanh, sigmoid = (1 + tanh(s/2))/2): the same bracket, but the shape of the
  cost's derivative is known in closed form, so two Newton chains with no grid suffice
  (see `Sigmoidal.solve`): about 30 evaluations of `act` instead of about 100.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

_INF = math.inf
_NODES = 8  # grid cells of the smooth solver's bracket
_NEWTON_STEPS = 40  # bracketed: cells can span 1e5 when y is far outside the range


def _pick(a, j):
    """`a[..., j[..., i]]` along the last axis (a one-hot sum: cheaper to compile than a gather)."""
    hot = j[..., None] == jnp.arange(a.shape[-1])
    return jnp.sum(jnp.where(hot, a[..., None, :], 0), axis=-1).astype(a.dtype)


def _cheapest(t, cost):
    """The candidate `t[..., j]` of least `cost[..., j]` (first one on ties)."""
    return _pick(t, jnp.argmin(cost, axis=-1)[..., None])[..., 0]


def _running_min(candidates):
    """The candidate of least cost (the first one on ties), as one elementwise pass: a static
    loop over a handful of candidates fuses, where a trailing candidate axis would not."""
    best_t, best_c = candidates[0]
    for t, c in candidates[1:]:
        better = c < best_c
        best_t, best_c = jnp.where(better, t, best_t), jnp.where(better, c, best_c)
    return best_t


def _cost(t, s, y, k, w, f):
    """The 1-D cost `(t - s)^2 / k + w (f - y)^2` of a candidate `t` with output `f`."""
    return (t - s) ** 2 / k + w * (f - y) ** 2


@dataclass(frozen=True)
class Piecewise:
    """A continuous piecewise-linear activation; `pieces(**p)` -> [(lo, hi, slope, offset)]."""

    pieces: Callable
    fwd: Callable
    defaults: tuple = ()

    def forward(self, s, p):
        return self.fwd(s, **p)

    def solve(self, s, y, k, w, p, mag):
        # The cost is a convex quadratic on each piece: clip its stationary point into the piece.
        candidates = []
        for lo, hi, c, d in self.pieces(**p):
            t = jnp.clip((s + k * w * c * (y - d)) / (1 + k * w * c * c), lo, hi).astype(s.dtype)
            candidates.append((t, _cost(t, s, y, k, w, c * t + d)))
        return _running_min(candidates)


def _below(b, dtype):
    """The largest normal-or-zero number of `dtype` below `b` (no denormals: CPUs flush them)."""
    b = np.asarray(b, dtype)
    return np.minimum(np.nextafter(b, dtype.type(-np.inf)), b - np.finfo(dtype).tiny)


def _resum_error(edge, s, mag, k):
    """A bound on the rounding of `sum(x + (edge - s) / k)`; tiny keeps shifts off denormals."""
    fi = jnp.finfo(s.dtype)
    return 2 * k * (fi.eps * ((mag + jnp.abs(s))[..., None] + np.abs(edge)) + fi.tiny)


@dataclass(frozen=True)
class Levels:
    """A step function; `cells(**p)` -> (levels, boundaries): level j on `[b_j, b_{j+1})`."""

    cells: Callable
    defaults: tuple = ()

    def _table(self, dtype, p):
        q, b = self.cells(**p)
        return np.asarray(q, dtype), np.asarray(b, dtype)

    def forward(self, s, p):
        q, b = self._table(s.dtype, p)
        # q[number of boundaries at or below s] as a chain of selects over the increasing
        # boundaries (exact levels; a gather from a table does not fuse on CPU and cost more
        # than the whole projection around it)
        out = jnp.full_like(s, q[0])
        for edge, level in zip(b, q[1:]):
            out = jnp.where(s >= edge, level, out)
        return out

    def solve(self, s, y, k, w, p, mag):
        q, b = self._table(s.dtype, p)
        lo = np.concatenate([[-np.inf], b]).astype(s.dtype)
        hi = np.concatenate([_below(b, s.dtype), [np.inf]]).astype(s.dtype)
        # Keep off the cell's edges by the rounding error of re-summing the moved inputs,
        # so that act(sum(x2)) == y2 in practice too; a cell narrower than that gets its
        # closed end (only k = 1 reaches sign's one-point cell {0} exactly).
        lo2 = jnp.where(np.isfinite(lo), lo + _resum_error(lo, s, mag, k), lo)
        hi2 = jnp.where(np.isfinite(hi), hi - _resum_error(hi, s, mag, k), hi)
        lo2, hi2 = jnp.where(lo2 <= hi2, lo2, lo), jnp.where(lo2 <= hi2, hi2, lo)
        candidates = []
        for j in range(len(q)):
            t = jnp.clip(s, lo2[..., j], hi2[..., j])
            candidates.append((t, _cost(t, s, y, k, w, q[j])))
        return _running_min(candidates)


@dataclass(frozen=True)
class Smooth:
    """A smooth increasing activation: `derivs(t) = (f, f', f'')`, inverse, range, sup of f'."""

    derivs: Callable
    inv: Callable
    range: tuple
    lipschitz: float
    defaults: tuple = ()

    def f(self, t):
        return self.derivs(t)[0]

    def forward(self, s, p):
        return self.f(s)

    def _bracket_end(self, s, y, k, w):
        """The far end `b` of a bracket `[s, b]` (either order) holding the minimiser."""
        # |t* - s| = k w |f(t*) - y| f'(t*) <= k w |f(s) - y| sup f'; and t* lies before f^-1(y).
        lip = s + k * w * (y - self.f(s)) * self.lipschitz
        inside = (y > self.range[0]) & (y < self.range[1])
        r = self.inv(jnp.where(inside, y, self.f(s)))
        closer = inside & (jnp.abs(r - s) < jnp.abs(lip - s))
        return jnp.where(closer, r, lip)

    def _grad(self, t, s, y, k, w):
        """Half the cost's derivative and its derivative, `(g, g')`."""
        f, df, d2f = self.derivs(t)
        g = (t - s) / k + w * (f - y) * df
        return g, 1 / k + w * (df * df + (f - y) * d2f)

    def _newton(self, neg, pos, s, y, k, w):
        """A root of g between `neg` (g < 0) and `pos` (g > 0): Newton, else bisection."""

        def step(_, state):
            neg, pos, t = state
            g, dg = self._grad(t, s, y, k, w)
            neg, pos = jnp.where(g < 0, t, neg), jnp.where(g < 0, pos, t)
            nt = t - g / jnp.where(dg > 0, dg, 1)
            inside = (dg > 0) & ((nt - neg) * (nt - pos) < 0)
            return neg, pos, jnp.where(inside, nt, (neg + pos) / 2)

        return lax.fori_loop(0, _NEWTON_STEPS, step, (neg, pos, (neg + pos) / 2))[2]

    def _grids(self, s, b):
        """Two grids in tau, `t = s + tau (b - s)`, shape (..., 2, n): uniform in t and in f(t)."""
        tau = np.linspace(0, 1, _NODES + 1).astype(s.dtype)
        fs, fb, s_, span = (a[..., None] for a in (self.f(s), self.f(b), s, b - s))
        tu = (self.inv(fs + (fb - fs) * tau) - s_) / jnp.where(span == 0, 1, span)
        ends = np.isin(tau, [0, 1])  # exact ends, whatever f^-1(f(t)) rounds to
        tu = jnp.where(ends, tau, jnp.clip(jnp.where(jnp.isnan(tu), 0, tu), 0, 1))
        return jnp.stack([jnp.broadcast_to(tau, tu.shape), tu], axis=-2)

    def solve(self, s, y, k, w, p, mag):
        b = self._bracket_end(s, y, k, w)
        span = (b - s)[..., None]
        tau = self._grids(s, b)
        g, _ = self._grad(s[..., None, None] + span[..., None] * tau, *(
            a[..., None, None] for a in (s, y)), k, w[..., None, None])
        # Orient g along s -> b: it starts < 0 and ends >= 0. A local minimum sits in a cell
        # whose oriented g goes from < 0 to >= 0: refine the first and the last such cell.
        h = g * jnp.sign(span)[..., None]
        up = (h[..., :-1] < 0) & (h[..., 1:] >= 0)
        first = jnp.argmax(up, axis=-1)
        last = up.shape[-1] - 1 - jnp.argmax(up[..., ::-1], axis=-1)
        cells = jnp.stack([first, last], axis=-1)  # (..., grid, which)
        lo, hi, ok = (_pick(a, cells) for a in (tau[..., :-1], tau[..., 1:], up))
        lo, hi, ok = _merge_cells(lo, hi, ok)
        ends = s[..., None] + span * jnp.where(span >= 0, lo, hi)  # the end where g < 0
        other = s[..., None] + span * jnp.where(span >= 0, hi, lo)
        s1, y1, w1 = (a[..., None] for a in (s, y, w))
        roots = jnp.where(ok, self._newton(ends, other, s1, y1, k, w1), s1)
        t = jnp.concatenate([roots, s1, b[..., None]], axis=-1)
        return _cheapest(t, _cost(t, s1, y1, k, w1, self.f(t)))


# Newton steps of the two chains: float32 settles in 8 even for |y| ~ 1e4 and w ~ 1e3; float64
# needs 20 there (the saturated tail converges linearly at first), 8 for moderate queries.
_SIGMOIDAL_STEPS = {4: 10, 8: 20}
# Newton steps for the inflection `M`: from `_tanh_inflections`' start, 2 reach float32's
# rounding of M (1.4 ulp over |y| in [1e-8, 1e5]) and 3 float64's (1e-14).
_INFLECTION_STEPS = {4: 2, 8: 3}


def _tanh_inflections(y):
    """The middle root `M` of `h'(u) = 12u^3 - 6yu^2 - 8u + 2y`, in `(-1/sqrt(3), 1/sqrt(3))`.

    With `u = v / sqrt(3)` and `Y = sqrt(3) y / 2` the cubic is `q(v) = v^3 - Y v^2 - 2v + Y`,
    with `q(-1) = 1`, `q(1) = -1` and one root in between, odd in `Y`. It is solved for
    `|Y|` by Newton's method from `v0 = |Y| / (|Y| + c)`, `c = 1/2 + 3/2 / (1 + |Y|)`, which has
    both limits right (`Y/2` near 0, `1 - 1/(2Y)` far out). For `|Y| >= 1` the iteration runs on
    `d = 1 - v` instead (`r(d) = Y d (2 - d) - (1 + d - 3d^2 + d^3)`), which keeps the digits
    of the tiny `d` of large `|y|`. Only arithmetic: the trigonometric solution's arccos and
    cos are scalar library calls on XLA:CPU, which cost a third of the whole tanh projection.
    """
    big = jnp.minimum(jnp.abs(y), 1e18) * (math.sqrt(3) / 2)  # beyond, M = 1/sqrt(3) in float64
    c = 0.5 + 1.5 / (1 + big)
    v, d = big / (big + c), c / (big + c)
    for _ in range(_INFLECTION_STEPS.get(y.dtype.itemsize, 3)):
        q, dq = ((v - big) * v - 2) * v + big, (3 * v - 2 * big) * v - 2
        r, dr = big * d * (2 - d) - (1 + d * (1 + d * (d - 3))), big * (2 - 2 * d) - (1 + d * (3 * d - 6))
        v, d = jnp.clip(v - q / dq, 0, 1), jnp.clip(d - r / dr, 0, 1)
    return jnp.sign(y) * jnp.where(big < 1, v, 1 - d) / math.sqrt(3)


@dataclass(frozen=True)
class Sigmoidal(Smooth):
    """`act(t) = offset + scale * tanh(rate * t)`: tanh, and sigmoid with (1/2, 1/2, 1/2).

    In the tanh frame (`u = tanh(t)`, `a = 1 / (k w)`, oriented so that the minimiser lies
    above `s`, which needs `y > -1`), the cost's half-derivative is
    `g = a (t - s) + (u - y)(1 - u^2)` and `g' = a + h(u)` with
    `h(u) = (1 - u^2)(1 - 3u^2 + 2uy)`; `g''` has the sign of `h'(u)`. `h` has the four real
    roots -1, `u-`, `u+`, 1 (`u-+ = (y -+ sqrt(y^2 + 3)) / 3`), so `h'` has one root `m` in
    `(-1, u-)` and one, `M`, in `(u-, u+)`. On the bracket (where `u < u+`) that leaves three
    pieces: `g` concave below `m` (and decreasing at most on one interval there), convex on
    `(m, M)`, concave and increasing above `M`. A local minimum of the cost is an up-crossing
    of `g`; there are at most two, and Newton's method converges monotonically to each:
    - the first from `s` (where `g < 0`), concave: the tangent's root never passes the
      crossing;
    - the last from `M` clipped into the bracket: from the right on the convex piece when
      `g(M) >= 0`, from the left on the concave one above `M` otherwise.
    The cheaper of the two limits and the bracket's end wins. Newton steps use the
    activation's own derivatives (no precision lost to the change of frame); only the starting
    point `M` comes from the tanh frame (`test_sigmoidal_extreme_queries` checks the far tail
    against a dense grid).
    """

    offset: float = 0.0
    scale: float = 1.0
    rate: float = 1.0

    def solve(self, s, y, k, w, p, mag):
        b = self._bracket_end(s, y, k, w)
        lo, hi = jnp.minimum(s, b), jnp.maximum(s, b)
        yt = (y - self.offset) / self.scale  # y in the tanh frame
        flip = jnp.tanh(self.rate * s) > yt  # orient: the minimiser lies above s
        big_m = _tanh_inflections(jnp.where(flip, -yt, yt))  # |M| < 0.58: arctanh is safe
        start = jnp.clip(jnp.where(flip, -1, 1) * jnp.arctanh(big_m) / self.rate, lo, hi)

        def newton(_, ts):
            out = []
            for t in ts:
                g, dg = self._grad(t, s, y, k, w)
                rising = dg > 0  # where g falls (or is flat) Newton would walk the wrong way
                out.append(jnp.clip(jnp.where(rising, t - g / jnp.where(rising, dg, 1), t), lo, hi))
            return tuple(out)

        steps = _SIGMOIDAL_STEPS.get(s.dtype.itemsize, 20)
        first, last = lax.fori_loop(0, steps, newton, (s, start))
        return _running_min([(t, _cost(t, s, y, k, w, self.f(t))) for t in (first, last, b)])


def _merge_cells(lo, hi, ok):
    """One bracket per (first, last) from the two grids' cells, shape (..., grid, which).

    Each cell holds a sign change of g (g < 0 at lo, >= 0 at hi in oriented tau); where both
    grids' cells overlap, their intersection also does and is narrower. Otherwise the first
    cell is the one nearer s and the last the one nearer b.
    """
    both = ok[..., 0, :] & ok[..., 1, :]
    lo_in, hi_in = jnp.max(lo, axis=-2), jnp.min(hi, axis=-2)
    overlap = both & (lo_in < hi_in)
    key = jnp.where(ok, jnp.stack([hi[..., 0], -lo[..., 1]], axis=-1), jnp.inf)
    j = jnp.argmin(key, axis=-2)[..., None, :]  # the grid to use without overlap
    one = [jnp.take_along_axis(a, j, axis=-2)[..., 0, :] for a in (lo, hi)]
    return (jnp.where(overlap, lo_in, one[0]), jnp.where(overlap, hi_in, one[1]),
            jnp.any(ok, axis=-2))


def _logistic_pair(t):
    """`(sigmoid(t), sigmoid(-t))` from one exponential and one division, without cancellation."""
    e = jnp.exp(-jnp.abs(t))
    big = 1 / (1 + e)
    small = e * big
    return jnp.where(t >= 0, big, small), jnp.where(t >= 0, small, big)


def _sigmoid(t):
    sp, sm = _logistic_pair(t)
    return sp, sp * sm, sp * sm * (sm - sp)


def _tanh(t):
    sp, sm = _logistic_pair(2 * t)
    d1 = 4 * sp * sm  # 1 - tanh^2 without cancelling
    th = jnp.tanh(t)
    return th, d1, -2 * th * d1


def _softplus(t):
    sp, sm = _logistic_pair(t)
    return jnp.maximum(t, 0) + jnp.log1p(jnp.exp(-jnp.abs(t))), sp, sp * sm


def _quantize_cells(levels=2, scale=1.0):
    if int(levels) != levels or levels < 2 or not scale > 0:
        raise ValueError(f"quantize needs an integer levels >= 2 and scale > 0, got {levels=}, "
                         f"{scale=}")
    q = np.linspace(-scale, scale, int(levels))
    return q, (q[:-1] + q[1:]) / 2  # ties (exact midpoints) go to the upper level


ACTIVATIONS = {
    "relu": Piecewise(lambda: [(-_INF, 0, 0, 0), (0, _INF, 1, 0)], lambda s: jnp.maximum(s, 0)),
    "leaky_relu": Piecewise(
        lambda alpha: [(-_INF, 0, alpha, 0), (0, _INF, 1, 0)],
        lambda s, alpha: jnp.where(s >= 0, s, alpha * s), (("alpha", 0.01),)),
    "clip": Piecewise(
        lambda lo, hi: [(-_INF, lo, 0, lo), (lo, hi, 1, 0), (hi, _INF, 0, hi)],
        lambda s, lo, hi: jnp.clip(s, lo, hi), (("lo", -1.0), ("hi", 1.0))),
    "identity": Piecewise(lambda: [(-_INF, _INF, 1, 0)], lambda s: s),
    "sigmoid": Sigmoidal(_sigmoid, lambda y: jnp.log(y) - jnp.log1p(-y), (0.0, 1.0), 0.25,
                         offset=0.5, scale=0.5, rate=0.5),
    "tanh": Sigmoidal(_tanh, jnp.arctanh, (-1.0, 1.0), 1.0),
    "softplus": Smooth(_softplus, lambda y: y + jnp.log(-jnp.expm1(-y)), (0.0, _INF), 1.0),
    "sign": Levels(lambda: ([-1.0, 0.0, 1.0], [0.0, float(np.finfo(np.float32).tiny)])),
    "step": Levels(lambda: ([0.0, 1.0], [0.0])),
    "quantize": Levels(_quantize_cells, (("levels", 2), ("scale", 1.0))),
}


def _spec_and_params(act, params):
    spec = ACTIVATIONS.get(act)
    if spec is None:
        raise ValueError(f"unknown activation {act!r}; known: {', '.join(ACTIVATIONS)}")
    defaults = dict(spec.defaults)
    unknown = set(params) - set(defaults)
    if unknown:
        raise TypeError(f"activation {act!r} takes parameters {sorted(defaults)}, "
                        f"got unknown {sorted(unknown)}")
    return spec, {**defaults, **params}


@partial(jax.jit, static_argnames=("act", "params"))
def _forward(s, act, params):
    spec, p = _spec_and_params(act, dict(params))
    return spec.forward(jnp.asarray(s), p)


def activation_forward(act, s, **params):
    """The elementwise forward function `act(s)` that `project_sum_act` projects onto."""
    _spec_and_params(act, params)  # errors are raised here, outside the tracer
    return _forward(s, act, tuple(sorted(params.items())))


def _pjax_relu(x, y):
    """PJAX's `sum_relu_proj` as it is: unweighted, its branch rule tests `y == 0`."""
    k = x.shape[-1]
    s = jnp.sum(x, axis=-1)
    mid1, mid2 = s / k, (y - s) / (k + 1)
    x1 = jnp.where((s < 0)[..., None], x, x - mid1[..., None])
    d1 = jnp.where(s < 0, y ** 2, y ** 2 + k * mid1 ** 2)
    clamped = jnp.maximum(0, y - mid2) == 0
    x2 = jnp.where(clamped[..., None], x - mid1[..., None], x + mid2[..., None])
    # The bug kept on purpose: the clamped branch's distance is chosen by `y == 0`.
    d2 = jnp.where(y == 0, y ** 2 + k * mid1 ** 2, (k + 1) * mid2 ** 2)
    return jnp.where((d1 < d2)[..., None], x1, x2)


@partial(jax.jit, static_argnames=("act", "params", "compat"))
def _project_slots(xs, y, w, act, params, compat):
    """The same projection with the k inputs as k separate arrays (the state's slot layout):
    no interleaved last axis, so each input streams through memory once."""
    spec, p = _spec_and_params(act, dict(params))
    xs = tuple(jnp.asarray(x) for x in xs)
    dt, shape, k = xs[0].dtype, xs[0].shape, len(xs)
    if compat and act == "relu":
        x2, y2 = _project(jnp.stack(xs, -1), y, w, act, params, compat)
        return tuple(x2[..., i] for i in range(k)), y2
    y = jnp.broadcast_to(jnp.asarray(y, dt), shape)
    w = jnp.ones_like(y) if compat else jnp.broadcast_to(jnp.asarray(w, dt), shape)
    s = sum(xs[1:], xs[0])
    s2 = spec.solve(s, y, k, w, p, sum((jnp.abs(x) for x in xs[1:]), jnp.abs(xs[0])))
    d = (s2 - s) / k
    return tuple(x + d for x in xs), spec.forward(s2, p)


@partial(jax.jit, static_argnames=("act", "params", "compat"))
def _project(x, y, w, act, params, compat):
    spec, p = _spec_and_params(act, dict(params))
    x = jnp.asarray(x)
    y = jnp.broadcast_to(jnp.asarray(y, x.dtype), x.shape[:-1])
    w = jnp.asarray(w, x.dtype)
    if compat and act == "relu":
        x2 = _pjax_relu(x, y)
        return x2, spec.forward(jnp.sum(x2, axis=-1), p)
    w = jnp.ones_like(y) if compat else jnp.broadcast_to(w, y.shape)
    k = x.shape[-1]
    s = jnp.sum(x, axis=-1)
    s2 = spec.solve(s, y, k, w, p, jnp.sum(jnp.abs(x), axis=-1))
    return x + ((s2 - s) / k)[..., None], spec.forward(s2, p)


def project_sum_act(x, y, act, w=1.0, *, compat=False, **act_params):
    """Project `(x, y)` onto `{y = act(sum(x, -1))}` with output weight `w`.

    Minimises `|x' - x|^2 + w (y' - y)^2` over the graph (method.md section 2).

    Args:
        x: the k summed inputs, shape `(..., k)`; or a tuple of k arrays of shape `(...)` (the
            state's layout, one array per slot: faster, as no interleaved axis is read), in
            which case `x2` is a tuple too.
        y: outputs, shape `(...)`.
        act: a key of `ACTIVATIONS`; `act_params` are its parameters (`alpha` for leaky_relu,
            `lo`, `hi` for clip, `levels`, `scale` for quantize).
        w: output weight, a float or an array broadcastable to `y`.
        compat: reproduce PJAX: for relu its `sum_relu` projection (unweighted, with its
            branch rule); for the other activations the exact projection with `w = 1`.

    Returns:
        `(x2, y2)` with the shapes and dtype of `x` and `y`; `y2 = act(s')` exactly, and
        `sum(x2)` equals `s'` up to the rounding of the sum.
    """
    _spec_and_params(act, act_params)  # errors are raised here, outside the tracer
    params = tuple(sorted(act_params.items()))
    if isinstance(x, (tuple, list)):
        return _project_slots(tuple(x), y, w, act, params, compat)
    return _project(x, y, w, act, params, compat)
