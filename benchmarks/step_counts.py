"""Re-derive the Newton step counts of the smooth sum_act solvers (tanh, sigmoid, softplus).

For each activation and dtype: random extreme queries (outputs far outside the range, weights
over many decades, minimisers deep in the saturated tails), the least cost per query by brute
force (`projc.backends.reference.least_cost`: dense grids refined by golden sections, float64),
then the JAX solver at 1, 2, ... steps (its table patched) and how many queries it leaves
worse than the brute force beyond rounding. The fewest steps with none is the figure that
`_SIGMOIDAL_STEPS` and `_SOFTPLUS_STEPS` in `sum_act.py` must stay above; rerun this after
changing a solver's starts or steps.
Run: `python benchmarks/step_counts.py [--queries 2000] [--only tanh] [--seed 0]`.
"""

from __future__ import annotations

import argparse
from functools import partial

import jax
import numpy as np

import projc.backends.jax  # noqa: F401  (x64 on)
from projc.backends.jax.projections import sum_act
from projc.backends.reference import least_cost
from projc.backends.reference import projections_act as ref

TABLES = {"tanh": "_SIGMOIDAL_STEPS", "sigmoid": "_SIGMOIDAL_STEPS", "softplus": "_SOFTPLUS_STEPS"}


def _log_uniform(rng, lo, hi, n):
    return np.exp(rng.uniform(np.log(lo), np.log(hi), n))


def sigmoidal_queries(act, rng, n):
    """A third like `test_sigmoidal_extreme_queries` (|s|, |y| to 1e4, w 1e-3..1e3), a third
    deep in the saturated tail (|y| 2..1e4, w 1..1e3), as `test_sigmoidal_tail_start_saves_steps`,
    and a third just inside the range near saturation (|y| 0.9..0.9999 in the tanh frame, w
    10..1e4), where the last chain converged slowest when it started from M: float32 tanh
    needed 8 steps there at k = 4 and w to 1e3, 9 at k = 16, 10 at k = 4 and w to 1e4."""
    third = n // 3
    near = n - 2 * third
    scale = rng.choice([0.1, 1.0, 10.0, 1e2, 1e3, 1e4], size=third)
    lo_y = -1.2 if act == "tanh" else -0.2
    s = np.concatenate([rng.normal(size=third) * scale, rng.normal(size=third) * 10,
                        rng.normal(size=near) * rng.choice([0.1, 1.0, 3.0, 10.0], size=near)])
    extreme = np.where(rng.random(third) < 0.5, rng.uniform(lo_y, 1.2, third),
                       rng.normal(size=third) * scale)
    tail = rng.choice([-1, 1], size=third) * _log_uniform(rng, 2, 1e4, third)
    saturated = rng.choice([-1, 1], size=near) * rng.uniform(0.9, 0.9999, near)
    if act == "sigmoid":
        saturated = 0.5 + 0.5 * saturated
    y = np.concatenate([extreme, tail, saturated])
    w = np.concatenate([_log_uniform(rng, 1e-3, 1e3, third), _log_uniform(rng, 1, 1e3, third),
                        _log_uniform(rng, 10, 1e4, near)])
    return s, y, w


def softplus_queries(act, rng, n):
    """As `test_softplus_extreme_queries`: |s| to 1e5, y from 1e-30 to 1e5 and negative or near
    the graph, w from 1e-6 to 1e6."""
    s = rng.normal(size=n) * rng.choice([1e-8, 1e-3, 1.0, 30.0, 80.0, 1e3, 1e5], size=n)
    kind = rng.integers(0, 3, n)
    y = np.select([kind == 0, kind == 1], [np.exp(rng.uniform(-70, 11, n)), -np.exp(rng.uniform(-10, 11, n))],
                  np.logaddexp(0, s) * np.exp(rng.normal(size=n) * 0.1))
    return s, y, _log_uniform(rng, 1e-6, 1e6, n)


QUERIES = {"tanh": sigmoidal_queries, "sigmoid": sigmoidal_queries, "softplus": softplus_queries}
BEST = {"tanh": partial(least_cost.sigmoidal, "tanh"), "sigmoid": partial(least_cost.sigmoidal, "sigmoid"),
        "softplus": least_cost.softplus}


def failures(act, dtype, x, y, w, best, steps, ulps):
    """Queries the solver at `steps` Newton steps leaves worse than `best` beyond rounding."""
    name = TABLES[act]
    table = getattr(sum_act, name)
    setattr(sum_act, name, {**table, np.dtype(dtype).itemsize: steps})
    jax.clear_caches()  # the jitted projection keeps the step count it was traced with
    try:
        x2, y2 = (np.asarray(a) for a in sum_act.project_sum_act(x, y, act, w))
    finally:
        setattr(sum_act, name, table)
        jax.clear_caches()
    dist = np.sqrt(ref.sum_act_cost(x, y, x2, y2, w))
    return int(np.sum(~(dist <= best + least_cost.tolerance(x, y, w, dtype, ulps))))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=2000, help="queries per activation and dtype")
    parser.add_argument("--only", nargs="*", choices=sorted(TABLES), help="activations to check")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--k", type=int, default=2, help="inputs per constraint")
    parser.add_argument("--eps", type=float, default=None,
                        help="tolerance in eps of the magnitudes (default: the tests', 64 / 1000)")
    args = parser.parse_args(argv)
    print(f"{'activation':<10} {'dtype':<8} {'in code':>7} {'fewest':>6}  failures by steps")
    for act in args.only or ("tanh", "sigmoid", "softplus"):
        for dtype in (np.float32, np.float64):
            rng = np.random.default_rng(args.seed)
            s, y, w = QUERIES[act](act, rng, args.queries)
            x = np.stack([s / args.k] * args.k, -1).astype(dtype)
            y, w = y.astype(dtype), w.astype(dtype)
            best = BEST[act](x.astype(float).sum(-1), y, w, args.k)
            code = getattr(sum_act, TABLES[act])[np.dtype(dtype).itemsize]
            counts = {n: failures(act, dtype, x, y, w, best, n, args.eps) for n in range(1, code + 1)}
            clean = [n for n in counts if all(counts[m] == 0 for m in range(n, code + 1))]
            fewest = clean[0] if clean else f">{code}"  # from there on, no failures up to the code's
            trail = " ".join(f"{k}:{v}" for k, v in counts.items())
            print(f"{act:<10} {np.dtype(dtype).name:<8} {code:>7} {fewest:>6}  {trail}", flush=True)


if __name__ == "__main__":
    main()
