"""End to end: a digits MLP trained by Douglas-Rachford through the compiled step."""

import time
from pathlib import Path

import numpy as np

from projc.backends.jax.program_forward import forward_values
from projc.backends.jax.train_step import make_step
from projc.datasets import load_dataset
from projc.frontend import load_model
from projc.passes.bipartize import bipartize
from projc.passes.lower_to_constraints import lower
from projc.passes.schedule_blocks import schedule

MODELS = Path(__file__).resolve().parents[2] / "models"
BATCH = 256


def _accuracy(prog, params, x, y):
    correct = 0
    for i in range(0, len(x), BATCH):
        xb = x[i:i + BATCH]
        n = len(xb)
        xb = np.concatenate([xb, np.zeros((BATCH - n, *xb.shape[1:]), xb.dtype)])
        logits = np.asarray(forward_values(prog, {"x": xb, **params})["logits"])[:n]
        correct += int((logits.argmax(1) == y[i:i + n]).sum())
    return correct / len(x)


def test_douglas_rachford_trains_the_digits_mlp():
    model = load_model(MODELS / "mlp_digits.onnx", batch_size=BATCH)
    prog = lower(model)
    bipartize(prog)
    step = make_step(schedule(prog), iterations=50)
    data = load_dataset("digits")
    params = {n: v.const_value.numpy() for n, v in model.graph.initializers.items() if n in prog.variables}
    before = _accuracy(prog, params, data.x_test, data.y_test)
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for _ in range(2):  # epochs
        order = rng.permutation(len(data.x_train))
        for i in range(0, len(order) - BATCH + 1, BATCH):
            idx = order[i:i + BATCH]
            params, stats = step(params, data.x_train[idx], np.eye(10, dtype=np.float32)[data.y_train[idx]])
            assert bool(stats["finite"]) and stats["residuals"].shape == (50,)
    after = _accuracy(prog, params, data.x_test, data.y_test)
    assert before < 0.3 and after > 0.93, (before, after, time.perf_counter() - start)


def test_a_step_on_a_bidirectional_lstm_with_concat_groups(tmp_path):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lowering"))
    from test_recurrent import _recurrent_model

    model = load_model(_recurrent_model(tmp_path / "bi.onnx", "LSTM", 4, direction="bidirectional"), batch_size=8)
    prog = lower(model)
    assert any(g.kind == "concat" for g in prog.groups.values())
    bipartize(prog)
    step = make_step(schedule(prog), iterations=5)
    params = {n: v.const_value.numpy() for n, v in model.graph.initializers.items() if n in prog.variables}
    rng = np.random.default_rng(0)
    new, _ = step(params, rng.standard_normal((4, 8, 5)).astype(np.float32), np.eye(3, dtype=np.float32)[rng.integers(0, 3, 8)])
    assert set(new) == set(params)
    assert all(np.isfinite(np.asarray(v)).all() for v in new.values())
    assert any(not np.allclose(np.asarray(new[k]), params[k]) for k in params)


def test_the_traced_step_does_not_grow_with_sequence_length(tmp_path):
    """Compile time follows the traced program; a recurrence is stacked over time and its
    forward sweeps run in a loop, so 64 steps trace to the same program as 8."""
    import jax

    sys_path = str(Path(__file__).resolve().parents[1] / "lowering")
    import sys

    sys.path.insert(0, sys_path)
    from test_recurrent import _recurrent_model

    sizes = []
    for steps in (8, 64):
        model = load_model(_recurrent_model(tmp_path / f"lstm{steps}.onnx", "LSTM", steps), batch_size=4)
        prog = lower(model)
        bipartize(prog)
        step = make_step(schedule(prog), iterations=3)
        params = {n: v.const_value.numpy() for n, v in model.graph.initializers.items() if n in prog.variables}
        x = np.zeros((steps, 4, 5), np.float32)
        labels = np.zeros((4, 3), np.float32)
        jaxpr = jax.make_jaxpr(step)(params, x, labels)
        # the module XLA compiles, constants included (per-entry fan-out counts once made it
        # grow with the sequence length though the jaxpr did not)
        sizes.append((len(str(jaxpr)), len(jax.jit(step).lower(params, x, labels).as_text())))
    assert sizes[1][0] < 1.05 * sizes[0][0], sizes
    assert sizes[1][1] < 1.05 * sizes[0][1], sizes


def _digits_minibatch(batch: int):
    """The digits MLP's schedule and initial parameters, and the first ``batch`` training rows."""
    model = load_model(MODELS / "mlp_digits.onnx", batch_size=batch)
    prog = lower(model)
    bipartize(prog)
    data = load_dataset("digits")
    params = {n: v.const_value.numpy() for n, v in model.graph.initializers.items() if n in prog.variables}
    return schedule(prog), params, data.x_train[:batch], np.eye(10, dtype=np.float32)[data.y_train[:batch]]


def test_bfloat16_storage_follows_the_float32_step():
    """The iterate stored as bfloat16 between iterations: the same minibatch moves the
    parameters as the float32 step does, to bfloat16's precision, and they come back float32."""
    sched, params, x, labels = _digits_minibatch(BATCH)
    exact, _ = make_step(sched, iterations=10)(params, x, labels)
    stored, stats = make_step(sched, iterations=10, state_dtype="bfloat16")(params, x, labels)
    assert bool(stats["finite"])
    for name, p in params.items():
        assert stored[name].dtype == np.float32
        moved = np.linalg.norm(np.asarray(exact[name]) - p)
        gap = np.linalg.norm(np.asarray(stored[name]) - np.asarray(exact[name]))
        assert moved > 1e-2 * np.linalg.norm(p), name  # the step does move the parameters
        assert gap < 0.25 * moved, (name, gap, moved)  # measured: 0.6-17% of the move


def test_monitoring_the_violation_only_moves_the_parameters_alike():
    """``monitor="violation"`` (projc.compile's default) skips the residuals, not the violation."""
    sched, params, x, y = _digits_minibatch(32)
    full, full_stats = make_step(sched, iterations=5, monitor=True)(params, x, y)
    mine, stats = make_step(sched, iterations=5, monitor="violation")(params, x, y)
    assert stats["residuals"].shape == (0,) and full_stats["residuals"].shape == (5,)
    np.testing.assert_allclose(float(stats["violation"]), float(full_stats["violation"]), rtol=1e-5)
    assert float(stats["violation"]) > 0
    for name in full:
        np.testing.assert_allclose(np.asarray(mine[name]), np.asarray(full[name]), rtol=1e-5, atol=1e-6)
