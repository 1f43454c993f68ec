"""Runs in a subprocess for test_sharding.py, with virtual CPU devices set before JAX starts.

    python _sharding_worker.py runs MODEL OUT.npz       # the same minibatches on several meshes
    python _sharding_worker.py artifact MODEL DIR OUT.npz  # save a sharded artifact, reload, step

``runs`` trains a few minibatches from the same parameters on 1 device, on 4 (data parallel),
on 4 as 2 x 2 (data and model parallel) and on 2 (model parallel only), and writes every run's
parameters as ``DEVICESxMODEL/NAME`` into OUT.npz for the test to compare.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402

import projc  # noqa: E402

BATCH, ITERATIONS, MINIBATCHES = 32, 10, 2
MESHES = ((1, 1), (4, 1), (4, 2), (2, 2))


def _minibatches(program):
    x, y, _, _ = program.fit(projc.load_dataset("digits"))
    return [(x[i * BATCH:(i + 1) * BATCH], program.one_hot(y[i * BATCH:(i + 1) * BATCH])) for i in range(MINIBATCHES)]


def _train(program, batches, params=None):
    params = dict(program.params if params is None else params)
    for x, labels in batches:
        params, stats = program.step(params, x, labels)
        assert bool(stats["finite"])
    return {k: np.asarray(v) for k, v in params.items()}


def runs(model: str, out: str) -> None:
    arrays = {}
    for devices, model_parallel in MESHES:
        program = projc.compile(model, batch_size=BATCH, iterations=ITERATIONS, devices=devices,
                                model_parallel=model_parallel)
        if not arrays:
            arrays.update({f"start/{k}": v for k, v in program.params.items()})
        for k, v in _train(program, _minibatches(program)).items():
            arrays[f"{devices}x{model_parallel}/{k}"] = v
    np.savez(out, **arrays)


def artifact(model: str, directory: str, out: str) -> None:
    from projc.artifact import load

    program = projc.compile(model, batch_size=BATCH, iterations=ITERATIONS, devices=4, model_parallel=2)
    program.save(directory)
    batches = _minibatches(program)
    arrays = {f"jitted/{k}": v for k, v in _train(program, batches).items()}
    for name, loaded in (("loaded", load(directory)), ("resharded", load(directory, devices=2))):
        arrays.update({f"{name}/{k}": v for k, v in _train(loaded, batches).items()})
    np.savez(out, **arrays)


if __name__ == "__main__":
    {"runs": runs, "artifact": artifact}[sys.argv[1]](*sys.argv[2:])
