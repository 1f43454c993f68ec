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
from projc.fileio import write_atomic

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
BatchOpt = typer.Option(None, "--batch-size", "-b", help="Size of a dynamic batch dimension [default: 256].")
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


class InspectFormat(str, Enum):
    text = "text"
    json = "json"
    dot = "dot"


TWO_SET_ALGORITHMS = ("dr", "ap", "dm", "ar")
ALGORITHMS = TWO_SET_ALGORITHMS + ("cp", "cdr")


def _emit_dot(text: str, output: Optional[Path]) -> None:
    if output is None:
        sys.stdout.write(text)
        return
    if output.suffix == ".svg":
        import shutil
        import subprocess

        if shutil.which("dot") is None:
            raise ProjcError(f"{output}: rendering SVG needs Graphviz's `dot` on PATH; write a .dot file instead")
        svg = subprocess.run(["dot", "-Tsvg"], input=text, capture_output=True, text=True, check=True).stdout
        write_atomic(output, svg)
    else:
        write_atomic(output, text)
    err.print(f"wrote {output}")


def _print_summary(summary: dict, title: str) -> None:
    table = Table(title=title, show_header=True)
    for col in ("kind", "name", "type"):
        table.add_column(col)
    for kind in ("inputs", "outputs", "parameters"):
        for name, typ in summary[kind].items():
            table.add_row(kind[:-1], name, typ)
    out.print(table)
    out.print(f"{summary['parameter_count']:,} trainable parameters, {summary['constants']} constants; "
              "ops: " + ", ".join(f"{k} x{v}" for k, v in summary["ops"].items()), highlight=False)


def _print_schedule(sched) -> None:
    from projc.schedule_report import human, schedule_dict

    data = schedule_dict(sched, "")
    table = Table(title=f"schedule: {len(data['blocks'])} blocks", show_header=True)
    for col, just in (("block", "right"), ("kind", "left"), ("groups", "left"), ("constraints", "right"),
                      ("copies", "right"), ("from ONNX nodes", "left")):
        table.add_column(col, justify=just)
    for b in data["blocks"]:
        for k in b["kernels"]:
            groups = ", ".join(k["groups"][:4]) + (f" +{len(k['groups']) - 4}" if len(k["groups"]) > 4 else "")
            origin = ", ".join(k["origin"][:3]) + (" ..." if len(k["origin"]) > 3 else "")
            table.add_row("AB"[b["index"]] if len(data["blocks"]) == 2 else str(b["index"]), k["kind"], groups,
                          f"{k['constraints']:,}", f"{k['floats']:,}", origin)
    out.print(table)
    c = data["cost"]
    out.print(
        f"state {c['state_floats']:,} floats ({human(c['state_bytes'], 'B')}); per iteration "
        f"{human(c['flops_per_iteration'], 'FLOP')}, {human(c['bytes_per_iteration'], 'B')} moved; "
        f"{c['scalar_constraints']:,} scalar constraints, parallel width {c['parallel_width']:,}",
        highlight=False,
    )
    for slot in c["factored"]:
        form = " (Gram form)" if slot["form"] == "gram" else ""
        out.print(f"{slot['key']}'s {slot['copies']:,} copies of {slot['var']} are held factored, "
                  f"{human(slot['floats'] * 4, 'B')}{form}", highlight=False)
    if c["factored"]:
        out.print(f"so the step holds {c['held_state_floats']:,} floats ({human(c['held_state_bytes'], 'B')}) in all "
                  f"and moves {human(c['held_bytes_per_iteration'], 'B')} per iteration", highlight=False)


def build_schedule(m, loss: str, algorithm: str, logits: Optional[str]):
    """Lower, bipartize, and schedule into two sets or (cyclic algorithms) breadth-first layers."""
    from projc.passes.bipartize import bipartize
    from projc.passes.lower_to_constraints import lower
    from projc.passes.schedule_blocks import schedule

    if algorithm not in ALGORITHMS:
        raise ProjcError(f"--algorithm {algorithm!r}: expected one of {', '.join(ALGORITHMS)}")
    prog = lower(m, loss=loss, logits=logits)
    bipartize(prog)
    return schedule(prog, "two-sets" if algorithm in TWO_SET_ALGORITHMS else "layers")


