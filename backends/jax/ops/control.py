"""Forward rules: control flow (If, Loop, Scan) over subgraphs.

A condition or trip count known at compile time is resolved in Python (one branch evaluated,
the loop unrolled), which keeps values computed from static data static and lets loop-carried
sequences grow; a traced condition becomes ``lax.cond``; Scan is a ``lax.scan``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.core import Tracer

from projc.backends.jax.ops._registry import register
from projc.errors import ShapeError

INT64 = np.int64
# Loops longer than this are not unrolled (the XLA program would grow with every iteration).
MAX_UNROLL = 256
# A loop with no trip count and a static condition stops being unrolled after this many.
MAX_ITERATIONS = 10_000


def _is_static(x) -> bool:
    return not isinstance(x, Tracer)


@register("If", since=1)
def _if(ctx, cond):
    then_g, else_g = ctx.attr("then_branch"), ctx.attr("else_branch")
    if _is_static(cond):
        return tuple(ctx.run_graph(then_g if bool(np.asarray(cond)) else else_g, []))
    branch = lambda g: (lambda: tuple(ctx.run_graph(g, [])))  # noqa: E731
    return jax.lax.cond(jnp.reshape(cond, ()), branch(then_g), branch(else_g))


# --- Loop --------------------------------------------------------------------------------
# Unrolled in Python by default: loop-carried sequences may grow and static values stay
# static. Once the condition turns traced the unrolled loop continues masked (updates after
# it turns false are dropped). A long loop with a static count becomes one lax.scan.


def _loop_error(ctx, why: str) -> ShapeError:
    return ShapeError(f"node {ctx.node.name!r} (Loop): {why}")


def _empty_scans(ctx, n_scan):
    first = len(ctx.node.outputs) - n_scan
    return [jnp.zeros((0,), ctx.output_dtype(first + i) or np.float32) for i in range(n_scan)]


def _stack(ctx, scans, n_scan):
    """Scan outputs of a loop: each iteration's value stacked on a new first axis."""
    return [jnp.stack(list(col)) for col in zip(*scans)] if scans else _empty_scans(ctx, n_scan)


def _masked(active, new, old):
    return [jnp.where(active, a, jnp.asarray(b)) for a, b in zip(new, old)]


def _loop_unrolled(ctx, body, limit, cond, carried, n_scan):
    carried, scans, active = list(carried), [], None  # active: the traced "still running"
    for i in range(MAX_ITERATIONS if limit is None else limit):
        if active is None and _is_static(cond) and not bool(np.asarray(cond)):
            break
        if active is None and not _is_static(cond):
            if limit is None or n_scan:
                raise _loop_error(ctx, "a condition that depends on run-time data needs a "
                                  "static trip count and no scan outputs")
            active = cond
        outs = ctx.run_graph(body, [np.asarray(i, INT64), cond, *carried])
        new, scan = outs[1:1 + len(carried)], outs[1 + len(carried):]
        if active is not None:
            new, active = _masked(active, new, carried), active & outs[0]
        cond, carried = outs[0] if active is None else active, list(new)
        scans.append(scan)
    else:
        if limit is None:
            raise _loop_error(ctx, f"more than {MAX_ITERATIONS} iterations without a trip count")
    return tuple(carried) + tuple(_stack(ctx, scans, n_scan))


def _cond_stays_true(body) -> bool:
    """Whether the body hands its condition input straight back (a counted for-loop)."""
    out, cond_in = body.outputs[0], body.inputs[1]
    node = out.producer()
    return out is cond_in or (node is not None and node.op_type == "Identity"
                              and node.inputs[0] is cond_in)


