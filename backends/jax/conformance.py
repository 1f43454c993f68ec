"""Run ONNX's backend node tests through the forward evaluator and count what passes.

``python -m projc.backends.jax.conformance`` (or ``projc conformance``) prints the pass count;
excluded tests are listed, with a reason each, in ``conformance_excludes/*.txt`` beside this file
(one file per op family).
"""

from __future__ import annotations

import dataclasses
import functools
import re
import sys
import time
import warnings
import zlib
from pathlib import Path

import numpy as np

EXCLUDES_DIR = Path(__file__).with_name("conformance_excludes")
# The node tests known to pass, one name a line: CI fails if any of them stops passing, so the
# count can only go up. Rewrite it with `python -m projc.backends.jax.conformance --record`.
PASSING_FILE = Path(__file__).with_name("conformance_passing.txt")
FLOOR = 1000  # the target; the recorded list must never be shorter


@dataclasses.dataclass
class Outcome:
    name: str
    status: str  # "pass", "fail", "unsupported", "excluded"
    detail: str = ""


def load_excludes(folder: Path = EXCLUDES_DIR) -> list[tuple[re.Pattern, str]]:
    """(pattern, reason) pairs from every ``*.txt`` file; a line is ``regex  # reason``."""
    rules = []
    lines = [l for f in sorted(folder.glob("*.txt")) for l in f.read_text().splitlines()]
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        pattern, _, reason = line.partition("#")
        rules.append((re.compile(pattern.strip() + "$"), reason.strip()))
    return rules


KINDS = ("node", "simple", "pytorch-converted", "pytorch-operator")


@functools.lru_cache(maxsize=4)
def load_cases(kind: str = "node"):
    """ONNX's backend test cases of one kind (``node``: the 1884 single-op tests)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from onnx.backend.test.loader import load_model_tests

        return load_model_tests(kind=kind)


def _read_tensors(files: list[Path]) -> list[np.ndarray]:
    import onnx
    from onnx import numpy_helper

    arrays = []
    for f in sorted(files, key=lambda p: int(p.stem.rsplit("_", 1)[-1])):
        tensor = onnx.TensorProto()
        tensor.ParseFromString(f.read_bytes())
        arrays.append(numpy_helper.to_array(tensor))
    return arrays


def case_model_and_data(case):
    """(ModelProto, [(inputs, outputs)]) of a test, built in memory or read from its folder."""
    if case.model is not None:
        return case.model, case.data_sets
    import onnx

    folder = Path(case.model_dir)
    model = onnx.load(str(folder / "model.onnx"))
    data = [
        (_read_tensors(list(d.glob("input_*.pb"))), _read_tensors(list(d.glob("output_*.pb"))))
        for d in sorted(folder.glob("test_data_set_*"))
    ]
    return model, data


def _as_arrays(values):
    from onnx import TensorProto, numpy_helper

    return [numpy_helper.to_array(v) if isinstance(v, TensorProto) else v for v in values]


def run_case(case) -> Outcome:
    """Run one node test; classify the result."""
    from onnx.backend.test.runner import Runner

    from projc.backends.jax.onnx_backend import ProjcBackend
    from projc.errors import UnsupportedOpError

    try:
        model, data_sets = case_model_and_data(case)
        rep = ProjcBackend.prepare(model)
        for inputs, expected in data_sets:
            # the loader hands float8/int4 and cast data over as TensorProto, as onnx's Runner expects
            inputs, expected = _as_arrays(inputs), _as_arrays(expected)
            outputs = rep.run(inputs)
            Runner.assert_similar_outputs(
                expected, outputs, rtol=case.rtol, atol=case.atol
            )
    except UnsupportedOpError as exc:
        return Outcome(case.name, "unsupported", str(exc).splitlines()[-1].strip())
    except Exception as exc:  # a wrong answer or a crash both count as failures
        msg = " ".join(str(exc).split())[:300]
        return Outcome(case.name, "fail", f"{type(exc).__name__}: {msg}")
    return Outcome(case.name, "pass")


def run_all(
    pattern: str | None = None, verbose: bool = False, kind: str = "node", names: set[str] | None = None
) -> list[Outcome]:
    """Run every test of ``kind`` (or those whose name matches ``pattern``, or is in ``names``)."""
    excludes = load_excludes()
    outcomes = []
    selector = re.compile(pattern) if pattern else None
    for case in load_cases(kind):
        if (selector and not selector.search(case.name)) or (names is not None and case.name not in names):
            continue
        reason = next((r for p, r in excludes if p.match(case.name)), None)
        if reason is not None:
            outcome = Outcome(case.name, "excluded", reason)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with np.errstate(all="ignore"):
                    outcome = run_case(case)
        outcomes.append(outcome)
        if verbose and outcome.status != "pass":
            print(f"{outcome.status:12} {outcome.name}: {outcome.detail}", flush=True)
    return outcomes


def load_passing(path: Path = PASSING_FILE) -> list[str]:
    """The recorded names of the node tests that pass."""
    return [l.strip() for l in path.read_text().splitlines() if l.strip()] if path.exists() else []


def shard_of(name: str, shards: int) -> int:
    """A stable shard for a test name (CI runs the node tests in parallel shards)."""
    return zlib.crc32(name.encode()) % shards


def summary(outcomes: list[Outcome]) -> dict[str, int]:
    counts = {"total": len(outcomes)}
    for status in ("pass", "fail", "unsupported", "excluded"):
        counts[status] = sum(o.status == status for o in outcomes)
    return counts


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-k", "--pattern", help="only tests whose name matches this regex")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every non-passing test")
    parser.add_argument("--kind", choices=KINDS, default="node", help="which ONNX test collection")
    parser.add_argument("--record", action="store_true",
                        help=f"write the passing node tests to {PASSING_FILE.name} (the CI floor)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    outcomes = run_all(args.pattern, args.verbose, args.kind)
    counts = summary(outcomes)
    if args.record:
        if args.pattern or args.kind != "node":
            parser.error("--record needs the whole node collection (no -k, --kind node)")
        lost = set(load_passing()) - {o.name for o in outcomes if o.status == "pass"}
        if lost:
            print(f"not recording: {len(lost)} recorded tests no longer pass: {', '.join(sorted(lost)[:10])}")
            return 1
        PASSING_FILE.write_text("".join(f"{o.name}\n" for o in outcomes if o.status == "pass"))
    print(
        f"passed {counts['pass']} of {counts['total']} ONNX {args.kind} tests "
        f"(failed {counts['fail']}, unsupported {counts['unsupported']}, excluded {counts['excluded']}) "
        f"in {time.perf_counter() - start:.0f} s"
    )
    return 0


if __name__ == "__main__":
    import projc.backends.jax  # noqa: F401  (enables x64 before any array is made)

    sys.exit(main())
