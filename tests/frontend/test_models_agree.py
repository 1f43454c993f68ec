"""The JAX forward evaluator agrees with onnxruntime on every example model and fixture.

Each file under ``models/`` and ``tests/fixtures/`` is loaded with ``load_model`` at a fixed
batch size, evaluated with ``Forward``, and every output is compared with onnxruntime running
the original file on the same inputs. Tolerance: ``rtol=1e-5`` and ``atol=1e-5 * max(1, max|ref|)``
(an absolute floor scaled to the output's magnitude, so near-zero entries of large outputs do
not fail on float32 rounding); integer outputs (class labels) must match exactly, and dtypes
and shapes must match.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from projc.backends.jax import Forward
from projc.errors import ModelLoadError, UnsupportedOpError
from projc.frontend import load_model

ROOT = Path(__file__).resolve().parents[2]
MODELS_DIR = ROOT / "models"
FIXTURES_DIR = ROOT / "tests" / "fixtures"
MODELS = sorted(MODELS_DIR.glob("*.onnx"))
FIXTURES = sorted(FIXTURES_DIR.glob("*.onnx"))
SKLEARN = sorted(FIXTURES_DIR.glob("sklearn_*.onnx"))
EXTERNAL = FIXTURES_DIR / "torch_cnn_dynamo.onnx"
MODEL_BATCH = 4
RTOL, ATOL = 1e-5, 1e-5

# Files whose ops have no forward rule yet (file name -> what is missing), for the whole graph
# and for the probabilities alone; each is an expected UnsupportedOpError (strict: remove the
# entry when the rule lands), and any other failure still fails.
# (empty now: the ai.onnx.ml rules for LinearClassifier, Normalizer and ArrayFeatureExtractor
# landed, so every fixture is compared in full)
MISSING_OPS: dict[str, str] = {}
MISSING_PROBABILITY_OPS: dict[str, str] = {}


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _random_inputs(path: Path, batch: int) -> dict[str, np.ndarray]:
    """Seeded inputs in [0, 1) (pixel-like) for every input of ``path``, batch dim = ``batch``."""
    rng = np.random.default_rng(0)
    inputs = {}
    for arg in _session(path).get_inputs():
        shape = [batch] + [int(d) for d in arg.shape[1:]]
        inputs[arg.name] = rng.random(shape, dtype=np.float32)
    return inputs


def _fixture_inputs(path: Path) -> dict[str, np.ndarray]:
    """The stored batch: ``torch_<name>_<exporter>.onnx`` and ``sklearn_<name>.onnx`` share
    ``<prefix>_<name>.npz``."""
    stem = path.stem.removesuffix("_legacy").removesuffix("_dynamo")
    with np.load(FIXTURES_DIR / f"{stem}.npz") as data:
        return {name: data[name] for name in data.files}


def _reference(path: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = _session(path)
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, inputs)))


def _evaluate(path: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    batch = next(iter(inputs.values())).shape[0]
    forward = Forward(load_model(path, batch_size=batch))
    outputs = forward({name: inputs[name] for name in forward.input_names})
    return {name: np.asarray(out) for name, out in zip(forward.output_names, outputs)}


def _assert_close(name: str, got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape, f"{name}: shape {got.shape} != onnxruntime's {want.shape}"
    assert got.dtype == want.dtype, f"{name}: dtype {got.dtype} != onnxruntime's {want.dtype}"
    if np.issubdtype(want.dtype, np.integer):
        np.testing.assert_array_equal(got, want, err_msg=name)
        return
    atol = ATOL * max(1.0, float(np.abs(want).max()))
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=atol, err_msg=name)


def _assert_agrees(path: Path, inputs: dict[str, np.ndarray]) -> None:
    want = _reference(path, inputs)
    got = _evaluate(path, inputs)
    assert sorted(got) == sorted(want), f"outputs {sorted(got)} != onnxruntime's {sorted(want)}"
    for name in want:
        _assert_close(name, got[name], want[name])


def test_every_model_and_fixture_is_present():
    names = {p.name for p in MODELS}
    assert len(MODELS) == 12 and {"mlp_digits.onnx", "cnn_mnist.onnx", "gru_digits.onnx"} <= names
    assert len(FIXTURES) == 14
    for path in FIXTURES:
        assert _fixture_inputs(path), f"{path.name}: no stored input batch"


@pytest.mark.parametrize("path", MODELS, ids=lambda p: p.name)
def test_model_agrees_with_onnxruntime(path):
    _assert_agrees(path, _random_inputs(path, MODEL_BATCH))


def _known_missing(path: Path, missing: dict[str, str]):
    """Mark a file listed in ``missing`` as an expected UnsupportedOpError."""
    reason = missing.get(path.name)
    if reason is None:
        return path
    mark = pytest.mark.xfail(raises=UnsupportedOpError, strict=True, reason=reason)
    return pytest.param(path, marks=mark)


@pytest.mark.parametrize(
    "path", [_known_missing(p, MISSING_OPS) for p in FIXTURES], ids=lambda p: p.name
)
def test_fixture_agrees_with_onnxruntime(path):
    _assert_agrees(path, _fixture_inputs(path))


@pytest.mark.parametrize(
    "path", [_known_missing(p, MISSING_PROBABILITY_OPS) for p in SKLEARN], ids=lambda p: p.name
)
def test_sklearn_probabilities_agree(path, tmp_path):
    """The probabilities alone, cut out of the graph, so they are checked even while the ops
    that map the arg-max to a class label have no rule."""
    sub = tmp_path / path.name
    onnx.utils.extract_model(str(path), str(sub), ["x"], ["probabilities"])
    _assert_agrees(sub, _fixture_inputs(path))


@pytest.mark.parametrize("path", MODELS, ids=lambda p: p.name)
def test_model_has_dynamic_batch_and_opset_17(path):
    proto = onnx.load(str(path))
    assert {o.domain: o.version for o in proto.opset_import} == {"": 17}
    for value in list(proto.graph.input) + list(proto.graph.output):
        assert value.type.tensor_type.shape.dim[0].dim_param == "batch", value.name


def test_models_are_up_to_date_with_their_scripts(tmp_path):
    """Rebuilding every model gives the same graphs (nodes and weights): the builders are
    deterministic and the committed ``.onnx`` files match the scripts. If this fails after a
    script changed, run ``python models/build_all.py``."""
    before = set(sys.modules)
    sys.path.insert(0, str(MODELS_DIR))
    try:
        from build_all import build_all

        rebuilt = build_all(tmp_path)
    finally:
        sys.path.remove(str(MODELS_DIR))
        for name in set(sys.modules) - before:  # the scripts are top-level modules: unload them
            if getattr(sys.modules[name], "__file__", "").startswith(str(MODELS_DIR)):
                del sys.modules[name]
    assert sorted(p.name for p in rebuilt) == sorted(p.name for p in MODELS)
    for path in rebuilt:
        committed = onnx.load(str(MODELS_DIR / path.name))
        assert onnx.load(str(path)).graph == committed.graph, f"{path.name} is stale"


def test_external_data_fixture_keeps_its_weights_outside():
    proto = onnx.load(str(EXTERNAL), load_external_data=False)
    external = [
        t.name for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL
    ]
    assert external, "the fixture should store its weights in the .data file"
    assert EXTERNAL.with_name(EXTERNAL.name + ".data").exists()


def test_external_data_model_loads_from_another_directory(tmp_path):
    elsewhere = tmp_path / "copy"
    elsewhere.mkdir()
    shutil.copy(EXTERNAL, elsewhere / EXTERNAL.name)
    shutil.copy(EXTERNAL.with_name(EXTERNAL.name + ".data"), elsewhere / (EXTERNAL.name + ".data"))
    inputs = _fixture_inputs(EXTERNAL)
    want = _reference(EXTERNAL, inputs)
    got = _evaluate(elsewhere / EXTERNAL.name, inputs)
    for name in want:
        _assert_close(name, got[name], want[name])


def test_missing_external_data_is_a_clear_error(tmp_path):
    lonely = tmp_path / EXTERNAL.name
    shutil.copy(EXTERNAL, lonely)
    with pytest.raises(ModelLoadError, match="external data") as info:
        load_model(lonely, batch_size=2)
    message = str(info.value)
    assert str(lonely) in message  # which model
    assert EXTERNAL.name + ".data" in message  # and which file is missing
