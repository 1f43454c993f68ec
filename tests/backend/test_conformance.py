"""ONNX backend node tests through the forward evaluator: every test recorded as passing in
``conformance_passing.txt`` must still pass (so the count never drops), run in parallel shards."""

import pytest

from projc.backends.jax import conformance

SHARDS = 8


def test_excludes_have_reasons():
    for pattern, reason in conformance.load_excludes():
        assert reason, f"exclusion {pattern.pattern!r} has no reason"


def test_recorded_floor_meets_the_target():
    passing = conformance.load_passing()
    assert len(passing) >= conformance.FLOOR
    assert len(set(passing)) == len(passing)
    known = {c.name for c in conformance.load_cases()}
    assert set(passing) <= known, "recorded tests missing from onnx's collection"


@pytest.mark.slow
@pytest.mark.parametrize("shard", range(SHARDS))
def test_recorded_node_tests_still_pass(shard):
    names = {n for n in conformance.load_passing() if conformance.shard_of(n, SHARDS) == shard}
    outcomes = conformance.run_all(names=names)
    broken = [f"{o.name}: {o.status} {o.detail}" for o in outcomes if o.status != "pass"]
    assert not broken, "\n".join(broken)
    assert len(outcomes) == len(names)
