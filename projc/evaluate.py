"""Classification accuracy of an ONNX model on a data set, by projc's evaluator and onnxruntime."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Mapping

import numpy as np
import onnx_ir as ir

from projc.datasets import Dataset, fit_to_input
from projc.errors import DataError, ProjcError
from projc.frontend import load_model


@dataclasses.dataclass
class EvalResult:
    model: str
    dataset: str
    split: str
    samples: int
    accuracy_projc: float
    accuracy_onnxruntime: float | None
    max_abs_diff: float | None
    prediction_agreement: float | None
    seconds_projc: float
    seconds_onnxruntime: float | None

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _single_input(model: ir.Model, source: str) -> ir.Value:
    graph = model.graph
    inputs = [v for v in graph.inputs if v.name not in graph.initializers]
    if len(inputs) != 1:
        names = ", ".join(v.name for v in inputs)
        raise ProjcError(f"{source}: evaluation needs a model with one data input; it has {len(inputs)} ({names})")
    return inputs[0]


def _logits_output(model: ir.Model, source: str) -> tuple[int, int]:
    """(index of the class-score output, number of classes)."""
    for i, value in enumerate(model.graph.outputs):
        shape = value.shape
        if shape is not None and len(shape) == 2 and isinstance(shape[1], int) and value.dtype.is_floating_point():
            return i, shape[1]
    raise ProjcError(f"{source}: no output of shape [batch, classes] to score; outputs: "
                     + ", ".join(v.name for v in model.graph.outputs))


def _chunks(x: np.ndarray, size: int):
    for start in range(0, len(x), size):
        part = x[start:start + size]
        pad = size - len(part)
        if pad:
            part = np.concatenate([part, np.zeros((pad, *part.shape[1:]), part.dtype)])
        yield part, size - pad


def _run_projc(fwd, x: np.ndarray, batch: int, out_index: int) -> np.ndarray:
    outs = [np.asarray(fwd([part])[out_index])[:n] for part, n in _chunks(x, batch)]
    return np.concatenate(outs)


def _run_onnxruntime(path: Path, input_name: str, x: np.ndarray, batch: int, out_index: int) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    out_name = session.get_outputs()[out_index].name
    outs = [session.run([out_name], {input_name: part})[0][:n] for part, n in _chunks(x, batch)]
    return np.concatenate(outs)


def evaluate(
    path: str | Path,
    data: Dataset,
    *,
    batch_size: int = 256,
    dims: Mapping[str, int] | None = None,
    split: str = "test",
    onnxruntime: bool = True,
) -> EvalResult:
    """Accuracy of the model at ``path`` on ``data``'s split, by projc and by onnxruntime."""
    path = Path(path)
    from projc.backends.jax import Forward

    model = load_model(path, batch_size=batch_size, dims=dims)
    fwd = Forward(model)  # reports every unsupported op before anything else
    value = _single_input(model, str(path))
    batch = int(value.shape[0])
    out_index, classes = _logits_output(model, str(path))
    x, y = (data.x_test, data.y_test) if split == "test" else (data.x_train, data.y_train)
    if len(x) == 0:
        raise DataError(f"{data.name}: the {split} split is empty")
    if y.max() >= classes:
        raise DataError(
            f"{data.name}: label {int(y.max())} is out of range for model output "
            f"{model.graph.outputs[out_index].name!r} with {classes} classes"
        )
    x = fit_to_input(x, tuple(value.shape), data.name, value.name).astype(value.dtype.numpy())
    start = time.perf_counter()
    ours = _run_projc(fwd, x, batch, out_index)
    t_ours = time.perf_counter() - start
    acc = float(np.mean(ours.argmax(-1) == y))
    theirs = t_theirs = diff = agree = acc_ort = None
    if onnxruntime:
        start = time.perf_counter()
        theirs = _run_onnxruntime(path, value.name, x, batch, out_index)
        t_theirs = time.perf_counter() - start
        acc_ort = float(np.mean(theirs.argmax(-1) == y))
        diff = float(np.max(np.abs(ours - theirs)))
        agree = float(np.mean(ours.argmax(-1) == theirs.argmax(-1)))
    return EvalResult(str(path), data.name, split, len(x), acc, acc_ort, diff, agree, t_ours, t_theirs)


def onnxruntime_accuracy(path: str | Path, x: np.ndarray, y: np.ndarray, batch_size: int = 256) -> float:
    """Accuracy of the ONNX file at ``path`` under onnxruntime (the check on an exported model)."""
    from projc.frontend import read_model

    model = read_model(path)
    value = _single_input(model, str(path))
    out_index, _ = _logits_output(model, str(path))
    fixed = value.shape[0] if value.shape is not None and isinstance(value.shape[0], int) else batch_size
    scores = _run_onnxruntime(Path(path), value.name, x.astype(np.float32), fixed, out_index)
    return float(np.mean(scores.argmax(-1) == y))