def _loop_scan(ctx, body, limit, carried, n_scan):
    if n_scan and not _cond_stays_true(body):
        raise _loop_error(ctx, f"more than {MAX_UNROLL} iterations with scan outputs and a "
                          "condition that may end the loop early")
    n = len(carried)

    def step(state, i):
        active, vals = state
        outs = ctx.run_graph(body, [i, active, *vals])
        new = _like(_masked(active, outs[1:1 + n], vals), vals)
        return (active & jnp.reshape(outs[0], ()), new), tuple(outs[1 + n:])

    init = (jnp.asarray(True), tuple(jnp.asarray(c) for c in carried))
    (_, final), ys = jax.lax.scan(step, init, jnp.arange(limit, dtype=INT64))
    return tuple(final) + tuple(ys)


@register("Loop", since=1)
def _loop(ctx, m, cond, *carried):
    body = ctx.attr("body")
    n_scan = len(body.outputs) - 1 - len(carried)
    limit = None if m is None else int(np.reshape(ctx.static(m, "Loop's trip count"), -1)[0])
    cond = np.asarray(True) if cond is None else cond
    long = limit is not None and limit > MAX_UNROLL
    if long and _is_static(cond) and not any(isinstance(c, list) for c in carried):
        if not bool(np.asarray(cond)):
            return tuple(carried) + tuple(_empty_scans(ctx, n_scan))
        return _loop_scan(ctx, body, limit, carried, n_scan)
    return _loop_unrolled(ctx, body, limit, cond, carried, n_scan)


# --- Scan --------------------------------------------------------------------------------


def _like(values, carry):
    """Body results cast to the carry's dtypes (lax.scan needs identical carry types)."""
    return tuple(jnp.asarray(v).astype(c.dtype) for v, c in zip(values, carry))


def _scan_core(ctx, states, xs):
    """Run the Scan body over the leading axis of each ``xs`` (already oriented)."""
    body = ctx.attr("body")
    n_state = len(states)

    def step(carry, x):
        outs = ctx.run_graph(body, [*carry, *x])
        return _like(outs[:n_state], carry), tuple(outs[n_state:])

    final, ys = jax.lax.scan(step, tuple(jnp.asarray(s) for s in states), tuple(xs))
    return list(final), list(ys)


def _axes(ctx, name, n, rank_of):
    axes = list(ctx.attr(name) or [0] * n)
    return [a + rank_of(i) if a < 0 else a for i, a in enumerate(axes)]


@register("Scan", since=9)
def _scan(ctx, *inputs):
    n_in = ctx.attr("num_scan_inputs")
    states, scans = inputs[:len(inputs) - n_in], inputs[len(inputs) - n_in:]
    in_axes = _axes(ctx, "scan_input_axes", n_in, lambda i: np.ndim(scans[i]))
    in_dirs = ctx.attr("scan_input_directions") or [0] * n_in
    xs = [jnp.moveaxis(jnp.asarray(x), a, 0) for x, a in zip(scans, in_axes)]
    xs = [x[::-1] if d else x for x, d in zip(xs, in_dirs)]
    final, ys = _scan_core(ctx, states, xs)
    n_out = len(ys)
    out_dirs = ctx.attr("scan_output_directions") or [0] * n_out
    out_axes = _axes(ctx, "scan_output_axes", n_out, lambda i: ys[i].ndim)
    ys = [y[::-1] if d else y for y, d in zip(ys, out_dirs)]
    ys = [jnp.moveaxis(y, 0, a) for y, a in zip(ys, out_axes)]
    return tuple(final) + tuple(ys)


@register("Scan", since=8)
def _scan_batched(ctx, sequence_lens, *inputs):
    """Opset 8: every input has a leading batch axis; scanning runs along axis 1."""
    if sequence_lens is not None:
        raise NotImplementedError("Scan-8 with sequence_lens")
    n_in = ctx.attr("num_scan_inputs")
    n_state = len(inputs) - n_in
    dirs = ctx.attr("directions") or [0] * n_in

    def one(*item):
        xs = [x[::-1] if d else x for x, d in zip(item[n_state:], dirs)]
        final, ys = _scan_core(ctx, item[:n_state], xs)
        return tuple(final) + tuple(ys)

    return jax.vmap(one)(*[jnp.asarray(x) for x in inputs])
