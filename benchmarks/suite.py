"""The performance suite (issue 6): per model and algorithm, what one iteration costs.

For each (model, algorithm) it prints and records:
- compile time of the minibatch step (``jax.jit(...).lower(...).compile()``, wall clock), the
  part of it spent tracing and lowering, and the number of kernels XLA emits (deterministic,
  unlike the times; see ``kernel_count``);
- time per iteration: the median over repeats of ``--iterations`` iterations run in one
  compiled ``lax.scan`` from a forward-pass state, divided by the count; for AP also the
  factored iteration (backends/jax/factored.py) where it applies, which is what the step runs;
  where the step holds a first layer's weight copies factored (``state.Lowrank``), also the
  iteration with every copy in memory, as before that form, and where it holds them in Gram
  form (``state.GramLowrank``), the iteration without it, measured in the same run;
- state bytes (of every copy written out, and as the step holds them), and XLA's cost
  analysis of one iteration (bytes accessed, flops);
- memory of the compiled step (arguments, outputs and temporaries, from XLA's memory analysis);
- the bandwidth ratio: time per iteration over the time of streaming the state, written out,
  once in and once out (``x * 0.5 + 1`` over every state array, iterated in a scan like the algorithm,
  measured in the same run; for a bfloat16-stored case still the float32 state, so the ratio
  shows the gain).

Run: ``python benchmarks/suite.py [--only NAME ...] [--json out.json]``; compare two result
files with ``python benchmarks/suite.py compare old.json new.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import re
import statistics
import sys
import time
from pathlib import Path

import jax

import projc
from projc.backends.jax import algorithms, factored
from projc.backends.jax.iterate import BlockProjector
from projc.backends.jax.program_forward import forward_values
from projc.backends.jax.state import dense
from projc.backends.jax.train_step import STATE_DTYPES, io_names

MODELS = Path(__file__).resolve().parents[1] / "models"


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    model: str
    data: str
    algorithm: str = "dr"
    batch: int = 256
    state_dtype: str = "float32"  # the iterate's storage between iterations


CASES = [
    Case("mlp784-128-dr", "mlp_mnist_128.onnx", "mnist5k"),
    Case("mlp784-128-dr-bf16", "mlp_mnist_128.onnx", "mnist5k", state_dtype="bfloat16"),
    Case("mlp784-128-ap", "mlp_mnist_128.onnx", "mnist5k", "ap"),
    Case("mlp784-64-dr", "mlp_mnist.onnx", "mnist5k"),
    Case("mlp64-32-dr", "mlp_digits.onnx", "digits"),
    Case("mlp40-128-dr", "mlp_mnist1d.onnx", "mnist1d"),
    Case("cnn-digits-dr", "cnn_digits.onnx", "digits"),
    Case("lstm-digits-dr", "lstm_digits.onnx", "digits"),
]


# instructions that launch no kernel of their own (control flow's bodies are counted instead)
_NO_KERNEL = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "while", "conditional",
              "call", "opt-barrier", "after-all", "copy-start", "copy-done"}


def kernel_count(compiled) -> int:
    """How many kernels XLA emits for a compiled function: the instructions of its entry and of
    the bodies, conditions and branches of its control flow, fusions counted once.

    XLA-CPU compiles each kernel with LLVM (tens of ms each on the project's machines) and
    dispatches it at run time (microseconds each), so this count is a deterministic proxy for
    compile time, and for the time per iteration of small models. A rough one: XLA compiles
    identical fusions once, and a kernel's LLVM time varies from a few ms to hundreds (the
    MNIST 784-128 DR step counts 133 kernels without its final violation and 232 with it,
    whose projections repeat the loop's, and its XLA compile took 1.7-2.7 s and 2.4-3.5 s,
    within each other's noise; the LSTM digits step counts 933 and 1741 and took 10-11 s and
    15-19 s).
    """
    text = compiled.as_text()
    blocks = {m.group(2): m.group(3) for m in re.finditer(r"^(ENTRY )?%?([\w.\-]+) [^\n]*\{\n(.*?)\n\}", text, re.M | re.S)}
    entry = re.search(r"^ENTRY %?([\w.\-]+)", text, re.M).group(1)
    # the op of an instruction line: the first name before "(" after the (maybe tuple) type;
    # a tuple type of six or more holds "/*index=5*/", so the "=" cannot delimit it
    op_of = re.compile(r"\s*(?:ROOT )?%?[\w.\-]+ = .*? ([a-z][\w\-]*)\(")
    hosts, todo = set(), [entry]
    while todo:  # the entry and every computation its control flow runs
        name = todo.pop()
        if name in hosts or name not in blocks:
            continue
        hosts.add(name)
        for line in blocks[name].splitlines():
            op = op_of.match(line)
            if op and op.group(1) in ("while", "conditional", "call"):
                todo += re.findall(r"(?:body|condition|to_apply|true_computation|false_computation)=%?([\w.\-]+)", line)
                for group in re.findall(r"branch_computations=\{([^}]*)\}", line):
                    todo += [b.strip().lstrip("%") for b in group.split(",")]
    count = 0
    for name in hosts:
        for line in blocks[name].splitlines():
            op = op_of.match(line)
            count += bool(op) and op.group(1) not in _NO_KERNEL
    return count


def _median_time(fn, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(case: Case, iterations: int, repeats: int) -> dict:
    program = projc.compile(MODELS / case.model, batch_size=case.batch, algorithm=case.algorithm,
                            state_dtype=case.state_dtype)
    storage = STATE_DTYPES[case.state_dtype]
    sched = program.schedule
    prog = sched.program
    data_var, label_var, _ = io_names(prog)
    x, y, _, _ = program.fit(projc.load_dataset(case.data))
    xb, lb = x[:case.batch], program.one_hot(y[:case.batch])

    start = time.perf_counter()
    lowered = program.step.lower(program.params, xb, lb)
    trace_s = time.perf_counter() - start
    compiled_step = lowered.compile()
    compile_s = time.perf_counter() - start
    memory = compiled_step.memory_analysis()

    def iteration_time(proj):
        state = jax.jit(lambda p: proj.initial_state(forward_values(prog, {data_var: xb, **p})))(program.params)
        run = jax.jit(lambda s: algorithms.run(proj.project, proj.blocks, s, case.algorithm, iterations,
                                               monitor=False, storage=storage)[0])
        return _median_time(run, state, repeats=repeats) / iterations, state

    lowrank = BlockProjector(sched, lowrank=True).with_data({data_var: xb, label_var: lb})  # as make_step builds it
    written = BlockProjector(sched, lazy=True).with_data({data_var: xb, label_var: lb})  # every copy in memory
    no_gram = BlockProjector(sched, lowrank=True, gram=False).with_data({data_var: xb, label_var: lb})
    per_iteration, state = iteration_time(lowrank)
    slots = lowrank.lowrank_slots(prog)
    written_s = iteration_time(written)[0] if slots else None
    no_gram_s = iteration_time(no_gram)[0] if lowrank.gram_slots(prog, slots) else None
    proj = lowrank
    factored_s = _factored_iteration(case, sched, xb, lb, program.params, iterations, repeats)
    one = jax.jit(lambda s: algorithms.get(case.algorithm).iterate(proj.project, s, proj.blocks,
                                                                    {"lam": 0.5, "beta": 1.0}))
    cost = one.lower(state).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    # the copy runs in a scan as the iterations do, so its buffers are reused, not freshly
    # allocated (a fresh 50 MiB buffer costs page faults worth several passes on CPU)
    # the copy streams the state written out (what the target's ratio is defined on), also
    # where the step holds some of it factored
    stream = lambda s, _: (jax.tree.map(lambda v: v * 0.5 + 1, s), None)  # noqa: E731
    copy = jax.jit(lambda s: jax.lax.scan(stream, s, None, length=iterations)[0])
    full = jax.jit(lambda s: {k: dense(v) for k, v in s.items()})(state)
    copy_s = _median_time(copy, full, repeats=repeats) / iterations
    state_bytes = sum(v.size * v.dtype.itemsize for v in full.values())
    del full
    held_bytes = sum(v.size * v.dtype.itemsize for v in jax.tree.leaves(state))
    return {
        "case": case.name, "model": case.model, "algorithm": case.algorithm, "batch": case.batch,
        "compile_s": compile_s, "trace_s": trace_s, "kernels": kernel_count(compiled_step),
        "iteration_s": per_iteration, "factored_iteration_s": factored_s, "written_out_iteration_s": written_s,
        "no_gram_iteration_s": no_gram_s,
        "copy_s": copy_s, "bandwidth_ratio": per_iteration / copy_s, "state_bytes": state_bytes,
        "held_state_bytes": held_bytes,
        "bytes_accessed_per_iteration": float(cost.get("bytes accessed", float("nan"))),
        "flops_per_iteration": float(cost.get("flops", float("nan"))),
        "step_memory_bytes": int(memory.argument_size_in_bytes + memory.output_size_in_bytes
                                 + memory.temp_size_in_bytes),
        "step_temp_bytes": int(memory.temp_size_in_bytes),
    }


def _factored_iteration(case, sched, xb, lb, params, iterations: int, repeats: int) -> float | None:
    """Seconds per factored AP iteration on the same minibatch, or None where it does not apply."""
    plan = factored.choose(sched, case.algorithm, "auto") if case.state_dtype == "float32" else None
    if not plan:
        return None
    prog = sched.program
    data_var, label_var, _ = io_names(prog)
    fap = factored.FactoredAP(BlockProjector(sched).with_data({data_var: xb, label_var: lb}), plan)
    state = jax.jit(lambda p: fap.init(forward_values(prog, {data_var: xb, **p})))(params)
    run = jax.jit(lambda s: factored.run(fap, s, iterations, monitor=False)[0])
    return _median_time(run, state, repeats=repeats) / iterations


def _row(r: dict) -> str:
    mib = 1 / 2 ** 20
    fac = r.get("factored_iteration_s")
    fac = f" (factored {1e3 * fac:.2f} ms)" if fac else ""
    written = r.get("written_out_iteration_s")
    fac += f" (copies written out {1e3 * written:.2f} ms)" if written else ""
    no_gram = r.get("no_gram_iteration_s")
    fac += f" (factored without Gram form {1e3 * no_gram:.2f} ms)" if no_gram else ""
    held = r.get("held_state_bytes", r["state_bytes"])
    held = f", held {held * mib:.1f}" if held != r["state_bytes"] else ""
    return (f"{r['case']:<16} compile {r['compile_s']:6.2f} s (trace {r['trace_s']:4.2f} s, {r['kernels']} kernels)  iteration {1e3 * r['iteration_s']:8.2f} ms{fac}  "
            f"copy {1e3 * r['copy_s']:6.2f} ms  ratio {r['bandwidth_ratio']:5.1f}  state {r['state_bytes'] * mib:7.1f} MiB{held}  "
            f"XLA bytes/iter {r['bytes_accessed_per_iteration'] * mib:8.1f} MiB ({r['bytes_accessed_per_iteration'] / r['state_bytes']:.1f} states)  "
            f"step memory {r['step_memory_bytes'] * mib:7.1f} MiB")


def compare(old: Path, new: Path) -> None:
    a = {r["case"]: r for r in json.loads(old.read_text())["results"]}
    b = {r["case"]: r for r in json.loads(new.read_text())["results"]}
    print(f"{'case':<16} {'iteration old':>14} {'new':>10} {'new/old':>8} {'compile old':>12} {'new':>8} {'memory new/old':>15}")
    for name in a.keys() & b.keys():
        o, n = a[name], b[name]
        print(f"{name:<16} {1e3 * o['iteration_s']:11.2f} ms {1e3 * n['iteration_s']:7.2f} ms {n['iteration_s'] / o['iteration_s']:8.2f} "
              f"{o['compile_s']:10.2f} s {n['compile_s']:6.2f} s {n['step_memory_bytes'] / o['step_memory_bytes']:15.2f}")


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["compare"]:
        compare(Path(argv[1]), Path(argv[2]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*")
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    results = []
    for case in CASES:
        if args.only and case.name not in args.only:
            continue
        results.append(measure(case, args.iterations, args.repeats))
        print(_row(results[-1]), flush=True)
    if args.json:
        meta = {"machine": platform.machine(), "processor": platform.processor(), "cpus": jax.device_count(),
                "backend": jax.default_backend(), "jax": jax.__version__, "python": platform.python_version()}
        args.json.write_text(json.dumps({"schema": "projc.bench-suite", "version": 1, "meta": meta,
                                         "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
