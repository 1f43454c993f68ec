"""The compiled artifact ``model.projc``: a directory that trains in a new process on its own.

Layout (schema ``projc.artifact``, version 1)::

    manifest.json     schema version, projc and JAX versions, source path and sha256, input,
                      classes, parameters, training configuration, platforms, sharding (the
                      device mesh, every state array's partition spec, and the slots the step
                      holds factored, whose specs are those of their written-out arrays)
    model.onnx        the source model, external data inlined (the graph trained ONNX is written into)
    schedule.json     the constraint schedule (schema projc.schedule)
    params.npz        the parameters to start from
    step.jaxexport    the minibatch step, serialised with ``jax.export`` for the batch size and platforms
    predict.jaxexport the forward pass to the logits, likewise

The directory is written under a temporary name and renamed into place, so a failure never
leaves a half-written artifact.

A sharded step (``devices > 1``) is exported for exactly that many devices. :func:`load` runs it
on the same count; on another, it re-shards when asked (``devices=N``: the step is rebuilt from
the artifact's own ONNX model for the new mesh) and otherwise stops with an error naming the
counts, so a sharded artifact never runs on a mesh it was not compiled for.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from projc.errors import ModelLoadError, ProjcError
from projc.fileio import make_public

SCHEMA, VERSION = "projc.artifact", 1
FILES = ("manifest.json", "model.onnx", "schedule.json", "params.npz", "step.jaxexport", "predict.jaxexport")


def _specs(program):
    import jax

    params = {k: jax.ShapeDtypeStruct(v.shape, np.float32) for k, v in program.params.items()}
    x = jax.ShapeDtypeStruct(program.input_shape, np.float32)
    labels = jax.ShapeDtypeStruct((program.batch_size, program.classes), np.float32)
    return params, x, labels


def export_step(program, platforms: tuple[str, ...] = ("cpu",)):
    """The program's step and forward pass as ``jax.export.Exported`` objects."""
    from jax import export

    params, x, labels = _specs(program)
    jitted = getattr(program.step, "jitted", program.step)  # a sharded step wraps its jit
    step = export.export(jitted, platforms=platforms)(params, x, labels)
    predict = export.export(program._predict, platforms=platforms)(params, x)
    return step, predict


