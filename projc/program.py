"""A compiled projection program: what ``projc.compile`` returns and ``projc train`` runs.

:func:`compile` loads an ONNX model, lowers it to constraints, schedules the blocks for the
chosen algorithm and builds the jitted minibatch step. The :class:`CompiledProgram` holds the
current parameters, trains them (:meth:`CompiledProgram.train`), scores them
(:meth:`CompiledProgram.accuracy`), writes them back into the source graph
(:meth:`CompiledProgram.export_onnx`) and saves itself as a self-contained artifact
(:meth:`CompiledProgram.save`, :func:`projc.artifact.load`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from projc.datasets import Dataset, fit_to_input
from projc.errors import DataError, ProjcError

LOSSES = ("cross-entropy", "margin", "mse")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """What compilation fixes: the batch, the loss and the algorithm with its settings."""

    batch_size: int = 256
    loss: str = "cross-entropy"
    algorithm: str = "dr"
    iterations: int = 50
    lam: float = 0.5  # Douglas-Rachford relaxation
    beta: float = 1.0  # difference-map parameter
    loss_lambda: float = 5.0  # weight of the loss in its proximal operator
    pjax_compat: bool = False  # the reference framework's operators, for comparisons
    logits: str | None = None  # the value the loss acts on (default: the output)
    dims: tuple[tuple[str, int], ...] = ()
    devices: int = 1  # devices the state is sharded over (backends/jax/sharding.py)
    model_parallel: int = 1  # of those, how many split the neuron axis of large groups
    state_dtype: str = "float32"  # the iterate's storage between iterations: float32 or bfloat16
    relax: float = 1.0  # alternating projections' (over-)relaxation: x + relax (P_1 P_0 x - x)

    def check(self) -> "TrainConfig":
        """Reject settings no algorithm can run with, naming the flag."""
        from projc.backends.jax.algorithms import ALGORITHMS
        from projc.backends.jax.sharding import MeshShape
        from projc.backends.jax.train_step import STATE_DTYPES

        if self.batch_size < 1:
            raise ProjcError(f"--batch-size {self.batch_size}: must be at least 1")
        if self.loss not in LOSSES:
            raise ProjcError(f"--loss {self.loss!r}: expected one of {', '.join(LOSSES)}")
        if self.algorithm not in ALGORITHMS:
            raise ProjcError(f"--algorithm {self.algorithm!r}: expected one of {', '.join(ALGORITHMS)}")
        if self.iterations < 1:
            raise ProjcError(f"--iterations {self.iterations}: must be at least 1")
        if not 0 < self.lam <= 1:
            raise ProjcError(f"--lambda {self.lam}: the relaxation must lie in (0, 1]")
        if not 0 < self.relax < 2:
            raise ProjcError(f"--relax {self.relax}: the relaxation must lie in (0, 2)")
        if self.relax != 1 and self.algorithm != "ap":
            raise ProjcError(f"--relax {self.relax}: relaxes alternating projections (-a ap), not {self.algorithm!r}; "
                             "Douglas-Rachford's relaxation is --lambda")
        if self.beta == 0:
            raise ProjcError("--beta 0: the difference map needs a non-zero beta")
        if self.loss_lambda <= 0:
            raise ProjcError(f"--loss-lambda {self.loss_lambda}: must be positive")
        if self.state_dtype not in STATE_DTYPES:
            raise ProjcError(f"--state-dtype {self.state_dtype!r}: expected one of {', '.join(STATE_DTYPES)}")
        MeshShape(self.devices, self.model_parallel).check(self.batch_size)
        return self

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["dims"] = dict(self.dims)
        # at their defaults the record (manifests, checkpoints) stays what it was before these
        # options existed
        for key, default in (("devices", 1), ("model_parallel", 1), ("state_dtype", "float32"), ("relax", 1.0)):
            if d[key] == default:
                del d[key]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainConfig":
        d = dict(d)
        d["dims"] = tuple(sorted((d.get("dims") or {}).items()))
        return cls(**d)


@dataclasses.dataclass
class Source:
    """The ONNX model a program was compiled from, kept whole so it can be written back."""

    path: str
    sha256: str
    onnx: bytes  # self-contained (external data inlined)


class CompiledProgram:
    """A model compiled for gradient-free training, with its current parameters."""

    def __init__(self, *, config: TrainConfig, source: Source, input_name: str, input_shape: tuple[int, ...],
                 classes: int, params: Mapping[str, np.ndarray], step: Callable, predict: Callable,
                 schedule_json: dict, schedule=None, model=None, platforms: tuple[str, ...] = ("cpu",),
                 sharding: dict | None = None):
        self.config, self.source = config, source
        self.input_name, self.input_shape, self.classes = input_name, tuple(input_shape), classes
        self.params = {k: np.asarray(v, np.float32) for k, v in params.items()}
        self.step, self._predict = step, predict
        self.schedule_json, self.platforms = schedule_json, tuple(platforms)
        self.schedule, self.model = schedule, model  # None when loaded from an artifact
        self.sharding = sharding  # the manifest's record of a loaded artifact's mesh

    @property
    def batch_size(self) -> int:
        return self.config.batch_size

    def __repr__(self) -> str:
        c = self.config
        return (f"CompiledProgram({Path(self.source.path).name}, {c.algorithm} x{c.iterations}, batch {c.batch_size}, "
                f"loss {c.loss}, {sum(v.size for v in self.params.values()):,} parameters)")

    # --- data ----------------------------------------------------------------------------

    def fit(self, data: Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``data``'s splits shaped for the model input, labels checked against the classes."""
        xs = []
        for x, y, split in ((data.x_train, data.y_train, "train"), (data.x_test, data.y_test, "test")):
            if len(x) and int(y.max()) >= self.classes:
                raise DataError(f"{data.name}: {split} label {int(y.max())} is out of range for a model "
                                f"with {self.classes} classes")
            shaped = fit_to_input(np.asarray(x), self.input_shape, data.name, self.input_name) if len(x) else \
                np.zeros((0, *self.input_shape[1:]), np.float32)
            xs += [shaped.astype(np.float32), np.asarray(y, np.int64)]
        return tuple(xs)

    def one_hot(self, y: np.ndarray) -> np.ndarray:
        return np.eye(self.classes, dtype=np.float32)[y]

    # --- evaluation ----------------------------------------------------------------------

    def logits(self, x: np.ndarray, params: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
        """Class scores for every sample of ``x`` (padded to whole batches)."""
        params = self.params if params is None else params
        b, out = self.batch_size, []
        for start in range(0, len(x), b):
            part = x[start:start + b]
            n = len(part)
            if n < b:
                part = np.concatenate([part, np.zeros((b - n, *part.shape[1:]), part.dtype)])
            out.append(np.asarray(self._predict(params, part))[:n])
        return np.concatenate(out) if out else np.zeros((0, self.classes), np.float32)

    def accuracy(self, x: np.ndarray, y: np.ndarray, params: Mapping[str, np.ndarray] | None = None) -> float:
        """Fraction of ``x`` whose largest class score is the label ``y``."""
        if len(x) == 0:
            return float("nan")
        return float(np.mean(self.logits(x, params).argmax(-1) == y))

    # --- training and output -------------------------------------------------------------

    def train(self, data: Dataset, **options) -> "TrainResult":  # noqa: F821 - see projc.trainer
        """Train on ``data`` (see :func:`projc.trainer.train` for the options); updates ``params``."""
        from projc.trainer import train

        return train(self, data, **options)

    def export_onnx(self, path: str | os.PathLike) -> Path:
        """Write the source model with the current parameters as its initializers."""
        from projc.frontend import save_with_initializers

        save_with_initializers(self.source.onnx, self.params, path)
        return Path(path)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the self-contained artifact (see :mod:`projc.artifact`)."""
        from projc.artifact import save

        return save(self, path)


def _source(path: Path) -> Source:
    import onnx

    from projc.frontend import read_model  # validates and reports bad files

    read_model(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    proto = onnx.load(str(path))  # external data inlined: the artifact must stand alone
    return Source(str(path), digest, proto.SerializeToString())


def _input(model, source: str):
    graph = model.graph
    inputs = [v for v in graph.inputs if v.name not in graph.initializers]
    if len(inputs) != 1:
        raise ProjcError(f"{source}: training needs a model with one data input; it has {len(inputs)} "
                         f"({', '.join(v.name for v in inputs)})")
    return inputs[0]


def compile(model: str | os.PathLike, *, batch_size: int = 256, dims: Mapping[str, int] | None = None,
            loss: str = "cross-entropy", algorithm: str = "dr", iterations: int = 50, lam: float = 0.5,
            beta: float = 1.0, loss_lambda: float = 5.0, pjax_compat: bool = False, logits: str | None = None,
            monitor: bool | str = "violation", devices: int = 1, model_parallel: int = 1,
            state_dtype: str = "float32", relax: float = 1.0) -> CompiledProgram:
    """Compile the ONNX model at ``model`` into a trainable projection program.

    ``devices > 1`` shards the state over that many devices (the batch split ``devices /
    model_parallel`` ways, the neurons of large layers ``model_parallel`` ways); the batch size
    must divide by the data-parallel part. In a multi-process run (``jax.distributed``)
    ``devices`` counts the devices of every process. ``state_dtype="bfloat16"`` stores the
    iterate in bfloat16 between iterations (the projections still compute in float32).
    ``relax`` over-relaxes alternating projections, ``x + relax (P_1 P_0 x - x)`` with relax in
    (0, 2): on the MNIST MLP, 80 iterations at 1.9 reach the accuracy of 150 plain ones.
    ``monitor``: what each minibatch reports besides the constraint violation of its final
    state: nothing more (``"violation"``, the default), the fixed-point residual of the last
    iteration (``"last"``) or of every one (``"iterations"``). A residual inside the iteration
    loop keeps the previous iterate alive while the next is written, a copy of the state per
    iteration: "last" makes a 20-iteration MNIST 784-128 step about 1.7x slower (782-909 against
    478-517 ms, two runs each).
    ``False``: no violation either.

    Example::

        program = projc.compile("models/mlp_digits.onnx", batch_size=256)
        program.train(projc.load_dataset("digits"), epochs=10)
        program.export_onnx("trained.onnx")
    """
    config = TrainConfig(batch_size, loss, algorithm, iterations, lam, beta, loss_lambda, pjax_compat, logits,
                         tuple(sorted((dims or {}).items())), devices, model_parallel, state_dtype, relax).check()
    path = Path(model)
    source = _source(path)
    return build(source, config, path=str(path), monitor=monitor)


_MONITOR = {"iterations": True, True: True, "last": "last", "violation": "violation", False: False}  # -> StepConfig


def build(source: Source, config: TrainConfig, *, path: str, monitor: bool | str = "violation",
          params: Mapping[str, np.ndarray] | None = None) -> CompiledProgram:
    """Lower, schedule and jit ``source`` under ``config`` (``path`` is the ONNX file to read)."""
    from projc.backends.jax.algorithms import get
    from projc.backends.jax.train_step import StepConfig, io_names, make_predict, make_step
    from projc.frontend import load_model
    from projc.passes.bipartize import bipartize
    from projc.passes.lower_to_constraints import lower
    from projc.passes.schedule_blocks import schedule
    from projc.schedule_report import schedule_dict

    m = load_model(path, batch_size=config.batch_size, dims=dict(config.dims))
    value = _input(m, path)
    if int(value.shape[0]) != config.batch_size:
        raise ProjcError(f"{path}: input {value.name!r} has its batch at another dimension than the first "
                         f"(shape {list(value.shape)}); projc trains batch-first models")
    prog = lower(m, loss=config.loss, logits=config.logits)
    bipartize(prog)
    sched = schedule(prog, "two-sets" if get(config.algorithm).two_sets else "layers")
    data, _, logits_slot = io_names(prog)
    if tuple(prog.variables[data].shape) != tuple(value.shape):
        raise ProjcError(f"{path}: the input {value.name!r} is reshaped before use in a way training does not follow")
    if params is None:
        params = {name: v.const_value.numpy() for name, v in m.graph.initializers.items()
                  if name in prog.variables}
    step = make_step(sched, StepConfig(config.algorithm, config.iterations, config.lam, config.beta,
                                       config.loss_lambda, compat=config.pjax_compat, monitor=_monitor(monitor),
                                       devices=config.devices, model_parallel=config.model_parallel,
                                       state_dtype=config.state_dtype, relax=config.relax))
    return CompiledProgram(config=config, source=source, input_name=value.name, input_shape=tuple(value.shape),
                           classes=int(logits_slot.shape[-1]), params=params, step=step,
                           predict=make_predict(prog), schedule_json=schedule_dict(sched, path), schedule=sched,
                           model=m)


def _monitor(monitor):
    if monitor not in _MONITOR:
        raise ProjcError(f"monitor {monitor!r}: expected 'violation', 'last', 'iterations' or False")
    return _MONITOR[monitor]


__all__ = ["CompiledProgram", "Source", "TrainConfig", "build", "compile"]
