"""Sharded projection programs (issue 7): the axis analysis, and sharded runs that must give the
single-device parameters.

Runs on several devices happen in subprocesses, because the virtual CPU device count
(``XLA_FLAGS=--xla_force_host_platform_device_count=4``) must be set before JAX starts.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

import projc
from projc.backends.jax.sharding import (BATCH, MODEL, MeshShape, batch_axes, communication, plan,
                                         source_axis)
from projc.frontend import load_model
from projc.index_map import Broadcast, IndexMap, Reshape, Take, Transpose
from projc.passes.bipartize import bipartize
from projc.passes.lower_to_constraints import lower
from projc.passes.schedule_blocks import schedule

HERE = Path(__file__).resolve().parent
MODELS = HERE.parents[1] / "models"
MLP, CNN = str(MODELS / "mlp_digits.onnx"), str(MODELS / "cnn_digits.onnx")
WORKER = HERE / "_sharding_worker.py"


def _schedule(name: str, batch: int = 64):
    prog = lower(load_model(MODELS / f"{name}.onnx", batch_size=batch))
    bipartize(prog)
    return schedule(prog)


def _env(devices: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COORDINATOR")}
    env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
    return env


def _run_worker(*args: str, devices: int = 4) -> None:
    run = subprocess.run([sys.executable, str(WORKER), *args], capture_output=True, text=True, timeout=900,
                         env=_env(devices))
    assert run.returncode == 0, run.stderr[-4000:]


def _assert_same_parameters(got: dict, want: dict, start: dict, what: str) -> None:
    """``got`` equals ``want`` to float32 tolerance, where training moved ``want`` far from ``start``."""
    moved = max(float(np.max(np.abs(want[n] - start[n])) / np.max(np.abs(want[n]))) for n in want)
    assert moved > 1e-2, "training barely moved the parameters: the comparison would prove nothing"
    for name in want:
        scale = float(np.max(np.abs(want[name])))
        diff = float(np.max(np.abs(got[name] - want[name])))
        assert diff <= 2e-4 * scale, f"{what}: {name} differs by {diff:.3g} (scale {scale:.3g})"


# --- the analysis (plain Python, no devices needed) ----------------------------------------


def test_source_axis_follows_each_kind_of_index_map_step():
    assert source_axis(IndexMap((8, 32)).then(Broadcast(1, 10)), 0) == 0
    assert source_axis(IndexMap((8, 32)).then(Broadcast(1, 10)), 1) is None  # the copies' axis
    assert source_axis(IndexMap((8, 32)).then(Broadcast(1, 10)), 2) == 1
    assert source_axis(IndexMap((8, 5, 3)).then(Transpose((1, 0, 2))), 1) == 0
    assert source_axis(IndexMap((8, 1, 8, 8)).then(Reshape((8, 1, 64))), 0) == 0
    assert source_axis(IndexMap((8, 1, 8, 8)).then(Reshape((8, 64))), 1) == 2  # merged: the outer source axis
    shift = IndexMap((8, 4, 3)).then(Take(0, np.array([-1, 0, 1, 2, 3, 4, 5, 6])))
    assert source_axis(shift, 0) == 0 and source_axis(shift, 1) == 1


@pytest.mark.parametrize("name, axes", [
    ("mlp_digits", {"linear_0": 0, "dot_0": 0, "loss": 0}),
    ("cnn_digits", {"linear_0": 0, "max_0": 0, "dot_0": 0}),  # (B, C, H, W): the batch, not the channels
    ("rnn_digits", {"linear_0": 1, "dot_0": 1, "sum_act_0": 1, "dot_1": 0}),  # stacked over time: (T, B, H)
])
def test_batch_axes_are_found_from_the_index_maps(name, axes):
    _, groups = batch_axes(_schedule(name, batch=8).program)  # batch 8 = the CNN's channels and T: no size guess
    for group, axis in axes.items():
        assert groups[group] == axis, group


def test_plan_splits_the_batch_and_the_neurons_of_large_groups():
    prog = _schedule("cnn_digits").program
    data = plan(prog, MeshShape(4))
    assert data.groups["linear_0"] == (BATCH, None, None, None)
    assert data.slots["linear_0.x"] == (BATCH, None, None, None, None)  # parameter copies carry the batch
    both = plan(prog, MeshShape(4, model=2))
    assert both.groups["linear_0"] == (BATCH, MODEL, None, None)  # the output channels
    assert both.groups["sum_act_1"] == (BATCH, None)  # 64 x 10 is small: not split
    assert both.groups["loss"] == (BATCH,)


def test_the_manifest_says_which_sharded_slots_the_step_holds_factored():
    """A sharded artifact's manifest lists each slot's partition spec as written out; the
    slots the step holds as factors are named with their form, so the specs are not read as
    the layout of arrays that do not exist. Re-saving a loaded artifact keeps the record."""
    from types import SimpleNamespace

    from projc.artifact import _sharding
    from projc.factored_copies import held

    sched = _schedule("mlp_digits")
    program = SimpleNamespace(config=SimpleNamespace(devices=4, model_parallel=2), schedule=sched,
                              sharding=None)
    record = _sharding(program)
    rows = held(sched.program)
    assert rows and record["factored"] == {r["key"]: r["form"] for r in rows}
    assert "linear_0.x" in record["factored"] and set(record["factored"]) <= set(record["state"])
    reloaded = SimpleNamespace(config=program.config, schedule=None, sharding=record)
    assert _sharding(reloaded)["factored"] == record["factored"]
    single = SimpleNamespace(config=SimpleNamespace(devices=1, model_parallel=1), schedule=sched,
                             sharding=None)
    assert "factored" not in _sharding(single)


def test_data_parallel_communication_is_one_all_reduce_of_the_parameters():
    sched = _schedule("mlp_digits")
    comm = communication(sched, MeshShape(4), "dr")
    params = sum(v.size for v in sched.program.variables.values() if v.kind.value == "param")
    assert comm["allreduce_bytes_per_iteration"] == 4 * params == comm["allreduce_bytes_readout"]
    assert communication(sched, MeshShape(1), "dr")["allreduce_bytes_per_iteration"] == 0
    # model parallel adds the all-reduce of the hidden layer's consensus over the neurons that read it
    both = communication(sched, MeshShape(4, model=2), "dr")
    relu = sched.program.variables["relu_3"].size
    assert both["allreduce_bytes_per_iteration"] > 4 * relu // 2


def test_bad_meshes_are_user_errors():
    with pytest.raises(projc.ProjcError, match="--batch-size 256 does not divide by 3"):
        MeshShape(3).check(256)
    with pytest.raises(projc.ProjcError, match="--model-parallel 3: must divide --devices 4"):
        MeshShape(4, 3).check(256)
    with pytest.raises(projc.ProjcError, match="JAX sees 1 device.*xla_force_host_platform_device_count=4"):
        projc.compile(MLP, batch_size=64, iterations=2, devices=4)


def test_the_cli_rejects_a_batch_that_does_not_split_with_exit_status_2(tmp_path):
    run = subprocess.run([sys.executable, "-m", "projc", "train", MLP, "-d", "digits", "--devices", "3",
                          "--no-progress", "-o", str(tmp_path / "t.onnx")],
                         capture_output=True, text=True, timeout=300, env=_env(4))
    assert run.returncode == 2 and "does not divide by 3" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "t.onnx").exists()


def test_inspect_shows_the_split_and_the_communication(tmp_path):
    from typer.testing import CliRunner

    from projc.cli import app

    result = CliRunner().invoke(app, ["inspect", MLP, "--devices", "4", "--model-parallel", "2"])
    assert result.exit_code == 0, result.output
    assert "sharding over 4 devices (batch 2 x model 2)" in result.output
    assert "batch,model" in result.output and "all-reduced" in result.output


# --- sharded runs against the single-device run (subprocesses with 4 virtual devices) ------


@pytest.mark.slow
@pytest.mark.parametrize("model", [MLP, CNN], ids=["mlp", "cnn"])
def test_sharded_training_gives_the_single_device_parameters(model, tmp_path):
    out = tmp_path / "runs.npz"
    _run_worker("runs", model, str(out))
    with np.load(out) as f:
        runs = {k: f[k] for k in f.files}
    names = [k.split("/", 1)[1] for k in runs if k.startswith("1x1/")]
    start = {n: runs[f"start/{n}"] for n in names}
    single = {n: runs[f"1x1/{n}"] for n in names}
    for mesh in ("4x1", "4x2", "2x2"):  # data parallel, both, model parallel
        _assert_same_parameters({n: runs[f"{mesh}/{n}"] for n in names}, single, start, mesh)


@pytest.mark.slow
def test_a_sharded_artifact_reloads_and_reshards_but_never_runs_on_the_wrong_count(tmp_path):
    from projc.artifact import load

    art, out = tmp_path / "mlp.projc", tmp_path / "art.npz"
    _run_worker("artifact", MLP, str(art), str(out))
    with np.load(out) as f:
        runs = {k: f[k] for k in f.files}
    names = [k.split("/", 1)[1] for k in runs if k.startswith("jitted/")]
    jitted = {n: runs[f"jitted/{n}"] for n in names}
    for n in names:  # the deserialised step on the recorded mesh is the same program
        np.testing.assert_array_equal(runs[f"loaded/{n}"], jitted[n])
    import json

    sharding = json.loads((art / "manifest.json").read_text())["sharding"]
    assert sharding["mesh"] == {"devices": 4, "batch": 2, "model": 2}
    assert sharding["state"]["linear_0.x"] == ["batch", "model", None]
    assert sharding["factored"]["linear_0.x"] in ("lowrank", "gram")  # held as factors
    # this process has one device: a clear error, or a re-shard when asked
    with pytest.raises(projc.ProjcError, match="compiled for 4 devices, but JAX sees 1; pass --devices 1"):
        load(art)
    resharded = load(art, devices=1)
    assert resharded.config.devices == 1
    data = projc.load_dataset("digits")
    x, y, _, _ = resharded.fit(data)
    params = dict(resharded.params)
    start = dict(params)
    for i in range(2):
        params, _ = resharded.step(params, x[i * 32:(i + 1) * 32], resharded.one_hot(y[i * 32:(i + 1) * 32]))
    _assert_same_parameters({k: np.asarray(v) for k, v in params.items()}, jitted, start, "re-sharded to 1")
    _assert_same_parameters({n: runs[f"resharded/{n}"] for n in names}, jitted, start, "re-sharded to 2")


# --- two processes on localhost (jax.distributed, gloo CPU collectives) ---------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_like_one(tmp_path):
    port, outs, procs = _free_port(), [tmp_path / f"p{i}.onnx" for i in range(2)], []
    for pid in range(2):
        cmd = [sys.executable, "-m", "projc", "train", MLP, "-d", "digits", "-e", "1", "-b", "128",
               "--iterations", "10", "--no-progress", "--no-verify", "-o", str(outs[pid]),
               "--coordinator", f"localhost:{port}", "--num-processes", "2", "--process-id", str(pid)]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      env=_env(1)))
    for p in procs:
        _, stderr = p.communicate(timeout=900)
        assert p.returncode == 0, stderr[-4000:]
    assert outs[0].exists() and not outs[1].exists()  # process 0 alone writes
    got = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(str(outs[0])).graph.initializer}
    single = projc.compile(MLP, batch_size=128, iterations=10)
    start = dict(single.params)
    single.train(projc.load_dataset("digits"), epochs=1)
    _assert_same_parameters(got, single.params, start, "two processes")
