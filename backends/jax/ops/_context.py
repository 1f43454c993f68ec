"""What a rule sees of its node: attributes as Python values, dtypes, static inputs, subgraphs."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import numpy as np
import onnx_ir as ir
from jax.core import Tracer

from projc.errors import ShapeError


def attr_value(attr: ir.Attr) -> Any:
    """Convert an onnx-ir attribute to a plain Python / NumPy value."""
    t = attr.type
    v = attr.value
    if t == ir.AttributeType.TENSOR:
        return v.numpy()
    if t == ir.AttributeType.TENSORS:
        return [x.numpy() for x in v]
    if t in (ir.AttributeType.INTS, ir.AttributeType.FLOATS, ir.AttributeType.STRINGS):
        return list(v)
    if t == ir.AttributeType.GRAPHS:
        return list(v)
    return v


@dataclasses.dataclass
class OpContext:
    """Per-node context handed to rules."""

    node: ir.Node
    opset: int
    run_graph: Callable[[ir.Graph, Sequence[Any]], list[Any]]
    _attrs: dict[str, Any] | None = None

    @property
    def attrs(self) -> dict[str, Any]:
        if self._attrs is None:
            self._attrs = {k: attr_value(a) for k, a in self.node.attributes.items()}
        return self._attrs

    def attr(self, name: str, default: Any = None) -> Any:
        return self.attrs.get(name, default)

    @property
    def num_outputs(self) -> int:
        return len(self.node.outputs)

    def output_dtype(self, i: int = 0) -> np.dtype | None:
        """The declared/inferred dtype of output ``i``, if known."""
        dt = self.node.outputs[i].dtype
        return None if dt is None else np.dtype(dt.numpy())

    def input_dtype(self, i: int) -> np.dtype | None:
        dt = self.node.inputs[i].dtype if self.node.inputs[i] is not None else None
        return None if dt is None else np.dtype(dt.numpy())

    def output_used(self, i: int) -> bool:
        return i < len(self.node.outputs) and bool(self.node.outputs[i].name)

    def static(self, x: Any, what: str = "input") -> np.ndarray:
        """``x`` as a NumPy array; raise a clear error if it is only known at run time."""
        if isinstance(x, Tracer):
            raise ShapeError(
                f"node {self.node.name!r} ({self.node.op_type}): {what} must be known when the "
                "model is compiled (a constant or initializer), but it depends on run-time data"
            )
        return np.asarray(x)
