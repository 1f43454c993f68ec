"""The training loop: minibatches over epochs, evaluation, early stopping, checkpoints, logs.

Each minibatch is one call of the compiled step (forward-pass initialisation, the algorithm's
iterations, consensus read-out). After every epoch the loop scores the train, validation and
test splits, appends a record to the history (and to the JSON log), and writes a checkpoint
from which ``resume=True`` continues bit for bit. A non-finite state stops training and keeps
the last good parameters.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import statistics
import time
from pathlib import Path
from typing import Callable

import numpy as np

from projc.datasets import Dataset
from projc.errors import DataError, ProjcError
from projc.fileio import write_atomic

LOG_SCHEMA, LOG_VERSION = "projc.train-log", 1


@dataclasses.dataclass
class TrainResult:
    """What a training run did: per-epoch history, how it stopped, timings."""

    history: list[dict]
    stopped: str  # "completed", "early-stopped" or "diverged"
    message: str
    best_epoch: int | None
    first_minibatch_seconds: float | None  # includes compiling the step
    minibatch_seconds: float | None  # median of the others
    residuals: list[float]  # of the last minibatch: per iteration (monitor="iterations"), the last one, or none

    @property
    def test_accuracy(self) -> float | None:
        return self.history[-1]["test_accuracy"] if self.history else None

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class _Split:
    x: np.ndarray
    y: np.ndarray


def _splits(program, data: Dataset, validation: float, seed: int) -> dict[str, _Split]:
    x, y, xt, yt = program.fit(data)
    splits = {"train": _Split(x, y), "test": _Split(xt, yt)}
    if validation > 0:
        order = np.random.default_rng([seed, 1]).permutation(len(x))
        n_val = int(round(validation * len(x)))
        if n_val < 1 or n_val >= len(x):
            raise DataError(f"{data.name}: a validation fraction of {validation} leaves no train or no validation samples")
        val, tr = order[:n_val], order[n_val:]
        splits = {"train": _Split(x[tr], y[tr]), "validation": _Split(x[val], y[val]), "test": _Split(xt, yt)}
    n, b = len(splits["train"].x), program.batch_size
    if n < b:
        raise DataError(f"{data.name}: {n} training samples are fewer than the batch size {b}; "
                        f"compile with --batch-size {n} or less")
    return splits


def _check_options(epochs: int, validation: float, patience: int | None) -> None:
    if epochs < 1:
        raise ProjcError(f"--epochs {epochs}: must be at least 1")
    if not 0 <= validation < 1:
        raise ProjcError(f"--validation {validation}: expected a fraction in [0, 1)")
    if patience is not None and patience < 1:
        raise ProjcError(f"--patience {patience}: must be at least 1")


def _fingerprint(program) -> dict:
    return {"sha256": program.source.sha256, "config": program.config.as_dict()}


def _save_checkpoint(path: Path, program, params, best, state: dict) -> None:
    buf = io.BytesIO()
    arrays = {f"params/{k}": np.asarray(v) for k, v in params.items()}
    arrays.update({f"best/{k}": np.asarray(v) for k, v in best.items()})
    np.savez(buf, meta=np.array(json.dumps({**state, "program": _fingerprint(program)})), **arrays)
    write_atomic(path, buf.getvalue())


def _load_checkpoint(path: Path, program) -> tuple[dict, dict, dict]:
    try:
        with np.load(path, allow_pickle=False) as f:
            meta = json.loads(str(f["meta"]))
            params = {k[7:]: f[k] for k in f.files if k.startswith("params/")}
            best = {k[5:]: f[k] for k in f.files if k.startswith("best/")}
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same message
        raise ProjcError(f"{path}: not a projc checkpoint ({type(exc).__name__}: {exc})") from None
    if meta.get("program") != _fingerprint(program):
        raise ProjcError(f"{path}: the checkpoint belongs to another model or configuration; "
                         "resume with the same model and flags, or start afresh without --resume")
    return params, best, meta


def _write_log(path: Path, program, data: Dataset, options: dict, history: list[dict], stopped: str | None) -> None:
    log = {"schema": LOG_SCHEMA, "version": LOG_VERSION, "model": program.source.path,
           "sha256": program.source.sha256, "data": data.name, "config": program.config.as_dict(),
           "options": options, "stopped": stopped, "epochs": history}
    write_atomic(path, json.dumps(log, indent=1) + "\n")


def train(program, data: Dataset, *, epochs: int = 5, seed: int = 0, validation: float = 0.0,
          patience: int | None = None, checkpoint: str | os.PathLike | None = None, resume: bool = False,
          log: str | os.PathLike | None = None, plot: str | os.PathLike | None = None, progress: bool = False,
          on_epoch: Callable[[dict], None] | None = None) -> "TrainResult":
    """Train ``program``'s parameters on ``data`` in place and return what happened.

    Args:
        epochs: passes over the training split (each shuffled with ``seed``; a last partial
            minibatch is left out, a different one each epoch).
        validation: fraction of the training split held out to choose the best epoch.
        patience: stop after this many epochs without a better validation accuracy and keep
            the best epoch's parameters (a validation split of 0.1 is used if none is given).
        checkpoint: file written after every epoch; ``resume=True`` continues from it.
        log: JSON file with the configuration and every epoch's record.
        plot: PNG file with the learning curves (needs matplotlib, ``pip install projc[plot]``).
        progress: show a progress bar on stderr.
        on_epoch: called with each epoch's record.
    """
    import jax

    if patience is not None and validation == 0:
        validation = 0.1
    _check_options(epochs, validation, patience)
    if plot is not None:
        _require_matplotlib()
    splits = _splits(program, data, validation, seed)
    train_x, train_y = splits["train"].x, splits["train"].y
    b = program.batch_size
    options = {"epochs": epochs, "seed": seed, "validation": validation, "patience": patience}
    rng = np.random.default_rng(seed)
    params = {k: jax.numpy.asarray(v) for k, v in program.params.items()}
    best, best_score, best_epoch, history, start = dict(program.params), -1.0, None, [], 0
    if resume and checkpoint is not None and Path(checkpoint).exists():
        saved, best, meta = _load_checkpoint(Path(checkpoint), program)
        params = {k: jax.numpy.asarray(v) for k, v in saved.items()}
        rng.bit_generator.state = meta["rng"]
        history, start, best_score, best_epoch = meta["history"], meta["epoch"], meta["best_score"], meta["best_epoch"]
    elif resume:
        raise ProjcError(f"--resume: no checkpoint at {checkpoint}" if checkpoint else "--resume needs --checkpoint FILE")

    stopped, message, times, last_residuals = "completed", "", [], []
    first_time = None
    bar = _Bar(progress, epochs, len(train_x) // b)
    try:
        for epoch in range(start, epochs):
            bar.start_epoch(epoch)
            order = rng.permutation(len(train_x))
            finals, violations, done, epoch_start = [], [], 0, time.perf_counter()
            for i in range(len(train_x) // b):
                idx = order[i * b:(i + 1) * b]
                t0 = time.perf_counter()
                new, stats = program.step(params, train_x[idx], program.one_hot(train_y[idx]))
                if not bool(stats["finite"]):
                    stopped = "diverged"
                    message = (f"training diverged in epoch {epoch + 1}, minibatch {i + 1}: the state is no longer "
                               "finite; kept the parameters of the last good minibatch (try a smaller --lambda or "
                               "--loss-lambda)")
                    break
                params, done = new, done + 1
                elapsed = time.perf_counter() - t0
                if first_time is None:
                    first_time = elapsed
                else:
                    times.append(elapsed)
                res = np.asarray(stats["residuals"])
                if res.size:
                    last_residuals = res.tolist()
                    finals.append(float(res[-1]))
                if "violation" in stats:
                    violations.append(float(stats["violation"]))
                bar.minibatch(i + 1, finals[-1] if finals else None, violations[-1] if violations else None)
            host = {k: np.asarray(v) for k, v in params.items()}
            program.params = host
            record = {"epoch": epoch + 1, "minibatches": done,
                      "seconds": time.perf_counter() - epoch_start,
                      "residual": statistics.median(finals) if finals else None,
                      "violation": statistics.median(violations) if violations else None}
            for name, split in splits.items():
                record[f"{name}_accuracy"] = program.accuracy(split.x, split.y, host)
            history.append(record)
            score = record.get("validation_accuracy", record["test_accuracy"])
            if score > best_score:
                best, best_score, best_epoch = host, score, epoch + 1
            bar.end_epoch(record)
            if on_epoch:
                on_epoch(record)
            if checkpoint is not None:
                _save_checkpoint(Path(checkpoint), program, host, best,
                                 {"epoch": epoch + 1, "rng": rng.bit_generator.state, "history": history,
                                  "best_score": best_score, "best_epoch": best_epoch})
            if log is not None:
                _write_log(Path(log), program, data, options, history, None)
            if stopped == "diverged":
                break
            if patience is not None and best_epoch is not None and epoch + 1 - best_epoch >= patience:
                stopped = "early-stopped"
                message = f"no better validation accuracy for {patience} epochs; kept epoch {best_epoch}"
                break
    finally:
        bar.close()
    if patience is not None and best_epoch is not None:
        program.params = {k: np.asarray(v) for k, v in best.items()}
    if log is not None:
        _write_log(Path(log), program, data, options, history, stopped)
    if plot is not None:
        plot_history(history, plot, title=f"{Path(program.source.path).name} on {data.name}")
    return TrainResult(history, stopped, message, best_epoch, first_time,
                       statistics.median(times) if times else None, last_residuals)


class _Bar:
    """A rich progress bar over the minibatches of all epochs (silent when off)."""

    def __init__(self, enabled: bool, epochs: int, per_epoch: int):
        self.progress = None
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[monitor]}"), TextColumn("{task.fields[scores]}"),
            TimeElapsedColumn(), console=Console(stderr=True), transient=False)
        self.task = self.progress.add_task("train", total=epochs * per_epoch, epoch=f"1/{epochs}",
                                           monitor="", scores="")
        self.epochs, self.per_epoch = epochs, per_epoch
        self.progress.start()

    def start_epoch(self, epoch: int) -> None:
        if self.progress:
            self.progress.update(self.task, epoch=f"{epoch + 1}/{self.epochs}", completed=epoch * self.per_epoch)

    def minibatch(self, i: int, residual: float | None, violation: float | None) -> None:
        if self.progress:
            shown = [f"{name} {value:.3g}" for name, value in (("residual", residual), ("violation", violation))
                     if value is not None]
            self.progress.update(self.task, advance=1, monitor="  ".join(shown))

    def end_epoch(self, record: dict) -> None:
        if self.progress:
            scores = "  ".join(f"{name} {100 * record[f'{name}_accuracy']:.2f}%"
                               for name in ("train", "validation", "test") if f"{name}_accuracy" in record)
            self.progress.update(self.task, scores=scores)
            self.progress.console.print(f"epoch {record['epoch']}: {scores}  ({record['seconds']:.2f} s)",
                                        highlight=False)

    def close(self) -> None:
        if self.progress:
            self.progress.stop()


def _require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ProjcError("--plot needs matplotlib: pip install 'projc[plot]'") from None


def plot_history(history: list[dict], path: str | os.PathLike, title: str = "") -> None:
    """Learning curves (accuracy per split; residual or violation) as a PNG, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, (acc, res) = plt.subplots(1, 2, figsize=(10, 4))
    for name in ("train", "validation", "test"):
        key = f"{name}_accuracy"
        if history and key in history[0]:
            acc.plot(epochs, [100 * r[key] for r in history], marker="o", label=name)
    acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    acc.legend()
    acc.grid(alpha=0.3)
    # the residual where the step monitored it, else the violation every step reports
    key = "residual" if any(r.get("residual") is not None for r in history) else "violation"
    values = [r.get(key) for r in history]
    res.plot(epochs, [np.nan if v is None else v for v in values], marker="o")
    label = {"residual": "|x_k+1 - x_k| (median, last iteration)", "violation": "violation (median)"}[key]
    res.set(xlabel="epoch", ylabel=label, title="fixed-point residual" if key == "residual" else "constraint violation")
    if any(v is not None and v > 0 for v in values):
        res.set_yscale("log")
    res.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    write_atomic(path, buf.getvalue())


__all__ = ["TrainResult", "plot_history", "train"]
