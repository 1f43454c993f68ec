"""Time the projection operators on tensors the size an MNIST MLP (784-128, batch 256) produces.

For each operator: median time per jitted call, the bytes its inputs and outputs occupy, the
effective bandwidth, and the ratio to a plain jitted `x + y` moving the same bytes (measured
in the same run). Run: `python benchmarks/bench_projections.py [--reps 7] [--json out.json]`.
Operators of `sum_act` and `losses` join the table when those modules exist.
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import projc.backends.jax  # noqa: F401  (x64 on: every array below is explicitly float32)
from projc.backends.jax.projections.dot import project_dot, project_mul
from projc.backends.jax.projections.identity import project_identity
from projc.backends.jax.projections.linear import project_linear
from projc.backends.jax.projections.maxproj import project_max

B, M, N = 256, 128, 784  # batch, neurons, inputs of the MLP's first layer
F32 = np.float32


def _normal(rng, *shape):
    return jnp.asarray(rng.normal(size=shape).astype(F32))


def _identity(rng):
    return project_identity, (_normal(rng, B, M, N), _normal(rng, B, M, N)), {}


def _linear(rng):
    # dot(data, W) with constant data: linear in the weight copies, c = the data rows
    return project_linear, (_normal(rng, B, M, N), _normal(rng, B, M), _normal(rng, B, 1, N)), {}


def _dot_query(rng):
    a, b = _normal(rng, B, M, N), _normal(rng, B, M, N)
    z = jnp.sum(a * b, -1) + 10 * _normal(rng, B, M)  # offsets as after a DR reflection
    return a, b, z


def _dot(rng):
    return project_dot, _dot_query(rng), {}


def _dot_compat(rng):
    return project_dot, _dot_query(rng), {"compat": True}


def _mul(rng):
    a, b = _normal(rng, B, M, N // 8), _normal(rng, B, M, N // 8)
    return project_mul, (a, b, a * b + _normal(rng, B, M, N // 8)), {}


def _max_pool(rng):
    # 2x2 max pooling windows: n = 4
    return project_max, (_normal(rng, B, M, N // 4, 4), _normal(rng, B, M, N // 4)), {}


def _max_global(rng):
    return project_max, (_normal(rng, B, M, N), _normal(rng, B, M)), {}


def _sum_act(act, slots):
    def make(module):
        def build(rng):
            # a bias add and its activation: k = 2 inputs per constraint
            x, y = _normal(rng, B, M, N // 2, 2), _normal(rng, B, M, N // 2)
            if slots:  # the state's layout: one array per slot
                x = (x[..., 0], x[..., 1])
            return module.project_sum_act, (x, y), {"act": act}

        return build

    return make


def _cross_entropy(module):
    def build(rng):
        rows, classes = B * 1024, 10
        y = jax.nn.one_hot(rng.integers(classes, size=rows), classes, dtype=F32)
        return module.prox_cross_entropy, (3 * _normal(rng, rows, classes), y), {}

    return build


def _optional(name, entries):
    """`(name, builder)` entries from a sibling module, if it has been written."""
    try:
        module = importlib.import_module(f"projc.backends.jax.projections.{name}")
    except ImportError:
        return []
    return [(label, make(module)) for label, make in entries]


def operators():
    """The table of `(name, builder)`; a builder returns `(fn, args, static kwargs)`."""
    return [
        ("identity", _identity),
        ("linear (c = data rows)", _linear),
        ("dot 784", _dot),
        ("dot 784 compat", _dot_compat),
        ("mul", _mul),
        ("max n=4 (pool)", _max_pool),
        ("max n=784 (global)", _max_global),
        *_optional("sum_act", [
            ("sum_act relu k=2 (slots)", _sum_act("relu", True)),
            ("sum_act relu k=2 (stacked)", _sum_act("relu", False)),
            ("sum_act tanh k=2 (slots)", _sum_act("tanh", True)),
            ("sum_act sign k=2 (slots)", _sum_act("sign", True)),
        ]),
        *_optional("losses", [("prox cross-entropy C=10", _cross_entropy)]),
    ]


def _median_time(fn, args, reps):
    jax.block_until_ready(fn(*args))  # compile
    jax.block_until_ready(fn(*args))  # warm caches and allocator
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _nbytes(tree):
    return sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(tree)
               if hasattr(x, "dtype") and x.dtype != jnp.dtype("O"))


def _copy_bandwidth(rng, reps):
    x, y = _normal(rng, B, M, N), _normal(rng, B, M, N)
    seconds = _median_time(jax.jit(jnp.add), (x, y), reps)
    return 3 * x.nbytes / seconds


def measure(reps, report=lambda row: None, only=""):
    """Rows of results: one per operator (whose name contains `only`), plus the `x + y`
    reference; `report` sees each row as it is measured."""
    rng = np.random.default_rng(0)
    copy_bw = _copy_bandwidth(rng, reps)
    rows = [{"name": "x + y (reference)", "ms": 3 * B * M * N * 4 / copy_bw * 1e3,
             "mbytes": 3 * B * M * N * 4 / 1e6, "gb_s": copy_bw / 1e9, "ratio": 1.0}]
    report(rows[0])
    for name, build in operators():
        if only not in name:
            continue
        fn, args, kwargs = build(rng)
        jitted = jax.jit(lambda *a, fn=fn, kw=kwargs: fn(*a, **kw))
        seconds = _median_time(jitted, args, reps)
        moved = _nbytes(args) + _nbytes(jax.eval_shape(jitted, *args))
        rows.append({"name": name, "ms": seconds * 1e3, "mbytes": moved / 1e6,
                     "gb_s": moved / seconds / 1e9, "ratio": seconds * copy_bw / moved})
        report(rows[-1])
        del args
    return rows


def _print_header():
    print(f"{'operator':28s} {'ms/call':>9s} {'MB moved':>9s} {'GB/s':>7s} {'x copy':>7s}")


def _print_row(r):
    print(f"{r['name']:28s} {r['ms']:9.1f} {r['mbytes']:9.0f} {r['gb_s']:7.2f} {r['ratio']:7.2f}",
          flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5, help="timed runs per operator")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--only", default="", help="operators whose name contains this")
    args = parser.parse_args()
    _print_header()
    rows = measure(args.reps, _print_row, args.only)
    if args.json:
        meta = {"schema": 1, "devices": str(jax.devices()), "shape": [B, M, N], "reps": args.reps}
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
