"""``projc compile`` and ``projc train``: the commands that build and run projection programs."""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from projc.cli import ALGORITHMS, BatchOpt, DimOpt, Format, FormatOpt, _emit_json, _parse_dims, app, err, out
from projc.errors import ProjcError
from projc.fileio import write_atomic


class Emit(str, Enum):
    ir = "ir"
    constraints = "constraints"
    schedule = "schedule"
    stablehlo = "stablehlo"
    dot = "dot"


# Options that fix the compiled step; `train` takes them too when given an ONNX file.
LossOpt = typer.Option(None, "--loss", help="cross-entropy, margin or mse [default: cross-entropy].")
AlgorithmOpt = typer.Option(None, "--algorithm", "-a", help=f"{', '.join(ALGORITHMS)} [default: dr].")
IterationsOpt = typer.Option(None, "--iterations", "-i", help="Iterations per minibatch [default: 50].")
LambdaOpt = typer.Option(None, "--lambda", help="Douglas-Rachford relaxation in (0, 1] [default: 0.5].")
BetaOpt = typer.Option(None, "--beta", help="Difference-map beta [default: 1].")
RelaxOpt = typer.Option(None, "--relax", help="Alternating projections' relaxation x + R (P1 P0 x - x), R in (0, 2) [default: 1].")
LossLambdaOpt = typer.Option(None, "--loss-lambda", help="Weight of the loss in its proximal operator [default: 5].")
CompatOpt = typer.Option(None, "--pjax-compat/--exact", help="The reference framework PJAX's operators, for comparison [default: exact].")
LogitsOpt = typer.Option(None, "--logits", help="The value the loss acts on (default: the output, head stripped).")
DevicesOpt = typer.Option(None, "--devices", help="Shard the state over N devices (all processes' in a multi-process run) [default: 1].")
ModelParallelOpt = typer.Option(None, "--model-parallel", help="Of those devices, how many split the neurons of large layers [default: 1].")
StateDtypeOpt = typer.Option(None, "--state-dtype", help="Store the iterate between iterations as float32 or bfloat16 (solves stay float32) [default: float32].")
CoordinatorOpt = typer.Option(None, "--coordinator", help="Multi-process: address:port of process 0 [env: JAX_COORDINATOR_ADDRESS].")
NumProcessesOpt = typer.Option(None, "--num-processes", help="Multi-process: how many processes [env: JAX_NUM_PROCESSES].")
ProcessIdOpt = typer.Option(None, "--process-id", help="Multi-process: this process's index, 0 to N-1 [env: JAX_PROCESS_ID].")


def _compile_options(batch_size, dim, loss, algorithm, iterations, lam, beta, loss_lambda, pjax_compat, logits,
                     devices=None, model_parallel=None, state_dtype=None, relax=None) -> dict:
    """The compile flags the user gave (None = not given)."""
    given = {"batch_size": batch_size, "dims": _parse_dims(dim) or None, "loss": loss, "algorithm": algorithm,
             "iterations": iterations, "lam": lam, "beta": beta, "loss_lambda": loss_lambda,
             "pjax_compat": pjax_compat, "logits": logits, "devices": devices, "model_parallel": model_parallel,
             "state_dtype": state_dtype, "relax": relax}
    return {k: v for k, v in given.items() if v is not None}


def _distributed(coordinator: Optional[str], num_processes: Optional[int], process_id: Optional[int]) -> Optional[int]:
    """Join a multi-process run when asked (flags, else JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES
    and JAX_PROCESS_ID); returns this process's index, or None when running alone."""
    import os

    coordinator = coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS")
    num = num_processes if num_processes is not None else os.environ.get("JAX_NUM_PROCESSES")
    pid = process_id if process_id is not None else os.environ.get("JAX_PROCESS_ID")
    if coordinator is None and num is None and pid is None:
        return None
    if coordinator is None or num is None or pid is None:
        raise ProjcError("a multi-process run needs --coordinator, --num-processes and --process-id "
                         "(or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID)")
    try:
        num, pid = int(num), int(pid)
    except ValueError:
        raise ProjcError(f"--num-processes {num!r} / --process-id {pid!r}: expected integers") from None
    if not 0 <= pid < num:
        raise ProjcError(f"--process-id {pid}: must lie in 0..{num - 1} for --num-processes {num}")
    import jax

    jax.distributed.initialize(coordinator, num_processes=num, process_id=pid)
    return pid


