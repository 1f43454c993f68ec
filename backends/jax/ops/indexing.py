"""Forward rules: gathers, scatters, selection (TopK, NonZero, Unique, Compress) and one-hot.

Indices may be traced (they are ordinary gathers and scatters in XLA); ops whose output shape
depends on the data (NonZero, Unique, Compress) need their deciding input to be static.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from projc.backends.jax.ops._registry import register

INT64 = np.int64


def _axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _wrap(idx, dim):
    """ONNX indices may be negative: count those from the end."""
    idx = jnp.asarray(idx)
    return jnp.where(idx < 0, idx + dim, idx)


# --- gathers -----------------------------------------------------------------------------


def _is_text(x) -> bool:
    """A static string tensor (JAX cannot hold these; they are handled with NumPy)."""
    return isinstance(x, np.ndarray) and x.dtype.kind in "OSU"


@register("Gather", since=1)
def _gather(ctx, x, indices):
    axis = _axis(ctx.attr("axis", 0), x.ndim)
    if _is_text(x):
        idx = ctx.static(indices, "the indices into a string tensor")
        return np.take(x, np.where(idx < 0, idx + x.shape[axis], idx), axis=axis)
    return jnp.take(x, _wrap(indices, x.shape[axis]), axis=axis)


@register("GatherElements", since=11)
def _gather_elements(ctx, x, indices):
    return jnp.asarray(x)[_element_index(ctx, x, indices)]


def _element_index(ctx, x, indices):
    """Full index of GatherElements/ScatterElements: ``indices`` on the axis, iota elsewhere
    (indices may be smaller than the data on the other axes)."""
    axis = _axis(ctx.attr("axis", 0), x.ndim)
    grid = list(jnp.indices(np.shape(indices), sparse=True))
    grid[axis] = _wrap(indices, x.shape[axis])
    return tuple(grid)


def _gather_nd_one(data, indices):
    k = indices.shape[-1]
    cols = tuple(_wrap(indices[..., i], data.shape[i]) for i in range(k))
    return data[cols]


@register("GatherND", since=11)
def _gather_nd(ctx, x, indices):
    b = ctx.attr("batch_dims", 0)
    batch = x.shape[:b]
    n = int(np.prod(batch, dtype=INT64))
    data = jnp.reshape(x, (n,) + x.shape[b:])
    idx = jnp.reshape(jnp.asarray(indices), (n,) + tuple(indices.shape[b:]))
    out = jax.vmap(_gather_nd_one)(data, idx)
    return jnp.reshape(out, tuple(batch) + out.shape[1:])


# --- scatters ----------------------------------------------------------------------------

_SCATTER = {
    "none": lambda ref, u: ref.set(u),
    "add": lambda ref, u: ref.add(u),
    "mul": lambda ref, u: ref.multiply(u),
    "max": lambda ref, u: ref.max(u),
    "min": lambda ref, u: ref.min(u),
}


def _scatter_elements(ctx, x, indices, updates):
    ref = jnp.asarray(x).at[_element_index(ctx, x, indices)]
    return _SCATTER[ctx.attr("reduction", "none")](ref, updates)


register("Scatter", since=9)(_scatter_elements)
register("ScatterElements", since=11)(_scatter_elements)


@register("ScatterND", since=11)
def _scatter_nd(ctx, x, indices, updates):
    indices = jnp.asarray(indices)
    cols = tuple(_wrap(indices[..., i], x.shape[i]) for i in range(indices.shape[-1]))
    return _SCATTER[ctx.attr("reduction", "none")](jnp.asarray(x).at[cols], updates)


@register("TensorScatter", since=24)
def _tensor_scatter(ctx, cache, update, write_indices=None):
    axis = _axis(ctx.attr("axis", -2), cache.ndim)
    batch, max_seq, seq = cache.shape[0], cache.shape[axis], update.shape[axis]
    start = jnp.zeros((batch,), INT64) if write_indices is None else jnp.asarray(write_indices)
    pos = start[:, None] + jnp.arange(seq)
    if ctx.attr("mode", "linear") == "circular":
        pos = pos % max_seq
    c = jnp.moveaxis(jnp.asarray(cache), axis, 1)
    u = jnp.moveaxis(jnp.asarray(update), axis, 1)
    c = c.at[jnp.arange(batch)[:, None], pos].set(u)
    return jnp.moveaxis(c, 1, axis)


# --- selection ---------------------------------------------------------------------------


def _top_k(ctx, x, k):
    axis = _axis(ctx.attr("axis", -1), x.ndim)
    largest = bool(ctx.attr("largest", 1))
    # A stable sort keeps the lower index first among equal values, as ONNX asks.
    order = jnp.argsort(x, axis=axis, stable=True, descending=largest)
    idx = jax.lax.slice_in_dim(order, 0, k, axis=axis)
    return jnp.take_along_axis(x, idx, axis=axis), idx.astype(INT64)


@register("TopK", since=1)
def _top_k_attr(ctx, x):
    return _top_k(ctx, x, ctx.attr("k"))


@register("TopK", since=10)
def _top_k_input(ctx, x, k):
    return _top_k(ctx, x, int(np.reshape(ctx.static(k, "k"), -1)[0]))


@register("NonZero", since=9)
def _non_zero(ctx, x):
    x = ctx.static(x, "NonZero's input (its output shape depends on it)")
    return np.stack(np.nonzero(x)).astype(INT64).reshape(x.ndim, -1)


@register("Compress", since=9)
def _compress(ctx, x, condition):
    keep = np.nonzero(ctx.static(condition, "Compress's condition"))[0]
    axis = ctx.attr("axis")
    if axis is None:
        return jnp.take(jnp.ravel(x), keep)
    return jnp.take(x, keep, axis=_axis(axis, x.ndim))


def _first_occurrence_order(first_index):
    """Permutation putting np.unique's sorted results in order of first appearance."""
    order = np.argsort(first_index, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return order, rank


@register("Unique", since=11)
def _unique(ctx, x):
    x = ctx.static(x, "Unique's input (its output shape depends on it)")
    axis = ctx.attr("axis")
    data = x.reshape(-1) if axis is None else x
    y, first, inverse, counts = np.unique(
        data, return_index=True, return_inverse=True, return_counts=True, axis=axis
    )
    inverse = inverse.reshape(-1)
    if not ctx.attr("sorted", 1):
        order, rank = _first_occurrence_order(first)
        y = np.take(y, order, axis=0 if axis is None else axis)
        first, counts, inverse = first[order], counts[order], rank[inverse]
    return y, first.astype(INT64), inverse.astype(INT64), counts.astype(INT64)


@register("OneHot", since=9)
def _one_hot(ctx, indices, depth, values):
    depth = int(np.reshape(ctx.static(depth, "OneHot's depth"), -1)[0])
    idx = _wrap(jnp.asarray(indices).astype(INT64), depth)
    hot = idx[..., None] == jnp.arange(depth)
    hot = jnp.moveaxis(hot, -1, _axis(ctx.attr("axis", -1), hot.ndim))
    values = jnp.asarray(values)
    return jnp.where(hot, values[1], values[0])


@register("ReverseSequence", since=10)
def _reverse_sequence(ctx, x, sequence_lens):
    t_axis, b_axis = ctx.attr("time_axis", 0), ctx.attr("batch_axis", 1)
    t = jnp.arange(x.shape[t_axis])[:, None]
    lens = jnp.asarray(sequence_lens).astype(INT64)[None, :]
    src = jnp.where(t < lens, lens - 1 - t, t)  # (time, batch)
    shape = [1] * x.ndim
    shape[t_axis], shape[b_axis] = x.shape[t_axis], x.shape[b_axis]
    src = src if t_axis < b_axis else src.T
    src = jnp.broadcast_to(jnp.reshape(src, shape), x.shape)
    return jnp.take_along_axis(x, src, axis=t_axis)