def save(program, path: str | os.PathLike, platforms: tuple[str, ...] | None = None) -> Path:
    """Write ``program`` as an artifact directory at ``path`` (replacing one that is there)."""
    import io

    import jax

    from projc import __version__

    path = Path(path)
    if path.exists() and not is_artifact(path):  # before the export, which takes seconds
        raise ProjcError(f"{path}: exists and is not a projc artifact; refusing to overwrite it")
    platforms = tuple(platforms or program.platforms)
    try:
        step, predict = export_step(program, platforms)
    except ValueError as exc:
        raise ProjcError(f"{path}: cannot export the step for platforms {', '.join(platforms)}: {exc}") from None
    manifest = {
        "schema": SCHEMA, "version": VERSION, "projc": __version__, "jax": jax.__version__,
        "source": {"path": program.source.path, "sha256": program.source.sha256},
        "input": {"name": program.input_name, "shape": list(program.input_shape), "dtype": "float32"},
        "classes": program.classes,
        "parameters": {k: list(v.shape) for k, v in program.params.items()},
        "config": program.config.as_dict(),
        "platforms": list(platforms),
        "sharding": _sharding(program),
    }
    buf = io.BytesIO()
    np.savez(buf, **program.params)
    contents = {
        "manifest.json": json.dumps(manifest, indent=1) + "\n",
        "model.onnx": program.source.onnx,
        "schedule.json": json.dumps(program.schedule_json, indent=1) + "\n",
        "params.npz": buf.getvalue(),
        "step.jaxexport": bytes(step.serialize()),
        "predict.jaxexport": bytes(predict.serialize()),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent))
    make_public(tmp)
    try:
        for name, data in contents.items():
            (tmp / name).write_bytes(data.encode() if isinstance(data, str) else data)
        old = None
        if path.exists():
            old = path.with_name(path.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _sharding(program) -> dict:
    """The mesh and the partition specs of the state, as the manifest records them."""
    from projc.backends.jax.sharding import MeshShape, plan
    from projc.factored_copies import held

    c = program.config
    mesh = MeshShape(c.devices, c.model_parallel)
    record = {"devices": mesh.devices, "mesh": mesh.as_dict(), "axis_names": ["batch", "model"],
              "inputs": {"params": [], "x": ["batch"], "labels": ["batch"]}, "outputs": {"params": []}}
    if mesh.sharded and program.schedule is not None:
        record["state"] = plan(program.schedule.program, mesh).as_dict()["state"]
        # these slots' specs are those of their written-out arrays: the step holds them as
        # factors (state.Lowrank, GramLowrank) and leaves the factors' placement to XLA
        record["factored"] = {r["key"]: r["form"] for r in held(program.schedule.program)}
    elif program.sharding is not None:  # re-saving a loaded artifact keeps what it recorded
        record["state"] = program.sharding.get("state", {})
        record["factored"] = program.sharding.get("factored", {})
    return record


def is_artifact(path: str | os.PathLike) -> bool:
    return Path(path).is_dir() and (Path(path) / "manifest.json").exists()


def read_manifest(path: str | os.PathLike) -> dict:
    """The manifest of the artifact at ``path``, checked for schema and completeness."""
    path = Path(path)
    if not is_artifact(path):
        raise ModelLoadError(f"{path}: not a projc artifact (no manifest.json)")
    try:
        manifest = json.loads((path / "manifest.json").read_text())
    except ValueError as exc:
        raise ModelLoadError(f"{path}/manifest.json: not valid JSON ({exc})") from None
    if manifest.get("schema") != SCHEMA:
        raise ModelLoadError(f"{path}: manifest schema {manifest.get('schema')!r} is not {SCHEMA!r}")
    if manifest.get("version") != VERSION:
        raise ModelLoadError(f"{path}: artifact version {manifest.get('version')} is not supported "
                             f"(this projc reads version {VERSION}); recompile the model")
    missing = [f for f in FILES if not (path / f).exists()]
    if missing:
        raise ModelLoadError(f"{path}: incomplete artifact, missing {', '.join(missing)}")
    return manifest


def load(path: str | os.PathLike, *, devices: int | None = None, model_parallel: int | None = None):
    """The :class:`~projc.program.CompiledProgram` saved at ``path``, its step deserialised.

    ``devices`` / ``model_parallel`` different from what the artifact was compiled for re-shard
    it: the step is rebuilt from the artifact's ONNX model for the new mesh (the parameters are
    kept). A sharded artifact on a machine with another device count, without them, is an error.
    """
    import dataclasses

    import jax
    from jax import export

    from projc.program import CompiledProgram, Source, TrainConfig, build

    path = Path(path)
    manifest = read_manifest(path)
    platform = jax.default_backend()
    if platform not in manifest["platforms"]:
        raise ProjcError(f"{path}: compiled for {', '.join(manifest['platforms'])}, but JAX runs on {platform}; "
                         f"recompile with --platform {platform}")
    config = TrainConfig.from_dict(manifest["config"])
    onnx_bytes = (path / "model.onnx").read_bytes()
    with np.load(path / "params.npz") as f:
        params = {k: f[k] for k in f.files}
    src = manifest["source"]
    source = Source(src["path"], src["sha256"], onnx_bytes)
    if model_parallel is None:  # keep the recorded model split where the device count allows it
        model_parallel = config.model_parallel if (devices or config.devices) % config.model_parallel == 0 else 1
    devices = devices or config.devices
    wanted = dataclasses.replace(config, devices=devices, model_parallel=model_parallel)
    if wanted != config:  # re-shard: the same program for another mesh
        program = build(source, wanted.check(), path=str(path / "model.onnx"), params=params)
        program.platforms = tuple(manifest["platforms"])
        return program
    step = jax.jit(export.deserialize(bytearray((path / "step.jaxexport").read_bytes())).call)
    if config.devices > 1:
        step = _sharded_step(path, config, step, params)
    predict = export.deserialize(bytearray((path / "predict.jaxexport").read_bytes()))
    return CompiledProgram(
        config=config, source=source,
        input_name=manifest["input"]["name"], input_shape=tuple(manifest["input"]["shape"]),
        classes=int(manifest["classes"]), params=params, step=step, predict=jax.jit(predict.call),
        schedule_json=json.loads((path / "schedule.json").read_text()), platforms=tuple(manifest["platforms"]),
        sharding=manifest.get("sharding"),
    )


def _sharded_step(path: Path, config, step, params):
    """The deserialised step of a sharded artifact, on a mesh of the device count it recorded."""
    import jax

    from projc.backends.jax import sharding

    try:
        mesh = sharding.make_mesh(sharding.MeshShape(config.devices, config.model_parallel))
    except ProjcError:
        raise ProjcError(f"{path}: compiled for {config.devices} devices, but JAX sees {jax.device_count()}; "
                         f"pass --devices {jax.device_count()} to re-shard it, or run where {config.devices} "
                         f"devices are available") from None
    in_sh, out_sh = sharding.io_shardings(mesh, params)
    # the exported module carries its own shardings; the jit gives it the mesh it was made for
    return sharding.ShardedStep(jax.jit(step, in_shardings=in_sh, out_shardings=out_sh), in_sh, mesh)


__all__ = ["FILES", "export_step", "is_artifact", "load", "read_manifest", "save"]
