"""`projc inspect`: the schedule as text, JSON (versioned) and DOT; the IRs before and after lowering."""

import json
from pathlib import Path

from test_errors import run_cli

MODELS = Path(__file__).resolve().parents[2] / "models"


def test_inspect_text_shows_blocks_and_costs(monkeypatch, capsys):
    code, out, err = run_cli(monkeypatch, capsys, "inspect", str(MODELS / "cnn_digits.onnx"), "-b", "16")
    assert code in (0, None), err
    assert "schedule: 2 blocks" in out
    for needle in ("dot", "sum_act", "max", "param", "Conv_2", "state", "FLOP", "parallel width"):
        assert needle in out
    # the first convolution's kernel copies, one per sample, position and channel (16 x 8 x 8 x 8 x 9)
    assert "73,728 copies of conv1.weight are held factored" in " ".join(out.split())
    assert "so the step holds" in " ".join(out.split())


def test_inspect_json_has_versioned_schema(monkeypatch, capsys):
    code, out, err = run_cli(monkeypatch, capsys, "inspect", str(MODELS / "mlp_digits.onnx"), "-f", "json", "-b", "8")
    assert code in (0, None), err
    data = json.loads(out)
    assert data["schema"] == "projc.schedule" and data["version"] == 1
    assert data["batch_size"] == 8 and data["cost"]["blocks"] == 2
    (slot,) = data["cost"]["factored"]  # the first layer's weight copies, in Gram form (8 rows)
    assert slot["var"] == "fc1.weight" and slot["form"] == "gram"
    assert data["cost"]["held_state_floats"] == data["cost"]["state_floats"] - slot["copies"] + slot["floats"]
    assert data["groups"]["loss"]["block"] == 0
    kinds = {k["kind"] for b in data["blocks"] for k in b["kernels"]}
    assert {"dot", "linear", "sum_act", "loss", "param"} <= kinds
    assert data["network"]["parameter_count"] == 64 * 32 + 32 + 32 * 10 + 10


def test_inspect_dot_writes_file_atomically(monkeypatch, capsys, tmp_path):
    target = tmp_path / "s.dot"
    code, _, err = run_cli(monkeypatch, capsys, "inspect", str(MODELS / "mlp_digits.onnx"), "-f", "dot", "-o", str(target))
    assert code in (0, None), err
    text = target.read_text()
    assert text.startswith("graph schedule {") and "fillcolor" in text and text.rstrip().endswith("}")
    assert not list(tmp_path.glob("*.tmp"))


def test_inspect_constraints_and_ir(monkeypatch, capsys):
    code, out, _ = run_cli(monkeypatch, capsys, "inspect", str(MODELS / "mlp_digits.onnx"), "--constraints", "-b", "4")
    assert code in (0, None)
    assert out.startswith("program mlp_digits (batch 4") and "dot[4,10]" in out and "loss[4]" in out
    code, out, _ = run_cli(monkeypatch, capsys, "inspect", str(MODELS / "mlp_digits.onnx"), "--ir", "-b", "4")
    assert "Gemm(" in out and "float32[4,64]" in out


def test_inspect_reports_every_unloweable_node(monkeypatch, capsys, tmp_path):
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((4, 3), np.float32), "W")
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"], name="fc"),
             helper.make_node("Softsign", ["h"], ["a"], name="soft"),
             helper.make_node("Elu", ["a"], ["logits"], name="elu")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])], [w])
    path = tmp_path / "acts.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    code, out, err = run_cli(monkeypatch, capsys, "inspect", str(path), "--constraints")
    assert code == 2 and "Traceback" not in err
    for needle in ("soft: Softsign", "nearest supported: Tanh", "elu: Elu", "2 node(s)"):
        assert needle in err
    code, out, _ = run_cli(monkeypatch, capsys, "inspect", str(path))
    assert code in (0, None) and "not trainable yet" in out


def test_inspect_lstm_schedule(monkeypatch, capsys):
    code, out, err = run_cli(monkeypatch, capsys, "inspect", str(MODELS / "lstm_digits.onnx"), "-b", "4")
    assert code in (0, None), err
    assert "schedule: 2 blocks" in out and "mul" in out and "LSTM" in out
