"""The ``projc`` command line (typer + rich).

Errors caused by the user's input print one line and exit with status 2; an internal error
prints a short message (the traceback only with ``PROJC_DEBUG=1``) and exits with status 1.
"""

from __future__ import annotations

import json
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from projc.errors import ProjcError

app = typer.Typer(
    name="projc",
    help="Compile ONNX networks into projection programs and train them without gradients.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)


class Format(str, Enum):
    text = "text"
    json = "json"


SCHEMA_VERSION = 1

ModelArg = typer.Argument(..., help="An ONNX model file.", show_default=False)
BatchOpt = typer.Option(None, "--batch-size", "-b", help="Size of a dynamic batch dimension.")
DimOpt = typer.Option(None, "--dim", help="Size of another dynamic dimension, NAME=SIZE (repeatable).")
FormatOpt = typer.Option(Format.text, "--format", "-f", help="Output format.")


def _parse_dims(items: Optional[list[str]]) -> dict[str, int]:
    dims = {}
    for item in items or []:
        name, sep, size = item.partition("=")
        if not sep or not size.strip().isdigit():
            raise ProjcError(f"--dim {item!r}: expected NAME=SIZE with a positive integer size")
        dims[name.strip()] = int(size)
    return dims


def _emit_json(kind: str, payload: dict) -> None:
    out.print_json(json.dumps({"schema": f"projc.{kind}", "version": SCHEMA_VERSION, **payload}))


@app.command()
def inspect(
    model: Path = ModelArg,
    ir: bool = typer.Option(False, "--ir", help="Print the network IR after the import pipeline."),
    pipeline: Optional[str] = typer.Option(None, "--pipeline", "-p", help="Passes to run at import (comma-separated)."),
    batch_size: Optional[int] = BatchOpt,
    dim: Optional[list[str]] = DimOpt,
    format: Format = FormatOpt,
) -> None:
    """Show what projc makes of a model: its inputs, parameters and IR."""
    from projc.frontend import IMPORT_PIPELINE, load_model
    from projc.ir import CONST, PARAM, ROLE_KEY, format_model, format_type

    m = load_model(model, batch_size=batch_size or 1, dims=_parse_dims(dim), pipeline=pipeline or IMPORT_PIPELINE)
    if ir:
        text = format_model(m)
        if format == Format.json:
            _emit_json("ir", {"model": str(model), "ir": text})
        else:
            sys.stdout.write(text)
        return
    graph = m.graph
    params = [v for v in graph.initializers.values() if v.meta.get(ROLE_KEY) == PARAM]
    ops: dict[str, int] = {}
    for node in graph.all_nodes() if hasattr(graph, "all_nodes") else graph:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    summary = {
        "model": str(model),
        "inputs": {v.name: format_type(v) for v in graph.inputs if v.name not in graph.initializers},
        "outputs": {v.name: format_type(v) for v in graph.outputs},
        "parameters": {v.name: format_type(v) for v in params},
        "parameter_count": int(sum(v.const_value.size for v in params)),
        "constants": sum(v.meta.get(ROLE_KEY) == CONST for v in graph.initializers.values()),
        "ops": dict(sorted(ops.items())),
    }
    if format == Format.json:
        _emit_json("inspect", summary)
        return
    table = Table(title=f"{model}", show_header=True)
    table.add_column("kind")
    table.add_column("name")
    table.add_column("type")
    for kind in ("inputs", "outputs", "parameters"):
        for name, typ in summary[kind].items():
            table.add_row(kind[:-1], name, typ)
    out.print(table)
    out.print(f"{summary['parameter_count']:,} trainable parameters, {summary['constants']} constants; "
              "ops: " + ", ".join(f"{k} x{v}" for k, v in summary["ops"].items()))


@app.command(name="eval")
def eval_(
    model: Path = ModelArg,
    data: str = typer.Option(..., "--data", "-d", help="Built-in data set (digits, mnist5k, mnist1d) or a .npz file."),
    batch_size: int = typer.Option(256, "--batch-size", "-b", help="Evaluation batch size (for a dynamic batch)."),
    dim: Optional[list[str]] = DimOpt,
    split: str = typer.Option("test", "--split", help="Which split to score: test or train."),
    no_onnxruntime: bool = typer.Option(False, "--no-onnxruntime", help="Skip the onnxruntime comparison."),
    format: Format = FormatOpt,
) -> None:
    """Accuracy of a model on a data set, by projc's JAX evaluator and by onnxruntime side by side."""
    from projc.datasets import load_dataset
    from projc.evaluate import evaluate

    if split not in ("test", "train"):
        raise ProjcError(f"--split {split!r}: expected test or train")
    if batch_size < 1:
        raise ProjcError(f"--batch-size {batch_size}: must be at least 1")
    result = evaluate(model, load_dataset(data), batch_size=batch_size, dims=_parse_dims(dim),
                      split=split, onnxruntime=not no_onnxruntime)
    if format == Format.json:
        _emit_json("eval", result.as_dict())
        return
    table = Table(title=f"{model} on {result.dataset} ({result.split}, {result.samples} samples)")
    for col in ("evaluator", "accuracy", "seconds"):
        table.add_column(col, justify="right" if col != "evaluator" else "left")
    table.add_row("projc (JAX)", f"{100 * result.accuracy_projc:.2f}%", f"{result.seconds_projc:.2f}")
    if result.accuracy_onnxruntime is not None:
        table.add_row("onnxruntime", f"{100 * result.accuracy_onnxruntime:.2f}%", f"{result.seconds_onnxruntime:.2f}")
    out.print(table)
    if result.max_abs_diff is not None:
        out.print(f"max |projc - onnxruntime| = {result.max_abs_diff:.3g}; "
                  f"predictions agree on {100 * result.prediction_agreement:.2f}%")


@app.command()
def ops(format: Format = FormatOpt) -> None:
    """List the ONNX ops projc can evaluate (and the opset versions of their rules)."""
    from projc.backends.jax.ops import registered

    rows = [
        {"domain": d or "ai.onnx", "op": op, "since": versions, "evaluates": True}
        for (d, op), versions in registered().items()
    ]
    if format == Format.json:
        _emit_json("ops", {"ops": rows})
        return
    table = Table(title=f"{len(rows)} ops evaluate")
    for col in ("domain", "op", "rule versions"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["domain"], r["op"], ", ".join(map(str, r["since"])))
    out.print(table)


@app.command()
def conformance(
    pattern: Optional[str] = typer.Option(None, "-k", help="Only tests whose name matches this regex."),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="Print every test that does not pass."),
    kind: str = typer.Option("node", "--kind", help="node, simple, pytorch-converted or pytorch-operator."),
) -> None:
    """Run ONNX's backend node tests through projc's evaluator and print the pass count."""
    from projc.backends.jax import conformance as conf

    argv = (["-k", pattern] if pattern else []) + (["-v"] if verbose else []) + ["--kind", kind]
    raise typer.Exit(conf.main(argv))


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except ProjcError as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}", markup=True, highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - the last line of defence against tracebacks
        if os.environ.get("PROJC_DEBUG"):
            raise
        err.print(f"[bold red]internal error:[/] {type(exc).__name__}: {escape(str(exc))}\n"
                  "(this is a bug in projc; rerun with PROJC_DEBUG=1 for the traceback)",
                  markup=True, highlight=False, soft_wrap=True)
        sys.exit(1)
