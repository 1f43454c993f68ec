"""NumPy twins of the identity, linear, dot, mul and max projections, for differential tests.

Written independently of the JAX kernels and kept simple: float64 throughout, plain bisection
instead of Newton, the max chosen by comparing the costs of all candidates, and a dense 1-D
search (`dot_bruteforce`) that makes no use of the root equation at all.
"""

from __future__ import annotations

import numpy as np

_BISECTIONS = 200
_RHO_MAX = 350.0  # (e^350)^2 is finite in float64, so 0 * alpha^2 = 0


def project_identity(a, y, w=1.0):
    """`(a2, y2)` minimising `|a' - a|^2 + w |a' - y|^2` with `y' = a'`."""
    a, y, w = (np.asarray(v, np.float64) for v in (a, y, w))
    a2 = (a + w * y) / (1 + w)
    return a2, a2.copy()


def project_linear(x, y, c, d=0.0, w=1.0):
    """`(x2, y2)` minimising `|x' - x|^2 + w |y' - y|^2` with `y' = c . x' + d`."""
    x, y, c, d, w = (np.asarray(v, np.float64) for v in (x, y, c, d, w))
    x, c = np.broadcast_arrays(x, c)
    r = y - (c * x).sum(-1) - d
    lam = r / (1 + w * (c * c).sum(-1))
    x2 = x + (w * lam)[..., None] * c
    return x2, (c * x2).sum(-1) + d


def project_max(a, z, w=1.0):
    """`(a2, z2)` minimising `|a' - a|^2 + w |max(a') - z|^2`, by comparing all candidates."""
    a, z, w = (np.asarray(v, np.float64) for v in (a, z, w))
    s = -np.sort(-a, axis=-1)
    n = a.shape[-1]
    k = np.arange(1, n + 1)
    zb = np.broadcast_to(z, a.shape[:-1])[..., None]
    wb = np.broadcast_to(w, a.shape[:-1])[..., None]
    m = (np.cumsum(s, -1) + wb * zb) / (k + wb)
    # candidate k: the k largest entries set to m_k; cost of each, invalid ones excluded
    moved = np.where(k[None, :] <= k[:, None], 1.0, 0.0)  # (candidate, entry) masks
    dev = (s[..., None, :] - m[..., :, None]) ** 2 * moved
    cost = dev.sum(-1) + wb * (m - zb) ** 2
    nxt = np.concatenate([s[..., 1:], np.full(s.shape[:-1] + (1,), -np.inf)], -1)
    cost = np.where(nxt <= m, cost, np.inf)
    best = np.take_along_axis(m, cost.argmin(-1)[..., None], -1)[..., 0]
    a2 = np.minimum(a, best[..., None])
    idx = np.argmax(a, -1)[..., None]
    np.put_along_axis(a2, idx, best[..., None], -1)
    return a2, best


def project_dot(a, b, z, w=1.0):
    """`(a2, b2, z2)` minimising `|a'-a|^2 + |b'-b|^2 + w (a'.b' - z)^2`, by bisection in rho."""
    a, b, z, w = (np.asarray(v, np.float64) for v in (a, b, z, w))
    batch = np.broadcast_shapes(a.shape[:-1], b.shape[:-1], z.shape, w.shape)
    flat = lambda x, *n: np.broadcast_to(x, batch + n).reshape((-1,) + n)  # noqa: E731
    n = a.shape[-1]
    a2, b2, z2 = _dot_flat(flat(a, n), flat(b, n), flat(z), flat(1 / w))
    return a2.reshape(batch + (n,)), b2.reshape(batch + (n,)), z2.reshape(batch)


def _dot_flat(a, b, z, c):
    u, v = a + b, a - b
    uu, vv = (u * u).sum(-1) / 4, (v * v).sum(-1) / 4
    rho = _bisect(lambda r: _g(r, uu, vv, z, c), uu.shape)
    with np.errstate(over="ignore", invalid="ignore"):  # the ends: replaced below
        al, be = (1 + np.exp(-rho)) / 2, (1 + np.exp(rho)) / 2
        pu, pv = al[..., None] * u, be[..., None] * v
    pu, pv = _sphere_limits(u, v, pu, pv, uu, vv, z, c)
    a2, b2 = (pu + pv) / 2, (pu - pv) / 2
    return a2, b2, ((pu * pu).sum(-1) - (pv * pv).sum(-1)) / 4


def project_mul(a, b, z, w=1.0):
    """Elementwise `z = a * b`: the dot projection with n = 1."""
    a2, b2, z2 = project_dot(np.asarray(a)[..., None], np.asarray(b)[..., None], z, w)
    return a2[..., 0], b2[..., 0], z2


