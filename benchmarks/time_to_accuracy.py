"""Time to a test accuracy: gradient-free projc next to Adam, same model, data and batch, one run.

For each case, projc trains the model (`train_accuracy.run_one`) and Adam trains the same ONNX
model by backpropagation at each learning rate of a small grid (`adam_baseline.train_adam`);
both evaluate the test split after every epoch. Time to target = minibatches until the first
epoch at or above the target, times the median time per minibatch (the first minibatch,
which compiles, left out on both sides). Adam's figure is its fastest learning rate; projc's
its fastest Douglas-Rachford relaxation of a grid too (the default 0.5, and 0.8: faster on
the MLPs and the CNN, unstable on the LSTM, so not the default), and the default's own time is
printed next to it. Prints one row per case and seed, and the ratio projc / Adam.

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


@dataclasses.dataclass(frozen=True)
class Case:
    run: Run  # projc's run, its target the case's
    adam_epochs: int
    adam_lrs: tuple = (1e-3, 3e-3, 1e-2, 3e-2)
    projc_lams: tuple = (0.5, 0.8)  # the first is the default


CASES = {
    "digits": Case(Run("digits-mlp-20it", "mlp_digits.onnx", "digits", 10, 0.97, (("iterations", 20),)), 40),
    "mnist5k": Case(Run("mnist5k-mlp", "mlp_mnist.onnx", "mnist5k", 8, 0.88, (("iterations", 20),)), 30),
}


def measure(name: str, seed: int) -> dict:
    case = CASES[name]
    runs = [run_one(dataclasses.replace(case.run, options=case.run.options + (("lam", lam),)), seed)
            for lam in case.projc_lams]
    default_s = runs[0]["seconds_to_target"]
    projc_row, projc_lam = min(zip(runs, case.projc_lams), key=lambda r: (r[0]["seconds_to_target"] is None,
                                                                          r[0]["seconds_to_target"] or 0))
    adam = [train_adam(str(MODELS / case.run.model), case.run.data, lr=lr, epochs=case.adam_epochs, seed=seed,
                       target=case.run.target) for lr in case.adam_lrs]
    reached = [a for a in adam if a["to_target"] is not None]
    fastest = min(reached, key=lambda a: a["to_target"]["minibatches"] * a["minibatch_s"]) if reached else None
    adam_s = None if fastest is None else fastest["to_target"]["minibatches"] * fastest["minibatch_s"]
    projc_s = projc_row["seconds_to_target"]
    return {"case": name, "seed": seed, "target": case.run.target, "projc_lam": projc_lam,
            "projc_default_lam_s": default_s, "projc_s": projc_s, "projc_minibatches": projc_row["minibatches_to_target"],
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
    if r["projc_lam"] != CASES[r["case"]].projc_lams[0]:
        s = r["projc_default_lam_s"]
        default = f" (default lam {CASES[r['case']].projc_lams[0]}: {'not reached' if s is None else f'{s:.2f} s'})"
    return (f"{r['case']:<8} seed {r['seed']}  to {100 * r['target']:.0f}%: projc lam {r['projc_lam']} "
            f"{sec(r['projc_s'], r['projc_minibatches'])}{default}, "
            f"{1e3 * r['projc_minibatch_s']:.0f} ms/mb; Adam lr {r['adam_lr']} {sec(r['adam_s'], r['adam_minibatches'])}, "
            f"{1e3 * (r['adam_minibatch_s'] or 0):.1f} ms/mb; projc/Adam {ratio}")


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