def enable_compilation_cache() -> None:
    """Keep compiled XLA programs on disk, so a second run of the same model starts at once.

    The cache lives in ``$PROJC_CACHE_DIR`` or ``$XDG_CACHE_HOME/projc/xla`` (``~/.cache``);
    ``PROJC_CACHE_DIR=off`` turns it off."""
    import os

    import jax

    where = os.environ.get("PROJC_CACHE_DIR")
    if where == "off":
        return
    if not where:
        where = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "projc", "xla")
    try:
        os.makedirs(where, exist_ok=True)
    except OSError:
        return  # a read-only home: run without the cache rather than fail
    jax.config.update("jax_compilation_cache_dir", where)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


_FLAG = {"lam": "lambda", "dims": "dim"}  # option names whose flag is spelled otherwise


def _compile(model: Path, options: dict):
    from projc.program import compile as compile_program

    enable_compilation_cache()
    return compile_program(model, **options)


def _open(model: Path, options: dict):
    """An ONNX file compiled with ``options``, or a compiled artifact (which fixes them already)."""
    from projc.artifact import is_artifact, load

    if is_artifact(model):
        mesh = {k: options.pop(k) for k in ("devices", "model_parallel") if k in options}
        if options:
            flags = ", ".join("--" + _FLAG.get(k, k.replace("_", "-")) for k in options)
            raise ProjcError(f"{model}: a compiled artifact fixes {flags}; recompile the ONNX model to change them")
        return load(model, **mesh)  # --devices on an artifact re-shards it
    return _compile(model, options)


@app.command(name="compile")
def compile_(
    model: Path = typer.Argument(..., help="An ONNX model file.", show_default=False),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Artifact directory [default: MODEL.projc here]; with --emit, the file to write."),
    batch_size: Optional[int] = BatchOpt,
    dim: Optional[list[str]] = DimOpt,
    loss: Optional[str] = LossOpt,
    algorithm: Optional[str] = AlgorithmOpt,
    iterations: Optional[int] = IterationsOpt,
    lam: Optional[float] = LambdaOpt,
    beta: Optional[float] = BetaOpt,
    relax: Optional[float] = RelaxOpt,
    loss_lambda: Optional[float] = LossLambdaOpt,
    pjax_compat: Optional[bool] = CompatOpt,
    logits: Optional[str] = LogitsOpt,
    devices: Optional[int] = DevicesOpt,
    model_parallel: Optional[int] = ModelParallelOpt,
    state_dtype: Optional[str] = StateDtypeOpt,
    platform: str = typer.Option("cpu", "--platform", help="Platforms to export the step for, comma-separated: cpu, cuda, rocm, tpu."),
    emit: Optional[Emit] = typer.Option(None, "--emit", help="Print (or write to -o) one stage instead: ir, constraints, schedule, stablehlo, dot."),
) -> None:
    """Compile an ONNX model into a self-contained projection program (an artifact directory
    that `projc train` runs without the source model)."""
    options = _compile_options(batch_size, dim, loss, algorithm, iterations, lam, beta, loss_lambda, pjax_compat, logits,
                               devices, model_parallel, state_dtype, relax)
    program = _compile(model, options)
    platforms = tuple(p.strip() for p in platform.split(",") if p.strip())
    if emit is not None:
        text = _emit_stage(program, emit, platforms)
        if output is None:
            sys.stdout.write(text)
        else:
            write_atomic(output, text)
            err.print(f"wrote {output}")
        return
    output = output or Path(model.stem + ".projc")
    from projc.artifact import save

    save(program, output, platforms)
    c = program.config
    out.print(f"compiled {model} -> {output}: {c.algorithm} x{c.iterations} per minibatch, batch {c.batch_size}, "
              f"loss {c.loss}, {sum(v.size for v in program.params.values()):,} parameters, "
              f"state {program.schedule.state_floats:,} floats, platforms {', '.join(platforms)}"
              + (f", {c.devices} devices" if c.devices > 1 else ""), highlight=False)


def _emit_stage(program, emit: Emit, platforms: tuple[str, ...]) -> str:
    from projc.constraints import format_program
    from projc.ir import format_model
    from projc.schedule_report import schedule_dot

    if emit is Emit.ir:
        return format_model(program.model)
    if emit is Emit.constraints:
        return format_program(program.schedule.program)
    if emit is Emit.schedule:
        return json.dumps(program.schedule_json, indent=1) + "\n"
    if emit is Emit.dot:
        return schedule_dot(program.schedule)
    from projc.artifact import export_step

    return export_step(program, platforms)[0].mlir_module()


