"""Time to a test accuracy: gradient-free projc next to Adam, same model, data and batch, one run.

For each case, projc trains the model (`train_accuracy.run_one`) and Adam trains the same ONNX
model by backpropagation at each learning rate of a small grid (`adam_baseline.train_adam`);
both evaluate the test split after every epoch. Time to target = minibatches until the first
epoch at or above the target, times the median time per minibatch (the first minibatch,
which compiles, left out on both sides). Adam's figure is its fastest learning rate; projc's
its fastest configuration of a small grid too: Douglas-Rachford at relaxation 0.5 (the
default) and 0.8 (faster on the MLPs and the CNN, unstable on the LSTM, so not the default),
and factored alternating projections with more iterations per minibatch (each iteration is
some 3x cheaper than a DR one, backends/jax/factored.py), over-relaxed on MNIST. The
default's own time is printed next to the fastest. Prints one row per case and seed, and the ratio projc / Adam.

Run: `python benchmarks/time_to_accuracy.py [--only digits mnist5k] [--seeds 0 1 2] [--json out.json]`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from adam_baseline import train_adam  # noqa: E402
from train_accuracy import MODELS, Run, run_one  # noqa: E402


AP_100 = (("algorithm", "ap"), ("iterations", 100))  # factored automatically (one device)
AP_80_RELAXED = (("algorithm", "ap"), ("iterations", 80), ("relax", 1.9))  # as far per epoch as 150 plain


@dataclasses.dataclass(frozen=True)
class Case:
    run: Run  # projc's run, its target the case's
    adam_epochs: int
    adam_lrs: tuple = (1e-3, 3e-3, 1e-2, 3e-2)
    # projc's grid as (label, compile options added to the run's); the first is the default
    projc_grid: tuple = (("dr lam 0.5", (("lam", 0.5),)), ("dr lam 0.8", (("lam", 0.8),)))


CASES = {
    "digits": Case(Run("digits-mlp-20it", "mlp_digits.onnx", "digits", 10, 0.97, (("iterations", 20),)), 40,
                   projc_grid=Case.projc_grid + (("factored ap 100", AP_100),)),
    "mnist5k": Case(Run("mnist5k-mlp", "mlp_mnist.onnx", "mnist5k", 8, 0.88, (("iterations", 20),)), 30,
                    projc_grid=Case.projc_grid + (("factored ap 80 relax 1.9", AP_80_RELAXED),)),
}


def measure(name: str, seed: int) -> dict:
    case = CASES[name]
    runs = [run_one(dataclasses.replace(case.run, options=case.run.options + extra), seed)
            for _, extra in case.projc_grid]
    default_s = runs[0]["seconds_to_target"]
    projc_row, projc_config = min(zip(runs, (label for label, _ in case.projc_grid)),
                                  key=lambda r: (r[0]["seconds_to_target"] is None, r[0]["seconds_to_target"] or 0))
    adam = [train_adam(str(MODELS / case.run.model), case.run.data, lr=lr, epochs=case.adam_epochs, seed=seed,
                       target=case.run.target) for lr in case.adam_lrs]
    reached = [a for a in adam if a["to_target"] is not None]
    fastest = min(reached, key=lambda a: a["to_target"]["minibatches"] * a["minibatch_s"]) if reached else None
    adam_s = None if fastest is None else fastest["to_target"]["minibatches"] * fastest["minibatch_s"]
    projc_s = projc_row["seconds_to_target"]
    return {"case": name, "seed": seed, "target": case.run.target, "projc_config": projc_config,
            "projc_grid_s": {label: r["seconds_to_target"] for r, (label, _) in zip(runs, case.projc_grid)},
            "projc_default_s": default_s, "projc_s": projc_s, "projc_minibatches": projc_row["minibatches_to_target"],
            "projc_minibatch_s": projc_row["minibatch_s"], "projc_test_last": projc_row["test_last"],
            "adam_s": adam_s, "adam_lr": None if fastest is None else fastest["lr"],
            "adam_minibatches": None if fastest is None else fastest["to_target"]["minibatches"],
            "adam_minibatch_s": None if fastest is None else fastest["minibatch_s"],
            "adam_best_test": max(max(a["test_by_epoch"]) for a in adam),
            "ratio": None if projc_s is None or adam_s is None else projc_s / adam_s}


def _fmt(r: dict) -> str:
    def sec(s, mb):
        return "not reached" if s is None else f"{s:6.2f} s ({mb} mb)"
    ratio = "-" if r["ratio"] is None else f"{r['ratio']:.1f}x"
    default = ""
    first = CASES[r["case"]].projc_grid[0][0]
    if r["projc_config"] != first:
        s = r["projc_default_s"]
        default = f" (default {first}: {'not reached' if s is None else f'{s:.2f} s'})"
    return (f"{r['case']:<8} seed {r['seed']}  to {100 * r['target']:.0f}%: projc {r['projc_config']} "
            f"{sec(r['projc_s'], r['projc_minibatches'])}{default}, "
            f"{1e3 * r['projc_minibatch_s']:.0f} ms/mb; Adam lr {r['adam_lr']} {sec(r['adam_s'], r['adam_minibatches'])}, "
            f"{1e3 * (r['adam_minibatch_s'] or 0):.1f} ms/mb; projc/Adam {ratio}\n"
            f"         projc's grid: " + ", ".join(f"{k} {'not reached' if v is None else f'{v:.2f} s'}"
                                               for k, v in r["projc_grid_s"].items()))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=sorted(CASES), default=sorted(CASES))
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument("--json", type=Path, help="write every row here")
    args = parser.parse_args(argv)
    rows = []
    for name in args.only:
        mine = [measure(name, seed) for seed in args.seeds]
        for r in mine:
            print(_fmt(r), flush=True)
        ratios = [r["ratio"] for r in mine if r["ratio"] is not None]
        if ratios:
            print(f"{name:<8} median projc/Adam over {len(ratios)} seeds: {statistics.median(ratios):.1f}x", flush=True)
        rows += mine
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
