"""Time one AP iteration materialised against factored (backends/jax/factored.py).

Two materialised paths and two factored ones (with and without the Gram form of the first layer).
The materialised: ``written-out`` writes every projected copy to the state (the
reference framework's layout), ``folded`` is what ``make_step`` runs on one device (a linear
group with data coefficients leaves its copies as base + low-rank term, see ``state.Shifted``).

The MNIST MLP 784-128-10 (models/mlp_mnist_128.onnx) at batch 256 by default, on a minibatch of
the built-in mnist5k set: both paths start from the same forward state, run ``--iterations``
AP iterations per jitted call (one ``lax.scan``, state donated), and are timed alternately in
the same run; the time per iteration is the median over ``--reps`` calls divided by the
iterations. Also printed: the state each path carries (bytes) and XLA's estimate of the peak
memory of the compiled call (arguments + outputs + temporaries, less what is aliased), and how
far apart the two paths' parameters end, and how far each float32 path ends from materialised
AP run in float64 for the same iterations (the rounding each path adds). Run: ``python benchmarks/bench_factored.py [--reps 7]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import projc.backends.jax  # noqa: F401  (x64 on: the states below are explicitly float32)
from projc.backends.jax import algorithms, factored
from projc.backends.jax.iterate import BlockProjector, read_parameters
from projc.backends.jax.program_forward import forward_values
from projc.backends.jax.state import init_state
from projc.datasets import load_dataset
from projc.frontend import load_model
from projc.passes.bipartize import bipartize
from projc.passes.lower_to_constraints import lower
from projc.passes.schedule_blocks import schedule

MODELS = Path(__file__).resolve().parents[1] / "models"


def _setup(model: str, batch: int, dataset: str):
    """Program, schedule, initial parameters and one minibatch."""
    onnx = load_model(MODELS / model, batch_size=batch)
    prog = lower(onnx)
    bipartize(prog)
    params = {n: v.const_value.numpy() for n, v in onnx.graph.initializers.items() if n in prog.variables}
    data = load_dataset(dataset)
    x = data.x_train[:batch].reshape(prog.variables["x"].shape).astype(np.float32)
    y = np.eye(prog.variables["labels"].shape[-1], dtype=np.float32)[data.y_train[:batch]]
    return prog, schedule(prog), params, x, y


def _bytes(tree) -> int:
    return sum(int(a.size) * a.dtype.itemsize for a in jax.tree.leaves(tree))


def _drift(want: dict, got: dict) -> float:
    """The largest relative difference between two parameter sets (max norm per parameter)."""
    return max(float(np.abs(np.asarray(want[n], np.float64) - np.asarray(got[n], np.float64)).max()
                     / np.abs(np.asarray(want[n], np.float64)).max()) for n in want)


def _peak(compiled) -> int | None:
    """XLA's memory estimate of a compiled call, or None where the backend gives none."""
    try:
        m = compiled.memory_analysis()
        return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes)
    except Exception:  # noqa: BLE001 - an estimate only; some backends lack it
        return None


