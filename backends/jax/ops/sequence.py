"""Forward rules: tensor sequences (Python lists of arrays) and optionals (``None`` or a value).

Rules that produce a sequence return it inside a one-element tuple: the evaluator reads a bare
list as several outputs. Positions must be static, since they choose list elements.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from projc.backends.jax.ops._registry import register

INT64 = np.int64


def _position(ctx, position, default: int) -> int:
    if position is None:
        return default
    return int(np.reshape(ctx.static(position, "the sequence position"), -1)[0])


@register("SequenceEmpty", since=11)
def _sequence_empty(ctx):
    return ([],)


@register("SequenceConstruct", since=11)
def _sequence_construct(ctx, *xs):
    return (list(xs),)


@register("SequenceInsert", since=11)
def _sequence_insert(ctx, seq, x, position=None):
    p = _position(ctx, position, len(seq))
    p = p + len(seq) if p < 0 else p
    return (seq[:p] + [x] + seq[p:],)


@register("SequenceErase", since=11)
def _sequence_erase(ctx, seq, position=None):
    p = _position(ctx, position, -1)
    p = p + len(seq) if p < 0 else p
    return (seq[:p] + seq[p + 1:],)


@register("SequenceAt", since=11)
def _sequence_at(ctx, seq, position):
    return seq[_position(ctx, position, 0)]


@register("SequenceLength", since=11)
def _sequence_length(ctx, seq):
    return np.asarray(len(seq), dtype=INT64)


@register("ConcatFromSequence", since=11)
def _concat_from_sequence(ctx, seq):
    axis = ctx.attr("axis")
    join = jnp.stack if ctx.attr("new_axis", 0) else jnp.concatenate
    return join(seq, axis=axis)


def _split_sizes(ctx, dim: int, split) -> list[int]:
    if split is None:
        return [1] * dim
    split = ctx.static(split, "the split sizes")
    if split.ndim == 0:
        size = int(split)
        return [min(size, dim - i) for i in range(0, dim, size)]
    return [int(s) for s in split]


@register("SplitToSequence", since=11)
def _split_to_sequence(ctx, x, split=None):
    axis = ctx.attr("axis", 0)
    axis = axis + x.ndim if axis < 0 else axis
    bounds = np.cumsum([0] + _split_sizes(ctx, x.shape[axis], split))
    parts = [jnp.take(x, jnp.arange(a, b), axis=axis) for a, b in zip(bounds[:-1], bounds[1:])]
    if split is None and not ctx.attr("keepdims", 1):
        parts = [jnp.squeeze(p, axis) for p in parts]
    return (parts,)


@register("SequenceMap", since=17)
def _sequence_map(ctx, seq, *extra):
    body = ctx.attr("body")
    args = [seq, *extra]
    pick = lambda a, i: a[i] if isinstance(a, list) else a  # noqa: E731
    results = [ctx.run_graph(body, [pick(a, i) for a in args]) for i in range(len(seq))]
    return tuple([r[k] for r in results] for k in range(len(body.outputs)))


# --- optionals ---------------------------------------------------------------------------


@register("Optional", since=15)
def _optional(ctx, x=None):
    return (x,)


@register("OptionalHasElement", since=15)
def _optional_has_element(ctx, x=None):
    return np.asarray(x is not None)


@register("OptionalGetElement", since=15)
def _optional_get_element(ctx, x):
    return (x,)