def project_dot_compat(a, b, z):
    """PJAX's rule as method.md states it: 10 plain Newton steps from t = 0, weight 1."""
    a, b, z = (np.asarray(v, np.float64) for v in (a, b, z))
    p, q = (a * b).sum(-1), (a * a + b * b).sum(-1)
    t = np.zeros_like(p + z)
    for _ in range(10):
        d = 1 - t * t
        num = (1 + t * t) * p + t * q
        g = num / d**2 - z + t
        dg = (2 * t * p + q) / d**2 + 4 * t * num / d**3 + 1
        t = t - g / dg
    d = (1 - t * t)[..., None]
    return (a + t[..., None] * b) / d, (b + t[..., None] * a) / d, z - t


def dot_cost(a, b, z, a2, b2, z2, w=1.0):
    """The objective `|a2 - a|^2 + |b2 - b|^2 + w (z2 - z)^2`, in float64."""
    a, b, z, a2, b2, z2, w = (np.asarray(v, np.float64) for v in (a, b, z, a2, b2, z2, w))
    return ((a2 - a) ** 2).sum(-1) + ((b2 - b) ** 2).sum(-1) + w * (z2 - z) ** 2


def dot_bruteforce(a, b, z, w=1.0, points=4001, zooms=4):
    """Least cost over the curve `(a(rho), b(rho))` of KKT candidates by dense 1-D search.

    Every curve point is on the graph, so its cost bounds the projection's from above.
    """
    a, b, z, w = (np.asarray(v, np.float64) for v in (a, b, z, w))
    uu, vv = ((a + b) ** 2).sum(-1) / 4, ((a - b) ** 2).sum(-1) / 4
    uu, vv, z, w = np.broadcast_arrays(uu, vv, z, w)
    lo, hi = np.full(uu.shape, -60.0), np.full(uu.shape, 60.0)
    for _ in range(zooms):
        grid = np.linspace(lo, hi, points, axis=-1)
        cost = _curve_cost(grid, uu[..., None], vv[..., None], z[..., None], w[..., None])
        best = np.take_along_axis(grid, cost.argmin(-1)[..., None], -1)[..., 0]
        half = 4 * (hi - lo) / (points - 1)
        lo, hi = best - half, best + half
    return cost.min(-1)


def _curve_cost(rho, uu, vv, z, w):
    em, ep = np.expm1(-rho), np.expm1(rho)  # alpha - 1 = em/2, beta - 1 = ep/2
    al, be = 1 + em / 2, 1 + ep / 2
    return uu * em**2 / 2 + vv * ep**2 / 2 + w * (uu * al**2 - vv * be**2 - z) ** 2


def _g(rho, uu, vv, z, c):
    al, be = (1 + np.exp(-rho)) / 2, (1 + np.exp(rho)) / 2
    return uu * al**2 - vv * be**2 - z - c * np.tanh(rho / 2)


def _bisect(g, shape):
    """The root of a decreasing g in [-R, R] (an end of it when g keeps one sign)."""
    lo, hi = np.full(shape, -_RHO_MAX), np.full(shape, _RHO_MAX)
    with np.errstate(over="ignore", invalid="ignore"):
        for _ in range(_BISECTIONS):
            mid = (lo + hi) / 2
            pos = g(mid) > 0
            lo, hi = np.where(pos, mid, lo), np.where(pos, hi, mid)
    return (lo + hi) / 2


def _sphere_limits(u, v, pu, pv, uu, vv, z, c):
    """Replace the curve point by the limit sphere point where the root is at t = +-1.

    At t = 1 (u = 0 and z + V/4 - c > 0) a' + b' is any vector of squared norm
    4 (z + V/4 - c) and a' - b' = v/2; at t = -1 symmetrically. The direction chosen is
    u's (v's) or, when it is zero, the unit vector of equal entries.
    """
    n = u.shape[-1]
    e = np.full(n, 1 / np.sqrt(n))
    x, y = z + vv / 4 - c, uu / 4 - z - c
    with np.errstate(over="ignore", invalid="ignore"):
        top = _g(-_RHO_MAX, uu, vv, z, c) <= 0
        bot = _g(_RHO_MAX, uu, vv, z, c) >= 0
    pu, pv = pu.copy(), pv.copy()
    cases = ((top, x, (pu, u, uu), (pv, v)), (bot, y, (pv, v, vv), (pu, u)))
    for mask, norm2, (free, vec, base), (fixed, fixed_vec) in cases:
        for i in zip(*np.nonzero(mask)):
            direction = vec[i] / np.linalg.norm(vec[i]) if base[i] > 0 else e
            free[i] = 2 * np.sqrt(max(norm2[i], 0.0)) * direction
            fixed[i] = fixed_vec[i] / 2
    return pu, pv
