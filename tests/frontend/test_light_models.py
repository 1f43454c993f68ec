"""Whole networks from the onnx package's test data (weights made by ConstantOfShape) against
onnxruntime: real topologies (ResNet, Inception, SqueezeNet, ShuffleNet, DenseNet...)."""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from projc.backends.jax import Forward
from projc.frontend import load_model

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
MODELS = ["squeezenet", "shufflenet", "inception_v1", "resnet50", "bvlc_alexnet", "densenet121"]


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_light_model_matches_onnxruntime(name):
    path = LIGHT / f"light_{name}.onnx"
    model = load_model(path)
    fwd = Forward(model)
    (value,) = [v for v in model.graph.inputs if v.name not in model.graph.initializers]
    x = np.random.default_rng(0).standard_normal(tuple(value.shape)).astype(np.float32)
    ours = [np.asarray(o) for o in fwd({value.name: x})]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    theirs = session.run(None, {value.name: x})
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape
        scale = max(1.0, float(np.abs(b).max()))
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * scale)
