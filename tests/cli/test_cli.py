"""The command line and the public API surface."""

import json
import subprocess
import sys

import projc
from test_errors import run_cli


def test_public_surface_is_pinned():
    assert projc.__all__ == ["CompiledProgram", "Forward", "ProjcError", "TrainResult", "__version__", "compile",
                             "evaluate", "load_dataset", "load_model", "load_program"]
    for name in projc.__all__:
        assert getattr(projc, name) is not None


def test_python_dash_m_entry_point():
    result = subprocess.run([sys.executable, "-m", "projc", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for command in ("compile", "train", "inspect", "eval", "ops", "conformance"):
        assert command in result.stdout


def test_ops_json_lists_core_ops(monkeypatch, capsys):
    code, out, _ = run_cli(monkeypatch, capsys, "ops", "--format", "json")
    assert code in (0, None)
    payload = json.loads(out)
    assert payload["schema"] == "projc.ops" and payload["version"] == 1
    names = {row["op"] for row in payload["ops"]}
    assert {"Gemm", "MatMul", "Relu", "Reshape", "Add"} <= names


def test_unknown_pass_in_pipeline(monkeypatch, capsys, tmp_path):
    from test_errors import _mlp

    path = _mlp(tmp_path / "m.onnx")
    code, _, err = run_cli(monkeypatch, capsys, "inspect", str(path), "-p", "canonicalize,frobnicate")
    assert code == 2 and "frobnicate" in err and "known passes" in err


def test_ops_lists_which_ops_train(monkeypatch, capsys):
    code, out, _ = run_cli(monkeypatch, capsys, "ops", "--format", "json")
    rows = {(r["domain"], r["op"]): r for r in json.loads(out)["ops"]}
    assert rows[("ai.onnx", "Gemm")]["lowers"] and rows[("ai.onnx", "Gemm")]["evaluates"]
    assert rows[("ai.onnx", "LSTM")]["lowers"]
    assert not rows[("ai.onnx", "Softmax")]["lowers"] and rows[("ai.onnx", "Softmax")]["evaluates"]
