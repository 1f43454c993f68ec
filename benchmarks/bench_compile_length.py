"""Compile time of a recurrent model's training step against its sequence length (issue 6).

Builds one-layer LSTM classifiers that differ only in the number of time steps (hidden 32,
8 features per step, 10 classes: the digits LSTM's sizes), compiles each one's minibatch step
(``projc.compile(...).step.lower(...).compile()``, the training step ``projc train`` runs,
Douglas-Rachford) and reports trace (+ lowering) and full compile wall-clock time, the median
over ``--repeats`` compiles, the lengths alternated so that load on the machine hits them
alike. Each compile is of a fresh step (a new ``jax.jit``), so no in-process cache serves it,
and the persistent compilation cache is off (``projc.compile`` leaves it to the CLI).

Run: ``python benchmarks/bench_compile_length.py [--steps 8 64] [--repeats 3] [--op LSTM]``.
The target (issue 6) is the ratio of the longest to the shortest: at most 1.5.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import projc

GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}
HIDDEN, FEATURES, CLASSES = 32, 8, 10


def build(path: Path, op: str, steps: int) -> Path:
    """A ``op`` layer over ``steps`` steps, its last hidden state into a Gemm head."""
    rng = np.random.default_rng(0)
    g = GATES[op]

    def arr(name, *shape):
        return numpy_helper.from_array((0.3 * rng.standard_normal(shape)).astype(np.float32), name)

    inits = [arr("W", 1, g * HIDDEN, FEATURES), arr("R", 1, g * HIDDEN, HIDDEN), arr("B", 1, 2 * g * HIDDEN),
             arr("head", CLASSES, HIDDEN), arr("head_b", CLASSES),
             numpy_helper.from_array(np.array([0], np.int64), "axes")]
    nodes = [
        # projc trains batch-first models; ONNX recurrences are sequence-major
        helper.make_node("Transpose", ["x"], ["seq"], perm=[1, 0, 2], name="to_seq"),
        helper.make_node(op, ["seq", "W", "R", "B"], ["Y", "Y_h"], hidden_size=HIDDEN, name="rec"),
        helper.make_node("Squeeze", ["Y_h", "axes"], ["h"], name="squeeze"),
        helper.make_node("Gemm", ["h", "head", "head_b"], ["logits"], transB=1, name="fc"),
    ]
    graph = helper.make_graph(
        nodes, f"{op.lower()}_{steps}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", steps, FEATURES])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", CLASSES])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def compile_once(path: Path, steps: int, batch: int, iterations: int) -> tuple[float, float]:
    """(trace + lower seconds, trace + lower + compile seconds) of one fresh step."""
    program = projc.compile(path, batch_size=batch, iterations=iterations)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((batch, steps, FEATURES)).astype(np.float32)
    labels = np.eye(CLASSES, dtype=np.float32)[rng.integers(0, CLASSES, batch)]
    start = time.perf_counter()
    lowered = program.step.lower(program.params, x, labels)
    traced = time.perf_counter() - start
    lowered.compile()
    return traced, time.perf_counter() - start


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--op", choices=sorted(GATES), default="LSTM")
    ap.add_argument("--steps", type=int, nargs="+", default=[8, 64])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--iterations", type=int, default=20, help="DR iterations per minibatch")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    times = {t: [] for t in args.steps}
    with tempfile.TemporaryDirectory() as tmp:
        paths = {t: build(Path(tmp) / f"{args.op.lower()}_{t}.onnx", args.op, t) for t in args.steps}
        for _ in range(args.repeats):
            for t in args.steps:
                times[t].append(compile_once(paths[t], t, args.batch, args.iterations))

    base = statistics.median(c for _, c in times[args.steps[0]])
    print(f"{args.op} hidden {HIDDEN}, {FEATURES} features, batch {args.batch}, DR {args.iterations} iterations, "
          f"{args.repeats} compiles per length (median; min-max)")
    print(f"{'steps':>6} {'trace s':>8} {'compile s':>10} {'range':>13} {'x shortest':>11}")
    for t in args.steps:
        trace = statistics.median(a for a, _ in times[t])
        total = [c for _, c in times[t]]
        med = statistics.median(total)
        print(f"{t:>6} {trace:8.2f} {med:10.2f} {min(total):6.2f}-{max(total):<6.2f} {med / base:11.2f}")
    if args.json:
        args.json.write_text(json.dumps({"op": args.op, "batch": args.batch, "iterations": args.iterations,
                                         "times_s": {str(t): v for t, v in times.items()}}, indent=2))


if __name__ == "__main__":
    main()
