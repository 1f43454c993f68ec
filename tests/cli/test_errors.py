"""Bad input: one clear message, exit status 2, no traceback (issue 2)."""

from __future__ import annotations

import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from projc import cli


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["projc", *args])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    captured = capsys.readouterr()
    return exc.value.code, captured.out, captured.err


def _mlp(path, batch="batch", features=64, classes=10, extra_nodes=()):
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((features, classes)).astype(np.float32), "W")
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"], name="fc"), *extra_nodes]
    last = nodes[-1].output[0]
    graph = helper.make_graph(
        nodes, "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, features])],
        [helper.make_tensor_value_info(last, TensorProto.FLOAT, [batch, classes])],
        [w],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def assert_clean_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, f"{needle!r} not in {err!r}"


def test_missing_file(monkeypatch, capsys, tmp_path):
    code, _, err = run_cli(monkeypatch, capsys, "inspect", str(tmp_path / "nope.onnx"))
    assert_clean_error(code, err, "nope.onnx", "no such file")


def test_not_onnx(monkeypatch, capsys, tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_text("this is not a protobuf")
    code, _, err = run_cli(monkeypatch, capsys, "inspect", str(bad))
    assert_clean_error(code, err, "bad.onnx", "not a valid ONNX model")


def test_truncated(monkeypatch, capsys, tmp_path):
    good = _mlp(tmp_path / "good.onnx")
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    code, _, err = run_cli(monkeypatch, capsys, "inspect", str(cut))
    assert_clean_error(code, err, "cut.onnx")


def test_invalid_model(monkeypatch, capsys, tmp_path):
    # a node reads a value nobody defines: the checker rejects it
    node = helper.make_node("Relu", ["ghost"], ["y"], name="r")
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
    )
    path = tmp_path / "invalid.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    code, _, err = run_cli(monkeypatch, capsys, "inspect", str(path))
    assert_clean_error(code, err, "invalid.onnx", "invalid ONNX model")


def test_unknown_ops_listed_at_once(monkeypatch, capsys, tmp_path):
    extra = [
        helper.make_node("FancyOp", ["h"], ["a"], name="fancy1", domain="custom.ops"),
        helper.make_node("FancyOp", ["a"], ["b"], name="fancy2", domain="custom.ops"),
    ]
    path = tmp_path / "custom.onnx"
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((64, 10)).astype(np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"], name="fc"), *extra], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("b", TensorProto.FLOAT, ["batch", 10])], [w],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("custom.ops", 1)]
    )
    onnx.save(model, str(path))
    code, _, err = run_cli(monkeypatch, capsys, "eval", str(path), "--data", "digits")
    assert_clean_error(code, err, "fancy1", "fancy2", "custom.ops::FancyOp", "opset 1", "2 node(s)")


def test_unbound_dynamic_dimension(monkeypatch, capsys, tmp_path):
    path = _mlp(tmp_path / "dyn.onnx")
    model = onnx.load(str(path))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[1].ClearField("dim_value")
    dims[1].dim_param = "features"
    onnx.save(model, str(path))
    code, _, err = run_cli(monkeypatch, capsys, "inspect", str(path))
    assert_clean_error(code, err, "'x'", "dimension 1", "'features'", "--dim features=SIZE")


def test_dynamic_dimension_bound_by_flag(monkeypatch, capsys, tmp_path):
    path = _mlp(tmp_path / "dyn.onnx")
    code, out, err = run_cli(monkeypatch, capsys, "inspect", str(path), "--ir", "--batch-size", "7")
    assert code in (0, None), err
    assert "float32[7,64]" in out


def test_data_shape_mismatch(monkeypatch, capsys, tmp_path):
    path = _mlp(tmp_path / "wide.onnx", features=100)
    code, _, err = run_cli(monkeypatch, capsys, "eval", str(path), "--data", "digits")
    assert_clean_error(code, err, "digits", "(64,)", "'x'", "100")


def test_labels_out_of_range(monkeypatch, capsys, tmp_path):
    path = _mlp(tmp_path / "five.onnx", classes=5)
    code, _, err = run_cli(monkeypatch, capsys, "eval", str(path), "--data", "digits")
    assert_clean_error(code, err, "label 9", "5 classes")


def test_npz_with_nan(monkeypatch, capsys, tmp_path):
    path = _mlp(tmp_path / "m.onnx")
    data = tmp_path / "nan.npz"
    x = np.zeros((10, 64), np.float32)
    x[3, 5] = np.nan
    np.savez(data, x=x, y=np.zeros(10, np.int64))
    code, _, err = run_cli(monkeypatch, capsys, "eval", str(path), "--data", str(data))
    assert_clean_error(code, err, "nan.npz".replace(".npz", ""), "NaN")


def test_unknown_dataset(monkeypatch, capsys, tmp_path):
    path = _mlp(tmp_path / "m.onnx")
    code, _, err = run_cli(monkeypatch, capsys, "eval", str(path), "--data", "imagenet")
    assert_clean_error(code, err, "unknown data set 'imagenet'", "digits")


def test_eval_agrees_with_onnxruntime(monkeypatch, capsys, tmp_path):
    path = _mlp(tmp_path / "m.onnx")
    code, out, err = run_cli(monkeypatch, capsys, "eval", str(path), "--data", "digits", "--format", "json")
    assert code in (0, None), err
    import json

    result = json.loads(out)
    assert result["schema"] == "projc.eval" and result["samples"] == 360
    assert result["accuracy_projc"] == pytest.approx(result["accuracy_onnxruntime"])
    assert result["max_abs_diff"] < 1e-4