@app.command()
def train(
    model: Path = typer.Argument(..., help="An ONNX model file or a compiled artifact (model.projc).", show_default=False),
    data: str = typer.Option(..., "--data", "-d", help="Built-in data set (digits, mnist5k, mnist1d) or a .npz file."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Trained ONNX model [default: MODEL.trained.onnx here]."),
    epochs: int = typer.Option(5, "--epochs", "-e", help="Passes over the training split."),
    seed: int = typer.Option(0, "--seed", help="Seed of the shuffling and the validation split."),
    validation: float = typer.Option(0.0, "--validation", help="Fraction of the training split held out for early stopping."),
    patience: Optional[int] = typer.Option(None, "--patience", help="Stop after this many epochs without a better validation accuracy (keeps the best epoch)."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Checkpoint file, written after every epoch."),
    resume: bool = typer.Option(False, "--resume", help="Continue from --checkpoint."),
    log: Optional[Path] = typer.Option(None, "--log", help="JSON log of every epoch."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="PNG of the learning curves (needs matplotlib)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Score the written ONNX model with onnxruntime."),
    batch_size: Optional[int] = BatchOpt,
    dim: Optional[list[str]] = DimOpt,
    loss: Optional[str] = LossOpt,
    algorithm: Optional[str] = AlgorithmOpt,
    iterations: Optional[int] = IterationsOpt,
    lam: Optional[float] = LambdaOpt,
    beta: Optional[float] = BetaOpt,
    relax: Optional[float] = RelaxOpt,
    loss_lambda: Optional[float] = LossLambdaOpt,
    pjax_compat: Optional[bool] = CompatOpt,
    logits: Optional[str] = LogitsOpt,
    devices: Optional[int] = DevicesOpt,
    model_parallel: Optional[int] = ModelParallelOpt,
    state_dtype: Optional[str] = StateDtypeOpt,
    coordinator: Optional[str] = CoordinatorOpt,
    num_processes: Optional[int] = NumProcessesOpt,
    process_id: Optional[int] = ProcessIdOpt,
    format: Format = FormatOpt,
) -> None:
    """Train a model without gradients on a data set and write the trained ONNX model."""
    from projc.datasets import load_dataset

    options = _compile_options(batch_size, dim, loss, algorithm, iterations, lam, beta, loss_lambda, pjax_compat, logits,
                               devices, model_parallel, state_dtype, relax)
    rank = _distributed(coordinator, num_processes, process_id)
    if rank is not None and "devices" not in options:
        import jax

        options["devices"] = jax.device_count()  # a multi-process run shards over every process's devices
    rank = rank or 0
    dataset = load_dataset(data)
    program = _open(model, options)
    output = output or Path(Path(program.source.path).stem + ".trained.onnx")
    if rank > 0:  # every process trains alike; process 0 alone writes files and reports
        checkpoint = log = plot = None
        if resume:
            raise ProjcError("--resume: only a single-process run resumes from a checkpoint")
    result = program.train(dataset, epochs=epochs, seed=seed, validation=validation, patience=patience,
                           checkpoint=checkpoint, resume=resume, log=log, plot=plot,
                           progress=progress and format == Format.text and rank == 0)
    if rank > 0:
        if result.stopped == "diverged":
            raise ProjcError(result.message)
        return
    program.export_onnx(output)
    ort = None
    if verify:
        from projc.evaluate import onnxruntime_accuracy

        _, _, x_test, y_test = program.fit(dataset)
        ort = onnxruntime_accuracy(output, x_test, y_test, program.batch_size)
    if format == Format.json:
        _emit_json("train", {"model": str(model), "data": dataset.name, "output": str(output),
                             "config": program.config.as_dict(), "onnxruntime_test_accuracy": ort,
                             **result.as_dict()})
    else:
        _print_result(result, output, ort)
    if result.stopped == "diverged":
        raise ProjcError(result.message)


def _print_result(result, output: Path, ort: Optional[float]) -> None:
    last = result.history[-1] if result.history else {}
    table = Table(title=f"trained -> {output}", show_header=False)
    table.add_column("", style="bold")
    table.add_column("", justify="right")
    for name in ("train", "validation", "test"):
        if f"{name}_accuracy" in last:
            table.add_row(f"{name} accuracy", f"{100 * last[f'{name}_accuracy']:.2f}%")
    if ort is not None:
        table.add_row("test accuracy (onnxruntime)", f"{100 * ort:.2f}%")
    table.add_row("epochs", f"{len(result.history)} ({result.stopped})")
    if result.minibatch_seconds is not None:
        table.add_row("time per minibatch (median)", f"{1e3 * result.minibatch_seconds:.1f} ms")
    if result.first_minibatch_seconds is not None:
        table.add_row("first minibatch (with compile)", f"{result.first_minibatch_seconds:.2f} s")
    out.print(table)
    if result.message and result.stopped != "diverged":
        out.print(result.message, highlight=False)