@app.command()
def inspect(
    model: Path = ModelArg,
    ir: bool = typer.Option(False, "--ir", help="Print the network IR after the import pipeline."),
    constraints: bool = typer.Option(False, "--constraints", help="Print the constraint IR after lowering."),
    pipeline: Optional[str] = typer.Option(None, "--pipeline", "-p", help="Passes to run at import (comma-separated)."),
    batch_size: Optional[int] = BatchOpt,
    dim: Optional[list[str]] = DimOpt,
    loss: str = typer.Option("cross-entropy", "--loss", help="cross-entropy, margin or mse."),
    algorithm: str = typer.Option("dr", "--algorithm", help="dr, ap, dm, ar (two sets) or cp, cdr (cyclic)."),
    logits: Optional[str] = typer.Option(None, "--logits", help="The value the loss acts on (default: the output, head stripped)."),
    format: InspectFormat = typer.Option(InspectFormat.text, "--format", "-f", help="text, json or dot."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write json/dot here (.svg renders with Graphviz)."),
    devices: int = typer.Option(1, "--devices", help="Show how the groups split over N devices and the communication per iteration."),
    model_parallel: int = typer.Option(1, "--model-parallel", help="Of those devices, how many split the neurons of large layers."),
) -> None:
    """Show what projc makes of a model (or of a compiled artifact, with the settings it was
    compiled with): the constraint schedule (blocks, kernels, costs), its IRs."""
    from projc.artifact import is_artifact, read_manifest
    from projc.constraints import format_program
    from projc.frontend import IMPORT_PIPELINE, load_model
    from projc.ir import format_model, model_summary
    from projc.schedule_report import schedule_dict, schedule_dot

    manifest, source = None, model
    dims = _parse_dims(dim)
    if is_artifact(model):
        manifest = read_manifest(model)
        config = manifest["config"]
        source = model / "model.onnx"
        batch_size, dims = config["batch_size"], config.get("dims") or {}
        loss, algorithm, logits = config["loss"], config["algorithm"], config.get("logits")
    m = load_model(source, batch_size=batch_size or 256, dims=dims, pipeline=pipeline or IMPORT_PIPELINE)
    if ir:
        text = format_model(m)
        if format == InspectFormat.json:
            _emit_json("ir", {"model": str(model), "ir": text})
        else:
            sys.stdout.write(text)
        return
    summary = {"model": str(model), **model_summary(m)}
    try:
        sched = build_schedule(m, loss, algorithm, logits)
    except ProjcError as exc:
        if constraints or format != InspectFormat.text:
            raise
        _print_summary(summary, str(model))
        out.print(f"[yellow]not trainable yet:[/] {escape(str(exc))}")
        return
    if constraints:
        sys.stdout.write(format_program(sched.program))
        return
    shards = None
    if devices > 1 or model_parallel > 1:
        from projc.schedule_report import sharding_dict

        shards = sharding_dict(sched, devices, model_parallel, algorithm)
    if format == InspectFormat.json:
        extra = {"sharding": shards} if shards else {}
        if manifest:
            extra["artifact"] = manifest
        text = json.dumps({**schedule_dict(sched, str(model)), "network": summary, **extra}, indent=1)
        if output:
            _emit_dot(text + "\n", output)
        else:
            out.print_json(text)
        return
    if format == InspectFormat.dot:
        _emit_dot(schedule_dot(sched), output)
        return
    _print_summary(summary, str(model))
    if manifest:
        c = manifest["config"]
        out.print(f"artifact: {c['algorithm']} x{c['iterations']} per minibatch, batch {c['batch_size']}, loss {c['loss']}"
                  f" (lambda {c['lam']}, loss lambda {c['loss_lambda']}{', PJAX-compatible' if c['pjax_compat'] else ''}); "
                  f"source {manifest['source']['path']} sha256 {manifest['source']['sha256'][:12]}; "
                  f"platforms {', '.join(manifest['platforms'])}", highlight=False)
    _print_schedule(sched)
    if shards:
        _print_sharding(shards)


def _print_sharding(shards: dict) -> None:
    from projc.schedule_report import human

    mesh = shards["mesh"]
    table = Table(title=f"sharding over {mesh['devices']} devices (batch {mesh['batch']} x model {mesh['model']})")
    for col, just in (("block", "right"), ("group", "left"), ("shape", "left"), ("split", "left"),
                      ("per device", "left"), ("all-reduce / projection", "right")):
        table.add_column(col, justify=just)
    for b in shards["blocks"]:
        for i, g in enumerate(b["groups"]):
            split = ",".join(a or "-" for a in g["split"])
            label = "AB"[b["index"]] if len(shards["blocks"]) == 2 else str(b["index"])
            table.add_row(label if i == 0 else "", g["group"], "x".join(map(str, g["shape"])), split,
                          "x".join(map(str, g["per_device"])), human(b["allreduce_bytes"], "B") if i == 0 else "")
    out.print(table)
    out.print(f"communication per iteration: {human(shards['allreduce_bytes_per_iteration'], 'B')} all-reduced "
              f"(consensus means); parameter read-out {human(shards['allreduce_bytes_readout'], 'B')} per minibatch",
              highlight=False)


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
    """List the ONNX ops projc evaluates (with its rules' opset versions) and those it can lower
    to constraints for training."""
    from projc.backends.jax.ops import registered
    from projc.passes.lower_to_constraints import RULES as LOWERING

    evaluates = registered()
    names = sorted(set(evaluates) | {("", op) for op in LOWERING})
    rows = [
        {"domain": d or "ai.onnx", "op": op, "since": evaluates.get((d, op), []),
         "evaluates": (d, op) in evaluates, "lowers": d == "" and op in LOWERING}
        for d, op in names
    ]
    if format == Format.json:
        _emit_json("ops", {"ops": rows})
        return
    table = Table(title=f"{sum(r['evaluates'] for r in rows)} ops evaluate, {sum(r['lowers'] for r in rows)} lower to constraints")
    for col in ("domain", "op", "rule versions", "trains"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["domain"], r["op"], ", ".join(map(str, r["since"])), "yes" if r["lowers"] else "")
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


from projc import cli_train  # noqa: E402,F401 - registers `compile` and `train` on the app
