"""ONNX import and export: the only module that reads or writes ONNX files.

:func:`load_model` turns a path into the network IR: it checks the file, loads external data,
binds dynamic dimensions to static sizes, runs the import pipeline (cleanup passes and shape
inference) and marks initializers as parameters or constants.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import onnx
import onnx_ir as ir

from projc.errors import ModelLoadError, ShapeError
from projc.fileio import write_atomic
from projc.ir import assign_roles

MIN_OPSET, MAX_OPSET = 7, 28
# fold-constants infers shapes itself while Shape nodes wait for them; infer-shapes then
# types what folding left, and dce drops the inputs of folded nodes.
IMPORT_PIPELINE = "canonicalize,fold-constants,infer-shapes,dce"


def read_model(path: str | os.PathLike) -> ir.Model:
    """Read an ONNX file (with any external data beside it) without changing it."""
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file")
    if path.is_dir():
        raise ModelLoadError(f"{path}: is a directory, not an ONNX model file")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError and others for garbage
        raise ModelLoadError(f"{path}: not a valid ONNX model ({type(exc).__name__}: {exc})") from None
    if not proto.graph.node and not proto.graph.output:
        raise ModelLoadError(f"{path}: not a valid ONNX model (no graph found; is the file truncated?)")
    try:
        onnx.load_external_data_for_model(proto, str(path.parent))
    except Exception as exc:
        raise ModelLoadError(f"{path}: cannot load its external data ({exc})") from None
    try:
        onnx.checker.check_model(proto)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"{path}: invalid ONNX model: {first}") from None
    model = ir.serde.deserialize_model(proto)
    _check_opset(path, model)
    return model


def _check_opset(path: Path, model: ir.Model) -> None:
    version = model.opset_imports.get("", model.opset_imports.get("ai.onnx"))
    if version is not None and not MIN_OPSET <= version <= MAX_OPSET:
        raise ModelLoadError(
            f"{path}: opset {version} is not supported (projc reads opsets {MIN_OPSET} to {MAX_OPSET}); "
            "convert it with onnx.version_converter.convert_version"
        )


def bind_dims(
    model: ir.Model, batch_size: int | None, dims: Mapping[str, int] | None = None, source: str = "model"
) -> None:
    """Make every graph input shape static.

    The first dynamic dimension of the first input is the batch: it (and every other
    dimension with the same symbolic name) takes ``batch_size``. Other dynamic
    dimensions must be named in ``dims``; otherwise the error names the input and dimension.
    """
    dims = dict(dims or {})
    graph = model.graph
    inputs = [v for v in graph.inputs if v.name not in graph.initializers]
    # the batch is the first dynamic dimension of the first input (dim 0, or dim 1 for the
    # sequence-major inputs of recurrent models); other inputs share it by name
    batch_name, batch_pos = None, None
    if inputs and inputs[0].shape is not None:
        for i, d in enumerate(inputs[0].shape):
            if not isinstance(d, int):
                batch_name, batch_pos = d.value or "<unnamed>", i
                break
    for value in inputs:
        if value.shape is None:
            raise ShapeError(f"{source}: input {value.name!r} has no shape; projc needs static shapes")
        new = []
        for i, d in enumerate(value.shape):
            if isinstance(d, int):
                new.append(d)
                continue
            name = d.value
            if name is not None and name in dims:
                new.append(int(dims[name]))
            elif batch_size is not None and (name == batch_name or (name is None and i == batch_pos)):
                new.append(int(batch_size))
            else:
                label = f"{name!r}" if name else "(unnamed)"
                hint = "--batch-size N" if i == batch_pos else f"--dim {name or 'NAME'}=SIZE"
                raise ShapeError(
                    f"{source}: input {value.name!r} dimension {i} {label} is dynamic; give its size with {hint}"
                )
        value.shape = ir.Shape(new)
    _forget_inferred_shapes(graph)


def _forget_inferred_shapes(graph: ir.Graph) -> None:
    """Drop symbolic intermediate shapes so inference recomputes them from the bound inputs."""
    for node in graph:
        for out in node.outputs:
            if out.shape is not None and not all(isinstance(d, int) for d in out.shape):
                out.shape = None


def load_model(
    path: str | os.PathLike,
    *,
    batch_size: int | None = 1,
    dims: Mapping[str, int] | None = None,
    pipeline: str | None = IMPORT_PIPELINE,
) -> ir.Model:
    """Load ``path`` into the network IR with static shapes (see module docstring)."""
    from projc.passes import run_pipeline  # passes import this module's helpers lazily

    model = read_model(path)
    bind_dims(model, batch_size, dims, source=str(path))
    if pipeline:
        model = run_pipeline(model, pipeline).model
    assign_roles(model.graph, keep_existing=True)  # constants made by folding stay constants
    return model


def run_reference(model: ir.Model) -> list:
    """Evaluate a model without graph inputs with ONNX's reference evaluator (constant folding)."""
    from onnx.reference import ReferenceEvaluator

    return list(ReferenceEvaluator(to_proto(model)).run(None, {}))


def to_proto(model: ir.Model) -> onnx.ModelProto:
    """Serialise the IR back to an ONNX ModelProto."""
    return ir.serde.serialize_model(model)


def save_model(model: ir.Model | onnx.ModelProto, path: str | os.PathLike) -> None:
    """Write an ONNX file atomically (temporary name, then rename)."""
    proto = to_proto(model) if isinstance(model, ir.Model) else model
    write_atomic(path, proto.SerializeToString())


def save_with_initializers(model: bytes | onnx.ModelProto, values: Mapping[str, "np.ndarray"],
                           path: str | os.PathLike) -> None:
    """Write ``model`` with the initializers named in ``values`` replaced (same graph, same
    dtypes and shapes), atomically; a name or shape that does not match is an error."""
    import numpy as np
    from onnx import numpy_helper

    proto = onnx.ModelProto()
    proto.CopyFrom(model) if isinstance(model, onnx.ModelProto) else proto.ParseFromString(model)
    by_name = {init.name: init for init in proto.graph.initializer}
    for name, value in values.items():
        if name not in by_name:
            raise ModelLoadError(f"{path}: the model has no initializer {name!r} to write")
        old = by_name[name]
        value = np.asarray(value)
        if tuple(old.dims) != value.shape:
            raise ShapeError(f"{path}: initializer {name!r} has shape {list(old.dims)}, the new value {list(value.shape)}")
        dtype = onnx.helper.tensor_dtype_to_np_dtype(old.data_type)
        old.CopyFrom(numpy_helper.from_array(value.astype(dtype), name))
    write_atomic(path, proto.SerializeToString())
