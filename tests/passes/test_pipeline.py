"""The pass registry and the pipeline string."""

from __future__ import annotations

import pytest

from passutil import parse
from projc.errors import ProjcError
from projc.frontend import IMPORT_PIPELINE
from projc.passes import parse_pipeline, registered_passes, run_pipeline

IMPORT_PASSES = ["canonicalize", "fold-constants", "infer-shapes", "dce"]


def test_import_passes_are_registered_under_kebab_case_names():
    known = registered_passes()
    for name in IMPORT_PASSES:
        assert known[name].name == name
    assert [p.name for p in parse_pipeline(IMPORT_PIPELINE)][0] == "canonicalize"
    assert {p.name for p in parse_pipeline(IMPORT_PIPELINE)} == set(IMPORT_PASSES)


def test_pipeline_string_tolerates_spaces_and_empty_items():
    passes = parse_pipeline(" canonicalize , dce,, ")
    assert [p.name for p in passes] == ["canonicalize", "dce"]


@pytest.mark.parametrize("spec", ["canonicalize,fold-constant,dce", "Canonicalize", "dce;dce"])
def test_unknown_pass_names_are_rejected_with_the_known_ones(spec):
    with pytest.raises(ProjcError) as info:
        parse_pipeline(spec)
    message = str(info.value)
    assert message.startswith("unknown pass '")
    listed = message.split("known passes: ", 1)[1].split(", ")
    assert listed == sorted(registered_passes())
    assert set(IMPORT_PASSES) <= set(listed)


def test_unknown_pass_is_rejected_before_any_pass_runs():
    model = parse('<ir_version: 8, opset_import: ["" : 17]> g (float[2] x) => (float[2] y) '
                  "{ a = Identity(x)  y = Neg(a) }")
    with pytest.raises(ProjcError, match="unknown pass 'nope'"):
        run_pipeline(model, "canonicalize,nope")
    assert [n.op_type for n in model.graph] == ["Identity", "Neg"]


def test_after_each_sees_every_pass_in_order():
    model = parse('<ir_version: 8, opset_import: ["" : 17]> g (float[2] x) => (float[2] y) '
                  "{ a = Identity(x)  y = Neg(a) }")
    seen = []
    run_pipeline(model, IMPORT_PIPELINE, after_each=lambda p, m: seen.append(p.name))
    assert seen == IMPORT_PIPELINE.split(",")
