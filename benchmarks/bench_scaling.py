"""Time per iteration of a sharded projection program on 1, 2 and 4 devices, with the
communication the cost model predicts and the collectives XLA actually inserted.

On a CPU machine the devices are virtual (``--xla_force_host_platform_device_count``, set here
before JAX starts) and share the same cores, so the times check that sharding works and what
it costs in overhead; they do not show a speed-up. On a machine with several accelerators the
same command measures real scaling.

    python benchmarks/bench_scaling.py [--model models/mlp_digits.onnx] [--batch-size 256]
                                       [--iterations 20] [--reps 5] [--model-parallel 1] [--data digits]
                                       [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time

DEVICE_COUNTS = (1, 2, 4)
if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={max(DEVICE_COUNTS)}").strip()


import projc  # noqa: E402


def _collectives(program) -> dict[str, int]:
    """How many of each collective the compiled step contains (each counted once, wherever it is)."""
    from projc.artifact import _specs

    jitted = getattr(program.step, "jitted", None)
    if jitted is None:
        return {}
    text = jitted.lower(*_specs(program)).compile().as_text()
    found = re.findall(r" (all-reduce|all-gather|all-to-all|collective-permute|reduce-scatter)(?:-start)?\(", text)
    return {kind: found.count(kind) for kind in sorted(set(found))}


def _time(program, batches, reps: int) -> tuple[float, float]:
    """(seconds of the first call, median seconds of the later ones), whole minibatch steps."""
    params = dict(program.params)
    times = []
    for i in range(reps + 1):
        x, labels = batches[i % len(batches)]
        t0 = time.perf_counter()
        new, stats = program.step(params, x, labels)
        stats["finite"].block_until_ready()
        times.append(time.perf_counter() - t0)
    return times[0], statistics.median(times[1:])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="models/mlp_digits.onnx")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--model-parallel", type=int, default=1)
    ap.add_argument("--data", default="digits", help="a built-in data set that fits the model (mnist5k for the MNIST MLPs)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    import jax

    from projc.backends.jax.sharding import MeshShape, communication

    print(f"{args.model}, batch {args.batch_size}, {args.iterations} DR iterations per minibatch; "
          f"{jax.device_count()} {jax.default_backend()} devices, {os.cpu_count()} cores", flush=True)
    print(f"{'devices':>7} {'mesh':>7} {'ms/iteration':>13} {'first call s':>13} {'predicted all-reduce/iter':>26} "
          f"{'read-out':>9}  collectives in the compiled step")
    rows = []
    data = projc.load_dataset(args.data)
    for devices in DEVICE_COUNTS:
        mp = args.model_parallel if devices % args.model_parallel == 0 else 1
        program = projc.compile(args.model, batch_size=args.batch_size, iterations=args.iterations,
                                devices=devices, model_parallel=mp)
        x, y, _, _ = program.fit(data)
        b = args.batch_size
        batches = [(x[i * b:(i + 1) * b], program.one_hot(y[i * b:(i + 1) * b])) for i in range(len(x) // b)]
        first, per_step = _time(program, batches, args.reps)
        comm = communication(program.schedule, MeshShape(devices, mp), program.config.algorithm)
        row = {"devices": devices, "mesh": comm["mesh"], "ms_per_iteration": 1e3 * per_step / args.iterations,
               "first_call_s": first, "predicted_allreduce_bytes_per_iteration": comm["allreduce_bytes_per_iteration"],
               "predicted_allreduce_bytes_readout": comm["allreduce_bytes_readout"],
               "collectives": _collectives(program)}
        rows.append(row)
        mesh = f"{comm['mesh']['batch']}x{comm['mesh']['model']}"
        cols = ", ".join(f"{k} x{v}" for k, v in row["collectives"].items()) or "-"
        print(f"{devices:>7} {mesh:>7} {row['ms_per_iteration']:>13.2f} {first:>13.2f} "
              f"{row['predicted_allreduce_bytes_per_iteration']:>24,} B {row['predicted_allreduce_bytes_readout']:>7,} B"
              f"  {cols}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "batch_size": args.batch_size, "iterations": args.iterations,
                       "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
