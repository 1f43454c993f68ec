"""An ``onnx.backend.base.Backend`` over the JAX forward evaluator (for ONNX's node tests).

Non-floating inputs (shapes, indices, axes, flags) are bound as compile-time constants of
each run, as the real import pipeline does once shapes are static; floating inputs are traced.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
from onnx.backend.base import Backend, BackendRep

from projc.backends.jax.evaluator import Forward, unsupported_nodes
from projc.ir import CONFIG_INPUTS
from projc.ir import assign_roles


def _is_traced_dtype(arr: np.ndarray) -> bool:
    return np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.complexfloating) or arr.dtype.name == "bfloat16"


def to_numpy(x: Any) -> Any:
    """JAX arrays (or nested lists of them, for sequence outputs) as NumPy arrays."""
    if isinstance(x, (list, tuple)):
        return [to_numpy(v) for v in x]
    return x if x is None else np.asarray(x)


class ProjcRep(BackendRep):
    def __init__(self, model: ir.Model):
        self.model = model
        graph = model.graph
        self.input_names = [v.name for v in graph.inputs if v.name not in graph.initializers]
        # floats that configure an op (Resize scales, Range bounds, Clip limits, ...) are bound
        # at compile time, as they would be as initializers of a real model
        self.config_inputs = {
            v.name for v in graph.inputs
            if v.uses() and all((u.node.op_type, u.idx) in CONFIG_INPUTS for u in v.uses())
        }

    def run(self, inputs: Any, **kwargs: Any) -> tuple[Any, ...]:
        if isinstance(inputs, dict):
            named = dict(inputs)
        else:
            arrays = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
            named = dict(zip(self.input_names, arrays))
        static = {
            k: v for k, v in named.items()
            if not (isinstance(v, np.ndarray) and _is_traced_dtype(v)) or k in self.config_inputs
        }
        fwd = Forward(self.model, static_inputs=static)
        outs = fwd({k: named[k] for k in fwd.input_names}, params={})
        return tuple(to_numpy(o) for o in outs)


class ProjcBackend(Backend):
    """ONNX backend API: ``ProjcBackend.prepare(model).run(inputs)``."""

    @classmethod
    def is_compatible(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any) -> bool:
        return not unsupported_nodes(ir.serde.deserialize_model(model))

    @classmethod
    def prepare(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any) -> ProjcRep:
        ir_model = ir.serde.deserialize_model(model)
        assign_roles(ir_model.graph)
        return ProjcRep(ir_model)

    @classmethod
    def run_model(cls, model: onnx.ModelProto, inputs: Any, device: str = "CPU", **kwargs: Any):
        return cls.prepare(model, device).run(inputs)

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return device.upper() in ("CPU", "CUDA", "GPU", "TPU")
