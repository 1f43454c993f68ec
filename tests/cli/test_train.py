"""`projc compile` and `projc train` end to end on digits, and the Python API (issue 5)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

import projc
from projc.evaluate import onnxruntime_accuracy
from test_errors import run_cli

MODELS = Path(__file__).resolve().parents[2] / "models"
MLP = str(MODELS / "mlp_digits.onnx")
FAST = ("--iterations", "20", "--no-progress")


def _initializers(path) -> dict[str, np.ndarray]:
    return {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}


def test_train_writes_an_onnx_model_that_onnxruntime_scores_like_projc(monkeypatch, capsys, tmp_path):
    out, log = tmp_path / "trained.onnx", tmp_path / "log.json"
    code, stdout, _ = run_cli(monkeypatch, capsys, "train", MLP, "--data", "digits", "-e", "3", "-o", str(out),
                              "--log", str(log), "--format", "json", *FAST)
    assert code in (0, None)
    result = json.loads(stdout)
    reported = result["history"][-1]["test_accuracy"]
    assert result["schema"] == "projc.train" and result["stopped"] == "completed"
    assert reported >= 0.95
    # the exported graph is the source graph with new initializers, scored the same by onnxruntime
    assert abs(onnxruntime_accuracy(out, *_digits_test()) - reported) <= 0.001
    assert abs(result["onnxruntime_test_accuracy"] - reported) <= 0.001
    before, after = _initializers(MLP), _initializers(out)
    assert before.keys() == after.keys() and all(before[k].shape == after[k].shape for k in before)
    assert any(not np.allclose(before[k], after[k]) for k in before)
    assert [n.op_type for n in onnx.load(str(out)).graph.node] == [n.op_type for n in onnx.load(MLP).graph.node]
    logged = json.loads(log.read_text())
    assert logged["schema"] == "projc.train-log" and [r["epoch"] for r in logged["epochs"]] == [1, 2, 3]
    assert logged["epochs"][-1]["test_accuracy"] == reported and logged["stopped"] == "completed"


def _digits_test():
    data = projc.load_dataset("digits")
    return data.x_test, data.y_test


def test_compiled_artifact_trains_in_a_new_process_without_the_source(monkeypatch, capsys, tmp_path):
    source = tmp_path / "mlp.onnx"
    shutil.copy(MLP, source)
    art = tmp_path / "mlp.projc"
    code, stdout, _ = run_cli(monkeypatch, capsys, "compile", str(source), "-o", str(art), "--iterations", "20")
    assert code in (0, None) and "compiled" in stdout
    manifest = json.loads((art / "manifest.json").read_text())
    assert manifest["schema"] == "projc.artifact" and manifest["version"] == 1
    assert manifest["config"]["iterations"] == 20 and manifest["config"]["batch_size"] == 256
    assert len(manifest["source"]["sha256"]) == 64 and manifest["input"]["shape"] == [256, 64]
    source.unlink()
    out = tmp_path / "t.onnx"
    run = subprocess.run([sys.executable, "-m", "projc", "train", str(art), "-d", "digits", "-e", "2", "-o", str(out),
                          "--no-progress", "--format", "json"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    from_artifact = json.loads(run.stdout)
    # the same run from the ONNX file, in this process, with the jitted (not deserialised) step
    program = projc.compile(MLP, iterations=20)
    direct = program.train(projc.load_dataset("digits"), epochs=2)
    assert from_artifact["history"][-1]["test_accuracy"] == pytest.approx(direct.test_accuracy, abs=0.003)
    trained = _initializers(out)
    for name, value in program.params.items():
        np.testing.assert_allclose(trained[name], value, rtol=1e-3, atol=1e-4)


def test_relaxed_ap_is_recorded_in_the_artifact(monkeypatch, capsys, tmp_path):
    plain, relaxed = tmp_path / "plain.projc", tmp_path / "relaxed.projc"
    assert run_cli(monkeypatch, capsys, "compile", MLP, "-o", str(plain), "-a", "ap", "-i", "2")[0] in (0, None)
    assert run_cli(monkeypatch, capsys, "compile", MLP, "-o", str(relaxed), "-a", "ap", "-i", "2",
                   "--relax", "1.8")[0] in (0, None)
    # at its default the option leaves the record as it was before it existed
    assert "relax" not in json.loads((plain / "manifest.json").read_text())["config"]
    assert json.loads((relaxed / "manifest.json").read_text())["config"]["relax"] == 1.8
    from projc.artifact import load

    assert load(relaxed).config.relax == 1.8


def test_resume_continues_a_run_exactly(tmp_path):
    data = projc.load_dataset("digits")
    ck = tmp_path / "ck.npz"
    first = projc.compile(MLP, iterations=10)
    first.train(data, epochs=2, checkpoint=ck, seed=3)
    resumed = projc.compile(MLP, iterations=10)
    result = resumed.train(data, epochs=3, checkpoint=ck, resume=True, seed=3)
    assert [r["epoch"] for r in result.history] == [1, 2, 3]
    straight = projc.compile(MLP, iterations=10)
    straight.train(data, epochs=3, seed=3)
    for name in straight.params:
        np.testing.assert_allclose(resumed.params[name], straight.params[name], rtol=1e-6, atol=1e-6)
    other = projc.compile(MLP, iterations=11)
    with pytest.raises(projc.ProjcError, match="another model or configuration"):
        other.train(data, epochs=3, checkpoint=ck, resume=True)


def test_divergence_stops_and_keeps_the_last_good_parameters():
    program = projc.compile(MLP, iterations=5)
    real_step, calls = program.step, []

    def step(params, x, labels):
        new, stats = real_step(params, x, labels)
        calls.append(1)
        if len(calls) == 3:  # the third minibatch blows up
            new = {k: v * np.nan for k, v in new.items()}
            stats = {**stats, "finite": np.bool_(False)}
        return new, stats

    program.step = step
    kept = {}

    def on_epoch(record):
        kept.update(program.params)

    result = program.train(projc.load_dataset("digits"), epochs=3, on_epoch=on_epoch)
    assert result.stopped == "diverged" and "minibatch 3" in result.message
    assert len(result.history) == 1 and result.history[0]["minibatches"] == 2
    assert all(np.isfinite(v).all() for v in program.params.values())
    assert len(calls) == 3


def test_early_stopping_keeps_the_best_validation_epoch(tmp_path):
    program = projc.compile(MLP, iterations=10)
    result = program.train(projc.load_dataset("digits"), epochs=30, patience=1, validation=0.2,
                           plot=tmp_path / "curves.png")
    assert result.stopped == "early-stopped" and len(result.history) < 30
    best = max(r["validation_accuracy"] for r in result.history)
    assert result.history[result.best_epoch - 1]["validation_accuracy"] == best
    assert len(result.history) - result.best_epoch == 1
    data = projc.load_dataset("digits")
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the kept parameters are the best epoch's: its test accuracy comes back
    _, _, x_test, y_test = program.fit(data)
    assert program.accuracy(x_test, y_test) == pytest.approx(result.history[result.best_epoch - 1]["test_accuracy"])


@pytest.mark.parametrize("algorithm", ["ap", "dm", "cp", "cdr"])
def test_every_algorithm_trains_from_the_command_line(monkeypatch, capsys, tmp_path, algorithm):
    code, stdout, _ = run_cli(monkeypatch, capsys, "train", MLP, "-d", "digits", "-e", "1", "-a", algorithm,
                              "-o", str(tmp_path / "t.onnx"), "--format", "json", "--no-verify", *FAST)
    assert code in (0, None)
    assert json.loads(stdout)["history"][0]["test_accuracy"] > 0.5


@pytest.mark.parametrize("emit, marker", [("stablehlo", "func.func public @main"), ("schedule", '"projc.schedule"'),
                                          ("constraints", "program "), ("ir", "Gemm"), ("dot", "graph schedule {")])
def test_compile_emits_each_stage(monkeypatch, capsys, emit, marker):
    code, stdout, _ = run_cli(monkeypatch, capsys, "compile", MLP, "--emit", emit, "--iterations", "2")
    assert code in (0, None) and marker in stdout


def _npz(path, n, features=64, classes=10):
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.random((n, features), np.float32), y=rng.integers(0, classes, n))
    return str(path)


@pytest.mark.parametrize("args, message", [
    (("-d", "{small}"), "fewer than the batch size 256"),
    (("-d", "mnist1d"), "do not fit model input"),
    (("-d", "{labels}"), "out of range"),
    (("-d", "digits", "--epochs", "0"), "--epochs 0"),
    (("-d", "digits", "--resume"), "--resume needs --checkpoint"),
    (("-d", "digits", "--algorithm", "sgd"), "expected one of"),
    (("-d", "digits", "--lambda", "1.5"), "(0, 1]"),
    (("-d", "digits", "-a", "ap", "--relax", "2"), "--relax 2.0: the relaxation must lie in (0, 2)"),
    (("-d", "digits", "--relax", "1.5"), "relaxes alternating projections (-a ap), not 'dr'"),
    (("-d", "digits", "--state-dtype", "float16"), "--state-dtype 'float16': expected one of float32, bfloat16"),
])
def test_bad_training_input_exits_2(monkeypatch, capsys, tmp_path, args, message):
    fill = {"small": _npz(tmp_path / "small.npz", 40), "labels": _npz(tmp_path / "l.npz", 300, classes=12)}
    args = [a.format(**fill) for a in args]
    out = tmp_path / "never.onnx"
    code, _, err = run_cli(monkeypatch, capsys, "train", MLP, *args, "-o", str(out), "--no-progress")
    assert code == 2 and message in err and "Traceback" not in err
    assert not out.exists()


def test_artifact_refuses_compile_flags_and_an_op_that_does_not_train(monkeypatch, capsys, tmp_path):
    art = tmp_path / "m.projc"
    assert run_cli(monkeypatch, capsys, "compile", MLP, "-o", str(art), "-i", "2")[0] in (0, None)
    import os
    import stat

    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(art.stat().st_mode) == 0o777 & ~umask  # not mkdtemp's private 0700
    assert stat.S_IMODE((art / "manifest.json").stat().st_mode) == 0o666 & ~umask
    (tmp_path / "plain").mkdir()
    code, _, err = run_cli(monkeypatch, capsys, "compile", MLP, "-o", str(tmp_path / "plain"), "-i", "2")
    assert code == 2 and "not a projc artifact" in err
    code, _, err = run_cli(monkeypatch, capsys, "train", str(art), "-d", "digits", "--iterations", "5",
                           "--loss-lambda", "2", "--lambda", "0.4")
    assert code == 2 and "fixes --iterations, --lambda, --loss-lambda" in err
    code, stdout, _ = run_cli(monkeypatch, capsys, "inspect", str(art), "-f", "json")
    shown = json.loads(stdout)
    assert shown["artifact"]["config"]["iterations"] == 2 and shown["cost"]["state_floats"] > 0
    model = onnx.load(MLP)
    relu = next(n for n in model.graph.node if n.op_type == "Relu")
    relu.op_type = "Softsign"  # evaluates, but has no constraint form
    bad = tmp_path / "softsign.onnx"
    onnx.save(model, str(bad))
    code, _, err = run_cli(monkeypatch, capsys, "train", str(bad), "-d", "digits")
    assert code == 2 and "Softsign" in err and "Traceback" not in err
