"""Render a schedule for people and tools: a text table, versioned JSON, and Graphviz DOT."""

from __future__ import annotations

from typing import Any

from projc.constraints import Program
from projc.passes.schedule_blocks import BYTES_PER_FLOAT, Schedule

SCHEMA = "projc.schedule"
SCHEMA_VERSION = 1

# Block colours for DOT (block A, block B, then more for cyclic schedules).
PALETTE = ["#8ecae6", "#ffb703", "#90be6d", "#f28482", "#cdb4db", "#bde0fe", "#e9c46a", "#b7e4c7"]


def _origin(prog: Program, node: str) -> list[str]:
    g = prog.groups.get(node)
    return list(g.origin) if g is not None else []


def schedule_dict(s: Schedule, model: str) -> dict[str, Any]:
    """The schedule as plain data (the JSON form, schema ``projc.schedule`` version 1)."""
    prog = s.program
    blocks = []
    for b in s.blocks:
        kernels = []
        for k in b.kernels:
            kernels.append({
                "kind": k.kind,
                "groups": k.groups,
                "constraints": k.constraints,
                "floats": k.floats,
                "bytes": k.floats * BYTES_PER_FLOAT,
                "origin": sorted({o for g in k.groups for o in _origin(prog, g)}),
            })
        blocks.append({"index": b.index, "constraints": b.constraints, "floats": b.floats, "kernels": kernels})
    groups = {
        name: {
            "kind": g.kind,
            "shape": list(g.shape),
            "block": s.colour[name],
            "out": g.out,
            "slots": [{"role": sl.role, "var": sl.var, "map": str(sl.imap), "shape": list(sl.shape),
                       "copy": sl.copy} for sl in g.slots],
            "origin": list(g.origin),
        }
        for name, g in prog.groups.items()
    }
    return {"schema": SCHEMA, "version": SCHEMA_VERSION, "model": model, "batch_size": prog.batch_size,
            "cost": s.summary(), "blocks": blocks, "groups": groups}


def schedule_dot(s: Schedule) -> str:
    """The constraint graph in Graphviz DOT, nodes coloured by block, edges labelled by copies."""
    prog = s.program
    lines = ["graph schedule {", "  graph [rankdir=LR, fontname=Helvetica];",
             "  node [style=filled, fontname=Helvetica, shape=box];"]
    for node, c in sorted(s.colour.items()):
        if node in prog.groups:
            g = prog.groups[node]
            label = f"{node}\\n{g.kind}[{','.join(map(str, g.shape))}]"
        else:
            label = node
        shape = "ellipse" if node not in prog.groups else "box"
        lines.append(f'  "{node}" [label="{label}", shape={shape}, fillcolor="{PALETTE[c % len(PALETTE)]}"];')
    for g in prog.groups.values():
        for sl in g.slots:
            if not sl.copy:
                continue
            v = prog.variables[sl.var]
            src = v.producer or f"{v.kind.value}:{v.name}"
            lines.append(f'  "{src}" -- "{g.name}" [label="{sl.var}"];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def human(n: float, unit: str = "") -> str:
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {suffix}{unit}"
    return f"{n:.3g} {unit}".rstrip()


def sharding_dict(s: Schedule, devices: int, model_parallel: int = 1, algorithm: str = "dr",
                  beta: float = 1.0) -> dict[str, Any]:
    """How each block's groups split over a ``devices`` mesh, and the bytes all-reduced per
    iteration (the consensus means; see :mod:`projc.backends.jax.sharding`). Loads JAX."""
    from projc.backends.jax.sharding import MeshShape, communication

    mesh = MeshShape(devices, model_parallel).check(s.program.batch_size)
    comm = communication(s, mesh, algorithm, beta)
    sp = comm.pop("plan")
    blocks = []
    for b, cb in zip(s.blocks, comm["blocks"]):
        groups = [{"group": g, "shape": list(s.program.groups[g].shape), "split": list(sp.groups[g]),
                   "per_device": _per_device(s.program.groups[g].shape, sp.groups[g], mesh)}
                  for k in b.kernels for g in k.groups if g in s.program.groups]
        blocks.append({**cb, "groups": groups})
    return {**comm, "blocks": blocks}


def _per_device(shape, spec, mesh) -> list[int]:
    return [n // mesh.size(a) for n, a in zip(shape, spec)]