class Runner:
    """A donated, jitted ``state -> state`` of ``iterations`` AP iterations, timed call by call."""

    def __init__(self, name: str, fn, state):
        # own buffers: the states of both paths may share arrays (the forward values), and donation
        # deletes the arguments
        state = jax.tree.map(jnp.copy, state)
        self.name, self.fn, self.state = name, jax.jit(fn, donate_argnums=0), state
        self.state_bytes = _bytes(state)
        start = time.perf_counter()
        self.compiled = self.fn.lower(state).compile()
        self.compile_s = time.perf_counter() - start
        self.peak = _peak(self.compiled)
        self.times: list[float] = []

    def call(self) -> None:
        start = time.perf_counter()
        self.state = jax.block_until_ready(self.compiled(self.state))
        self.times.append(time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="mlp_mnist_128.onnx")
    ap.add_argument("--dataset", default="mnist5k")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--iterations", type=int, default=10, help="AP iterations per timed call")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()

    prog, sched, params, x, y = _setup(args.model, args.batch, args.dataset)
    proj = BlockProjector(sched, {"x": x, "labels": y})
    folded = BlockProjector(sched, {"x": x, "labels": y}, lazy=True)
    plan = factored.choose(sched, "ap", "on")
    fap = factored.FactoredAP(proj, plan)
    plain = factored.FactoredAP(proj, plan, gram=False)  # every group in the plain factored form
    values = forward_values(prog, {"x": x, **params})
    k = args.iterations

    runners = [
        Runner("written-out", lambda s: algorithms.run(proj.project, 2, s, "ap", k, monitor=False)[0],
               init_state(prog, values)),
        Runner("folded", lambda s: algorithms.run(folded.project, 2, s, "ap", k, monitor=False)[0],
               init_state(prog, values)),
        Runner("factored", lambda s: factored.run(fap, s, k, monitor=False)[0], fap.init(values)),
        Runner("factored-plain", lambda s: factored.run(plain, s, k, monitor=False)[0], plain.init(values)),
    ]
    for r in runners:  # warm-up: first calls touch fresh buffers
        r.call()
    for r in runners:
        r.times.clear()
    for _ in range(args.reps):  # alternate, so that load on the machine hits both alike
        for r in runners:
            r.call()

    mat, _, fac, _ = runners
    ms = {r.name: 1e3 * statistics.median(r.times) / k for r in runners}
    mat_params, fac_params = read_parameters(proj, mat.state), fap.parameters(fac.state)
    drift = _drift(mat_params, fac_params)
    total = k * (args.reps + 1)
    proj64 = BlockProjector(sched, {"x": x, "labels": y}, dtype=jnp.float64)
    exact = jax.jit(lambda s: read_parameters(proj64, algorithms.run(
        proj64.project, 2, s, "ap", total, monitor=False)[0]))(init_state(prog, values, jnp.float64))
    error = {"written-out": _drift(exact, mat_params), "factored": _drift(exact, fac_params)}
    print(f"{args.model} batch {args.batch}, {k} AP iterations per call, {args.reps} calls each, "
          f"{jax.devices()[0].platform} ({jax.device_count()} device), float32")
    print(f"factored groups: {', '.join(plan.groups)}; variables carried as one value: {', '.join(plan.variables)}; "
          f"in Gram form: {', '.join(fap.gram) or 'none'}")
    head = ("path", "ms/iteration", "min", "max", "state MiB", "XLA peak MiB", "compile s")
    print("{:<15} {:>12} {:>8} {:>8} {:>10} {:>13} {:>10}".format(*head))
    for r in runners:
        per = [1e3 * t / k for t in r.times]
        peak = f"{r.peak / 2**20:13.1f}" if r.peak is not None else f"{'n/a':>13}"
        print(f"{r.name:<15} {ms[r.name]:12.2f} {min(per):8.2f} {max(per):8.2f} {r.state_bytes / 2**20:10.2f} "
              f"{peak} {r.compile_s:10.1f}")
    ratio = ms["written-out"] / ms["factored"]
    print(f"speed-up (median): {ratio:.1f}x over written-out copies, {ms['folded'] / ms['factored']:.1f}x over folded, "
          f"{ms['factored-plain'] / ms['factored']:.2f}x over factored without the Gram form; "
          f"state {mat.state_bytes / fac.state_bytes:.0f}x smaller; "
          f"parameters after {total} iterations differ by {drift:.1e} (relative, max)")
    print(f"distance to float64 materialised AP after {total} iterations (relative, max): "
          f"written-out {error['written-out']:.1e}, factored {error['factored']:.1e}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "model": args.model, "batch": args.batch, "iterations_per_call": k, "reps": args.reps,
            "ms_per_iteration": ms, "speedup": ratio, "speedup_over_folded": ms["folded"] / ms["factored"],
            "parameter_drift": drift, "error_vs_float64": error,
            "state_bytes": {r.name: r.state_bytes for r in runners},
            "xla_peak_bytes": {r.name: r.peak for r in runners},
            "times_s": {r.name: r.times for r in runners}}, indent=2))


if __name__ == "__main__":
    main()
