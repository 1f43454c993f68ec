"""``infer-shapes``: ONNX shape and type inference with data propagation."""

from __future__ import annotations

import dataclasses

import onnx_ir as ir
from onnx_ir.passes.common import ShapeInferencePass

from projc.passes.base import Pass, PassResult, register_pass


@register_pass
@dataclasses.dataclass(frozen=True)
class InferShapes(Pass):
    """Fill in static shapes and dtypes of every value (left unchanged where inference fails)."""

    name = "infer-shapes"

    def run(self, model: ir.Model) -> PassResult:
        result = ShapeInferencePass(check_type=False, strict_mode=False, data_prop=True)(model)
        return PassResult(result.model, result.modified)
