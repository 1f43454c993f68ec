"""ONNX backend node tests through the forward evaluator: the pass count must not drop."""

import pytest

from projc.backends.jax import conformance


def test_excludes_have_reasons():
    for pattern, reason in conformance.load_excludes():
        assert reason, f"exclusion {pattern.pattern!r} has no reason"


@pytest.mark.slow
def test_node_test_pass_count_at_least_floor():
    outcomes = conformance.run_all()
    counts = conformance.summary(outcomes)
    assert counts["total"] == len(conformance.load_cases())
    assert counts["pass"] >= conformance.FLOOR, counts
