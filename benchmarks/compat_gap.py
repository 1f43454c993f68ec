"""How often PJAX's dot/mul operator (compat=True) misses the projection, and by how much.

Queries as Douglas-Rachford produces them: offsets `z = a.b + sigma N(0, 1)` of several
scales, and reflections `2 P(x) - x` of on-graph points perturbed by noise of scale s. Both
operators run in float32 at weight 1; distances are measured in float64. A compat answer
counts as farther when its distance to the query exceeds the exact one's by 1e-3 relative
(float32 rounding alone moves distances by up to about 1e-4 relative on near-graph queries);
it counts as off the graph when `|z' - a'.b'| > 1e-3 (1 + |z'|)` (its Newton steps did not
converge). Run: `python benchmarks/compat_gap.py [--samples 4000] [--n 64]`.
"""

from __future__ import annotations

import argparse

import jax
import numpy as np

import projc.backends.jax  # noqa: F401
from projc.backends.jax.projections.dot import project_dot

_exact = jax.jit(project_dot)
_compat = jax.jit(lambda a, b, z: project_dot(a, b, z, compat=True))


def _offset_queries(rng, samples, n, sigma):
    a, b = rng.normal(size=(2, samples, n)) / np.sqrt(np.sqrt(n))  # a.b of order 1
    return a, b, (a * b).sum(-1) + sigma * rng.normal(size=samples)


def _reflection_queries(rng, samples, n, s):
    a, b = rng.normal(size=(2, samples, n)) / np.sqrt(np.sqrt(n))
    x = (a + s * rng.normal(size=a.shape) / np.sqrt(n), b + s * rng.normal(size=b.shape)
         / np.sqrt(n), (a * b).sum(-1) + s * rng.normal(size=samples))
    p = _exact(*(np.float32(v) for v in x))
    return tuple(2 * np.float64(pv) - xv for pv, xv in zip(p, x))


def _distance(query, point):
    a, b, z = (np.float64(v) for v in query)
    a2, b2, z2 = (np.float64(v) for v in point)
    return np.sqrt(((a2 - a) ** 2).sum(-1) + ((b2 - b) ** 2).sum(-1) + (z2 - z) ** 2)


def _off_graph(point):
    a2, b2, z2 = (np.float64(v) for v in point)
    return ~(np.abs(z2 - (a2 * b2).sum(-1)) <= 1e-3 * (1 + np.abs(z2)))


def gap(query):
    """Statistics of the compat answers against the exact ones for a batch of queries."""
    query = tuple(np.float32(v) for v in query)
    exact, compat = _exact(*query), _compat(*query)
    d_exact, d_compat = _distance(query, exact), _distance(query, compat)
    excess = np.nan_to_num((d_compat - d_exact) / d_exact, nan=np.inf)
    worse = excess > 1e-3
    bad = excess[worse]
    return {
        "farther": float(worse.mean()),
        "median_excess": float(np.median(bad)) if bad.size else 0.0,
        "p90_excess": float(np.percentile(bad, 90)) if bad.size else 0.0,
        "off_graph": float(_off_graph(compat).mean()),
        "exact_off_graph": float(_off_graph(exact).mean()),
    }


def scenarios(n):
    """`(label, query maker)` rows; a maker takes `(rng, samples)`."""
    rows = [(f"offset sigma={s:g}", lambda r, k, s=s: _offset_queries(r, k, n, s))
            for s in (0.1, 1, 10, 100, 1000)]
    rows += [(f"DR reflection s={s:g}", lambda r, k, s=s: _reflection_queries(r, k, n, s))
             for s in (0.1, 1, 10)]
    rows += [(f"mul offset sigma={s:g}", lambda r, k, s=s: _offset_queries(r, k, 1, s))
             for s in (1, 10, 100)]
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=4000)
    parser.add_argument("--n", type=int, default=64, help="length of the dot products")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    print(f"{'queries (n=' + str(args.n) + ')':24s} {'farther':>8s} {'median':>9s} {'p90':>9s}"
          f" {'off-graph':>9s}   (relative excess distance over the farther ones)")
    for label, make in scenarios(args.n):
        r = gap(make(rng, args.samples))
        print(f"{label:24s} {r['farther']:8.1%} {r['median_excess']:9.3g} {r['p90_excess']:9.3g}"
              f" {r['off_graph']:9.1%}", flush=True)
        assert r["exact_off_graph"] == 0.0, "the exact operator left the graph"


if __name__ == "__main__":
    main()
