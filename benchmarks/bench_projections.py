"""Time the projection operators on tensors the size an MNIST MLP (784-128, batch 256) produces.

For each operator: median time per jitted call, the bytes its inputs and outputs occupy, the
effective bandwidth, and the ratio of its time per byte to a plain jitted `x + y`'s (the two
called alternately, the median of the per-pair ratios; the copy's own median is the last row),
and the bytes XLA's cost analysis counts for one call (every pass over memory; it does not
vary between runs as the times do).
Run: `python benchmarks/bench_projections.py [--reps 7] [--json out.json]`.
Operators of `sum_act` and `losses` join the table when those modules exist. With
`--baseline DIR` (a copy of `backends/jax/projections` from another version), each operator is
also timed with DIR's modules right after, in the same run: before/after ratios side by side.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import pathlib
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import projc.backends.jax  # noqa: F401  (x64 on: every array below is explicitly float32)
B, M, N = 256, 128, 784  # batch, neurons, inputs of the MLP's first layer
F32 = np.float32


def _normal(rng, *shape):
    return jnp.asarray(rng.normal(size=shape).astype(F32))


def _identity(mods, rng):
    return mods["identity"].project_identity, (_normal(rng, B, M, N), _normal(rng, B, M, N)), {}


def _linear(mods, rng):
    # dot(data, W) with constant data: linear in the weight copies, c = the data rows
    return mods["linear"].project_linear, (_normal(rng, B, M, N), _normal(rng, B, M), _normal(rng, B, 1, N)), {}


def _dot_query(rng):
    a, b = _normal(rng, B, M, N), _normal(rng, B, M, N)
    z = jnp.sum(a * b, -1) + 10 * _normal(rng, B, M)  # offsets as after a DR reflection
    return a, b, z


def _dot(mods, rng):
    return mods["dot"].project_dot, _dot_query(rng), {}


def _dot_compat(mods, rng):
    return mods["dot"].project_dot, _dot_query(rng), {"compat": True}


def _mul(mods, rng):
    a, b = _normal(rng, B, M, N // 8), _normal(rng, B, M, N // 8)
    return mods["dot"].project_mul, (a, b, a * b + _normal(rng, B, M, N // 8)), {}


def _max_pool(mods, rng):
    # 2x2 max pooling windows: n = 4
    return mods["maxproj"].project_max, (_normal(rng, B, M, N // 4, 4), _normal(rng, B, M, N // 4)), {}


def _max_global(mods, rng):
    return mods["maxproj"].project_max, (_normal(rng, B, M, N), _normal(rng, B, M)), {}


def _sum_act(act, slots):
    def make(module):
        def build(mods, rng):
            # a bias add and its activation: k = 2 inputs per constraint
            x, y = _normal(rng, B, M, N // 2, 2), _normal(rng, B, M, N // 2)
            if slots:  # the state's layout: one array per slot
                x = (x[..., 0], x[..., 1])
            return mods.get("sum_act", module).project_sum_act, (x, y), {"act": act}

        return build

    return make


def _cross_entropy(module):
    def build(mods, rng):
        rows, classes = B * 1024, 10
        y = jax.nn.one_hot(rng.integers(classes, size=rows), classes, dtype=F32)
        return mods.get("losses", module).prox_cross_entropy, (3 * _normal(rng, rows, classes), y), {}

    return build


def _optional(name, entries):
    """`(name, builder)` entries from a sibling module, if it has been written."""
    try:
        module = importlib.import_module(f"projc.backends.jax.projections.{name}")
    except ImportError:
        return []
    return [(label, make(module)) for label, make in entries]


MODULES = ("identity", "linear", "dot", "maxproj", "sum_act", "losses")


def load_modules(directory=None):
    """The operator modules by name: the package's, or the files of `directory` (a baseline
    copy; its modules import only jax and numpy). Missing ones are left out."""
    mods = {}
    for name in MODULES:
        if directory is None:
            try:
                mods[name] = importlib.import_module(f"projc.backends.jax.projections.{name}")
            except ImportError:
                continue
        else:
            path = pathlib.Path(directory) / f"{name}.py"
            if not path.exists():
                continue
            spec = importlib.util.spec_from_file_location(f"_baseline_{name}", path)
            mods[name] = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = mods[name]  # dataclasses look their module up there
            spec.loader.exec_module(mods[name])
    return mods


def operators():
    """The table of `(name, builder)`; a builder `(modules, rng)` returns
    `(fn, args, static kwargs)`."""
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
            ("sum_act sigmoid k=2 (slots)", _sum_act("sigmoid", True)),
            ("sum_act softplus k=2 (slots)", _sum_act("softplus", True)),
            ("sum_act sign k=2 (slots)", _sum_act("sign", True)),
        ]),
        *_optional("losses", [("prox cross-entropy C=10", _cross_entropy)]),
    ]


def _paired_times(fn, args, copy, copy_args, reps):
    """Times of `fn(*args)` and of `copy(*copy_args)`, called alternately `reps` times each.

    The host's speed drifts between runs (the same copy has measured 14 and 81 ms in two
    runs of this script); alternating puts the operator and its reference under the same
    conditions, and the ratio is taken per pair.
    """
    for f, a in ((fn, args), (copy, copy_args)):
        jax.block_until_ready(f(*a))  # warm caches and allocator
        jax.block_until_ready(f(*a))
    op_times, copy_times = [], []
    for _ in range(reps):
        for f, a, times in ((copy, copy_args, copy_times), (fn, args, op_times)):
            start = time.perf_counter()
            jax.block_until_ready(f(*a))
            times.append(time.perf_counter() - start)
    return op_times, copy_times


def _nbytes(tree):
    return sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(tree)
               if hasattr(x, "dtype") and x.dtype != jnp.dtype("O"))


def _copy_reference(rng):
    """`x + y` on two (B, M, N) arrays: the compiled function, its arguments, its bytes."""
    x, y = _normal(rng, B, M, N), _normal(rng, B, M, N)
    return jax.jit(jnp.add).lower(x, y).compile(), (x, y), 3 * x.nbytes


def _time_row(name, build, mods, rng, reps, reference):
    """One result row: `build`'s operator from `mods`, timed alternately with `reference`.

    `ratio` is the median over the pairs of (operator time per byte) / (copy time per byte).
    """
    fn, args, kwargs = build(mods, rng)
    jitted = jax.jit(lambda *a, fn=fn, kw=kwargs: fn(*a, **kw))
    compiled = jitted.lower(*args).compile()  # timed and cost-analysed: compiled once
    copy, copy_args, copy_bytes = reference
    op_times, copy_times = _paired_times(compiled, args, copy, copy_args, reps)
    moved = _nbytes(args) + _nbytes(jax.eval_shape(jitted, *args))
    seconds = statistics.median(op_times)
    ratios = [(t / moved) / (c / copy_bytes) for t, c in zip(op_times, copy_times)]
    return {"name": name, "ms": seconds * 1e3, "mbytes": moved / 1e6,
            "gb_s": moved / seconds / 1e9, "ratio": statistics.median(ratios),
            "copy_ms": statistics.median(copy_times) * 1e3,
            "xla_mbytes": _xla_bytes(compiled) / 1e6}


def _xla_bytes(compiled):
    """Bytes XLA's cost analysis counts for one call: every pass over memory of the compiled
    program (a loop's body once). Unlike the times, it does not vary between runs."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost.get("bytes accessed", float("nan")))


def measure(reps, report=lambda row: None, only="", baseline=None):
    """Rows of results: one per operator (whose name contains `only`), then the `x + y`
    reference over all its runs; `report` sees each row as it is measured. With `baseline`
    (a directory of operator modules) each operator is followed by a row timing the
    baseline's version on the same inputs."""
    mods = load_modules()
    base = None if baseline is None else load_modules(baseline)
    rng = np.random.default_rng(0)
    reference = _copy_reference(rng)
    rows = []
    for name, build in operators():
        if only not in name:
            continue
        state = rng.bit_generator.state  # the baseline gets the same inputs
        rows.append(_time_row(name, build, mods, rng, reps, reference))
        report(rows[-1])
        if base is not None:
            rng.bit_generator.state = state
            rows.append({**_time_row(name, build, base, rng, reps, reference),
                         "name": "  (baseline)", "baseline_of": name})
            report(rows[-1])
    copy_ms = statistics.median(r["copy_ms"] for r in rows) if rows else float("nan")
    copy_bytes = reference[2]
    rows.append({"name": "x + y (reference)", "ms": copy_ms, "mbytes": copy_bytes / 1e6,
                 "gb_s": copy_bytes / copy_ms / 1e6, "ratio": 1.0, "copy_ms": copy_ms,
                 "xla_mbytes": _xla_bytes(reference[0]) / 1e6})
    report(rows[-1])
    return rows


def _print_header():
    print(f"{'operator':28s} {'ms/call':>9s} {'MB moved':>9s} {'GB/s':>7s} {'x copy':>7s} "
          f"{'copy ms':>8s} {'XLA MB':>8s}")


def _print_row(r):
    print(f"{r['name']:28s} {r['ms']:9.1f} {r['mbytes']:9.0f} {r['gb_s']:7.2f} {r['ratio']:7.2f} "
          f"{r['copy_ms']:8.1f} {r['xla_mbytes']:8.0f}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5, help="timed runs per operator")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--only", default="", help="operators whose name contains this")
    parser.add_argument("--baseline", metavar="DIR",
                        help="also time the operator modules in DIR (e.g. an earlier copy of "
                             "backends/jax/projections), each right after the current one")
    args = parser.parse_args()
    _print_header()
    rows = measure(args.reps, _print_row, args.only, args.baseline)
    if args.json:
        meta = {"schema": 2, "devices": str(jax.devices()), "shape": [B, M, N], "reps": args.reps}
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
