"""``infer-shapes``: static shapes everywhere once the inputs are bound."""

from __future__ import annotations

import pytest

from passutil import assert_idempotent, check_pipeline, parse
from projc.frontend import bind_dims
from projc.ir import VerificationError, format_type, verify
from projc.passes import run_pipeline

TEXT = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N,3,4] x) => (float[N,12] y) {
  shp = Constant<value = int64[2] {0, -1}>()
  f = Reshape(x, shp)
  t = Transpose<perm = [1, 0]>(f)
  y = Transpose<perm = [1, 0]>(t)
}
"""


def test_shapes_become_static_after_binding_the_batch():
    model = parse(TEXT)
    bind_dims(model, batch_size=5)
    model = check_pipeline(model, "infer-shapes").model
    types = {o.name: format_type(o) for node in model.graph for o in node.outputs}
    assert types == {
        "shp": "int64[2]", "f": "float32[5,12]", "t": "float32[12,5]", "y": "float32[5,12]",
    }
    assert_idempotent(model, "infer-shapes")


def test_without_binding_shapes_stay_symbolic_and_the_verifier_says_so():
    model = run_pipeline(parse(TEXT), "infer-shapes").model
    assert format_type(model.graph.outputs[0]) == "float32[N,12]"
    with pytest.raises(VerificationError, match="output %f has a non-static shape float32"):
        verify(model)
