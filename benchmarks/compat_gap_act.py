"""How far PJAX's relu projection and cross-entropy prox land from the exact operators.

Queries are like the ones Douglas-Rachford feeds an operator: raw Gaussian points and their
reflections `2 P(z) - z` through the exact operator, at several scales. For each query it
compares the PJAX-compatible result with the exact one (float64) and prints, per row:

- worse: the fraction of queries where the compatible result is farther from the query than
  the exact projection (relu) or has a larger prox objective (cross-entropy), beyond 1e-9;
- med / p90 excess: over those queries, the relative excess of the distance (relu,
  `d_compat / d_exact - 1`) or of the objective (CE, `(F_compat - F*) / |F*|`);
- med / p90 gap: over all queries, `|compat - exact| / (|exact| + 1e-12)`.

Run: `python benchmarks/compat_gap_act.py [--n 20000] [--seed 0]`.
"""

from __future__ import annotations

import argparse

import numpy as np

import projc.backends.jax  # noqa: F401  (x64)
from projc.backends.jax.projections.losses import prox_cross_entropy
from projc.backends.jax.projections.sum_act import project_sum_act
from projc.backends.reference.projections_act import ce_objective, sum_act_cost


def _stats(worse, excess, gap):
    """(fraction worse, median and p90 excess among the worse ones, median and p90 gap)."""
    ex = excess[worse]
    q = np.percentile(ex, [50, 90]) if ex.size else [0.0, 0.0]
    return worse.mean(), q[0], q[1], *np.percentile(gap, [50, 90])


def _relu_row(x, y, w):
    exact = [np.asarray(a) for a in project_sum_act(x, y, "relu", w)]
    compat = [np.asarray(a) for a in project_sum_act(x, y, "relu", w, compat=True)]
    d_exact = np.sqrt(sum_act_cost(x, y, *exact, w))
    d_compat = np.sqrt(sum_act_cost(x, y, *compat, w))
    worse = d_compat > d_exact * (1 + 1e-9) + 1e-12
    excess = d_compat / np.maximum(d_exact, 1e-300) - 1
    pe, pc = (np.concatenate([a, b[:, None]], -1) for a, b in (exact, compat))
    gap = np.linalg.norm(pc - pe, axis=-1) / (np.linalg.norm(pe, axis=-1) + 1e-12)
    return _stats(worse, excess, gap)


def _relu_queries(rng, n, sigma, w, reflect):
    x, y = rng.normal(size=(n, 2)) * sigma, rng.normal(size=n) * sigma
    if reflect:
        px, py = (np.asarray(a) for a in project_sum_act(x, y, "relu", w))
        x, y = 2 * px - x, 2 * py - y
    return x, y


def _ce_row(v, y, lam):
    exact = np.asarray(prox_cross_entropy(v, y, lam))
    compat = np.asarray(prox_cross_entropy(v, y, lam, compat=True))
    f_exact, f_compat = ce_objective(exact, v, y, lam), ce_objective(compat, v, y, lam)
    worse = f_compat > f_exact + 1e-9 * (1 + np.abs(f_exact))
    excess = (f_compat - f_exact) / np.maximum(np.abs(f_exact), 1e-300)
    gap = np.linalg.norm(compat - exact, axis=-1) / (np.linalg.norm(exact, axis=-1) + 1e-12)
    return _stats(worse, excess, gap)


def _ce_queries(rng, n, sigma, lam, reflect, classes=10):
    v = rng.normal(size=(n, classes)) * sigma
    y = np.eye(classes)[rng.integers(0, classes, n)]
    if reflect:
        v = 2 * np.asarray(prox_cross_entropy(v, y, lam)) - v
    return v, y


def _print_table(title, rows):
    head = f"{'case':<34}{'worse':>8}{'med exc':>10}{'p90 exc':>10}{'med gap':>10}{'p90 gap':>10}"
    print(f"\n{title}\n{head}\n{'-' * len(head)}")
    for name, (frac, m_ex, p_ex, m_gap, p_gap) in rows:
        print(f"{name:<34}{frac:>8.1%}{m_ex:>10.3g}{p_ex:>10.3g}{m_gap:>10.3g}{p_gap:>10.3g}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000, help="queries per row")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    relu_rows, ce_rows = [], []
    for reflect in (False, True):
        for sigma in (0.3, 1.0, 3.0, 10.0):
            for w in (1.0, 4.0):
                x, y = _relu_queries(rng, args.n, sigma, w, reflect)
                name = f"{'reflected' if reflect else 'raw'} sigma={sigma:g} w={w:g}"
                relu_rows.append((name, _relu_row(x, y, np.full(args.n, w))))
            v, y = _ce_queries(rng, args.n, sigma, 5.0, reflect)
            ce_rows.append((f"{'reflected' if reflect else 'raw'} sigma={sigma:g} lam=5",
                            _ce_row(v, y, 5.0)))
    _print_table("sum_relu, k = 2 (PJAX compat vs exact; compat ignores w)", relu_rows)
    _print_table("cross-entropy prox, C = 10 (PJAX 10 fixed-point steps vs the exact prox)",
                 ce_rows)


if __name__ == "__main__":
    main()
