"""Helpers shared by the pass tests: parse ONNX text, run passes, compare with onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

from projc.frontend import to_proto
from projc.ir import format_model, verify
from projc.passes import Pass, PassResult, run_pipeline

# numpy dtype kind -> random array of that dtype
_RANDOM = {
    "f": lambda rng, shape, dtype: rng.standard_normal(shape).astype(dtype),
    "i": lambda rng, shape, dtype: rng.integers(-5, 6, shape).astype(dtype),
    "b": lambda rng, shape, dtype: rng.random(shape) < 0.5,
}


def parse(text: str) -> ir.Model:
    """An IR model from the ONNX text form."""
    return ir.from_onnx_text(text)


def verify_after(p: Pass, model: ir.Model) -> None:
    """``after_each`` hook: the verifier must be green after every pass."""
    verify(model)


def random_feeds(model: ir.Model | onnx.ModelProto, seed: int) -> dict[str, np.ndarray]:
    proto = model if isinstance(model, onnx.ModelProto) else to_proto(model)
    inits = {t.name for t in proto.graph.initializer}
    rng = np.random.default_rng(seed)
    feeds = {}
    for vi in proto.graph.input:
        if vi.name in inits:
            continue
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type))
        shape = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        feeds[vi.name] = np.asarray(_RANDOM[dtype.kind](rng, shape, dtype), dtype=dtype)
    return feeds


def ort_run(proto: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    options = ort.SessionOptions()
    options.log_severity_level = 3  # no warnings about initializers left unused on purpose
    session = ort.InferenceSession(
        proto.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feeds)))


def assert_same_outputs(before: onnx.ModelProto, after: onnx.ModelProto, seeds=(0, 1)) -> None:
    """Both models are valid and give the same outputs (by name) on random inputs."""
    onnx.checker.check_model(after, full_check=True)
    assert [o.name for o in before.graph.output] == [o.name for o in after.graph.output]
    for seed in seeds:
        feeds = random_feeds(before, seed)
        want, got = ort_run(before, feeds), ort_run(after, feeds)
        for name, value in want.items():
            assert got[name].dtype == value.dtype, name
            np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-6, err_msg=name)


def check_pipeline(model: ir.Model, pipeline: str | list[Pass]) -> PassResult:
    """Run ``pipeline`` with the verifier after each pass; the outputs must not change."""
    before = to_proto(model)
    result = run_pipeline(model, pipeline, after_each=verify_after)
    assert_same_outputs(before, to_proto(result.model))
    return result


def assert_idempotent(model: ir.Model, pipeline: str | list[Pass]) -> None:
    """A second run reports no change and leaves the text form as it was."""
    text = format_model(model)
    result = run_pipeline(model, pipeline, after_each=verify_after)
    assert not result.modified
    assert format_model(result.model) == text


def op_types(model: ir.Model) -> list[str]:
    return [node.op_type for node in model.graph]
