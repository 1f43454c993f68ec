"""Golden text of the network IR after each pass of the import pipeline.

Run with ``PROJC_UPDATE_GOLDEN=1`` to rewrite ``golden/*.txt`` after an intended change, and
review the diff.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import pytest

from passutil import assert_idempotent, assert_same_outputs, parse, verify_after
from projc.frontend import IMPORT_PIPELINE, bind_dims, to_proto
from projc.ir import format_model
from projc.passes import run_pipeline

HERE = Path(__file__).parent
FIXTURES = sorted((HERE / "fixtures").glob("*.onnxtxt"))
UPDATE = os.environ.get("PROJC_UPDATE_GOLDEN") == "1"


def _stages(path: Path) -> tuple[str, object, object, object]:
    model = parse(path.read_text())
    bind_dims(model, batch_size=2, source=path.name)
    before = to_proto(model)
    sections = [f"== {path.name}, batch 2 (pipeline {IMPORT_PIPELINE})\n{format_model(model)}"]

    def record(p, m):
        verify_after(p, m)
        sections.append(f"== after {p.name}\n{format_model(m)}")

    result = run_pipeline(model, IMPORT_PIPELINE, after_each=record)
    return "\n".join(sections), before, to_proto(result.model), result.model


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_import_pipeline_golden(path):
    text, before, after, model = _stages(path)
    golden = HERE / "golden" / f"{path.stem}.txt"
    if UPDATE:
        golden.write_text(text)
    assert golden.exists(), f"{golden} is missing; run with PROJC_UPDATE_GOLDEN=1 to create it"
    expected = golden.read_text()
    if text != expected:
        diff = difflib.unified_diff(
            expected.splitlines(True), text.splitlines(True), f"golden/{golden.name}", "actual"
        )
        pytest.fail(f"{path.name}: IR differs from the golden file (PROJC_UPDATE_GOLDEN=1 "
                    f"rewrites it):\n{''.join(diff)}")
    assert_same_outputs(before, after)
    assert_idempotent(model, IMPORT_PIPELINE)


def test_there_are_fixtures():
    assert len(FIXTURES) >= 3
