"""Forward rules: shape manipulation, constants and identity-like ops.

Shapes, axes, pads and repeats must be static (``ctx.static``); results that depend only on
static shapes (``Shape``, ``Size``, ``ConstantOfShape``...) are NumPy arrays so that the chains
of shape ops exporters emit stay concrete while the graph is traced.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import onnx_ir as ir

from projc.backends.jax.ops._registry import register

INT64 = np.int64


def _ints(ctx, x, what) -> list[int]:
    """A static 1-D integer input as a list of Python ints (``[]`` when absent)."""
    if x is None:
        return []
    return [int(v) for v in np.atleast_1d(ctx.static(x, what))]


def _norm_axes(axes, rank: int) -> list[int]:
    return [a + rank if a < 0 else a for a in axes]


# --- constants and identity ------------------------------------------------------------

_CONSTANT_ATTRS = {  # attribute -> the dtype ONNX gives it (a tensor carries its own)
    "value": None, "value_float": np.float32, "value_floats": np.float32,
    "value_int": INT64, "value_ints": INT64,
}


@register("Identity", since=1)
def _identity(ctx, x):
    return (x,)  # a tuple of one output, so that a sequence (a list) passes through whole


@register("Constant", since=1)
def _constant(ctx):
    for key, dtype in _CONSTANT_ATTRS.items():
        if key in ctx.attrs:
            return np.asarray(ctx.attrs[key], dtype=dtype)
    if "value_string" in ctx.attrs or "value_strings" in ctx.attrs:
        return np.asarray(ctx.attr("value_string", ctx.attr("value_strings")), dtype=object)
    # sparse_value never gets here: onnx-ir does not load sparse tensors yet.
    raise NotImplementedError(f"Constant with attributes {sorted(ctx.attrs)}")


@register("ConstantOfShape", since=9)
def _constant_of_shape(ctx, shape):
    value = ctx.attr("value")
    value = np.zeros(1, np.float32) if value is None else np.asarray(value)
    return np.full(_ints(ctx, shape, "the shape"), value.reshape(-1)[0], dtype=value.dtype)


@register("EyeLike", since=9)
def _eye_like(ctx, x):
    dtype = ctx.attr("dtype")
    dtype = x.dtype if dtype is None else ir.DataType(dtype).numpy()
    return jnp.eye(x.shape[0], x.shape[1], k=ctx.attr("k", 0), dtype=dtype)


# --- shape queries ---------------------------------------------------------------------


@register("Shape", since=1)
def _shape(ctx, x):
    shape = np.asarray(np.shape(x), dtype=INT64)
    rank = len(shape)
    start, end = ctx.attr("start", 0), ctx.attr("end", rank)
    clamp = lambda i: min(max(i + rank if i < 0 else i, 0), rank)  # noqa: E731
    return shape[clamp(start):clamp(end)]


@register("Size", since=1)
def _size(ctx, x):
    return np.asarray(np.size(x), dtype=INT64)


# --- reshaping ---------------------------------------------------------------------------


def _reshape_to(ctx, x, shape):
    allowzero = ctx.attr("allowzero", 0)
    if not allowzero:
        shape = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return jnp.reshape(x, shape)


@register("Reshape", since=1)
def _reshape_attr(ctx, x):
    return _reshape_to(ctx, x, list(ctx.attr("shape")))


@register("Reshape", since=5)
def _reshape(ctx, x, shape):
    return _reshape_to(ctx, x, _ints(ctx, shape, "the target shape"))


@register("Flatten", since=1)
def _flatten(ctx, x):
    axis = ctx.attr("axis", 1)
    axis = axis + x.ndim if axis < 0 else axis
    lead = int(np.prod(x.shape[:axis], dtype=INT64))
    rest = int(np.prod(x.shape[axis:], dtype=INT64))
    return jnp.reshape(x, (lead, rest))


@register("Transpose", since=1)
def _transpose(ctx, x):
    perm = ctx.attr("perm") or list(range(x.ndim))[::-1]
    return jnp.transpose(x, perm)


def _squeeze(x, axes):
    axes = _norm_axes(axes, x.ndim) if axes else [i for i, d in enumerate(x.shape) if d == 1]
    return jnp.squeeze(x, tuple(axes)) if axes else x


@register("Squeeze", since=1)
def _squeeze_attr(ctx, x):
    return _squeeze(x, ctx.attr("axes", []))


@register("Squeeze", since=13)
def _squeeze_input(ctx, x, axes=None):
    return _squeeze(x, _ints(ctx, axes, "the squeezed axes"))


def _unsqueeze(x, axes):
    rank = x.ndim + len(axes)
    return jnp.expand_dims(x, tuple(sorted(_norm_axes(axes, rank))))


@register("Unsqueeze", since=1)
def _unsqueeze_attr(ctx, x):
    return _unsqueeze(x, ctx.attr("axes"))


@register("Unsqueeze", since=13)
def _unsqueeze_input(ctx, x, axes):
    return _unsqueeze(x, _ints(ctx, axes, "the unsqueezed axes"))


@register("Expand", since=8)
def _expand(ctx, x, shape):
    target = np.broadcast_shapes(np.shape(x), tuple(_ints(ctx, shape, "the target shape")))
    return jnp.broadcast_to(x, target)


@register("Tile", since=6)
def _tile(ctx, x, repeats):
    return jnp.tile(x, _ints(ctx, repeats, "the repeats"))


# --- joining and splitting --------------------------------------------------------------


@register("Concat", since=1)
def _concat(ctx, *xs):
    xs = [x for x in xs if x is not None]
    return jnp.concatenate(xs, axis=ctx.attr("axis", 1 if ctx.opset < 4 else None))


def _split_sizes(ctx, dim: int, split: list[int]) -> list[int]:
    if split:
        return split
    n = ctx.attr("num_outputs") or ctx.num_outputs
    chunk = -(-dim // n)  # ceil: opset 18 lets the last chunk be smaller
    return [min(chunk, dim - i * chunk) for i in range(n)]


def _split(ctx, x, split):
    axis = ctx.attr("axis", 0)
    axis = axis + x.ndim if axis < 0 else axis
    sizes = _split_sizes(ctx, x.shape[axis], split)
    bounds = np.cumsum([0] + sizes)
    index = lambda a, b: (slice(None),) * axis + (slice(int(a), int(b)),)  # noqa: E731
    return tuple(x[index(a, b)] for a, b in zip(bounds[:-1], bounds[1:]))


@register("Split", since=1)
def _split_attr(ctx, x, split=None):
    return _split(ctx, x, _ints(ctx, split, "the split sizes") or list(ctx.attr("split", [])))


@register("Split", since=13)
def _split_input(ctx, x, split=None):
    return _split(ctx, x, _ints(ctx, split, "the split sizes"))


# --- slicing and padding -----------------------------------------------------------------


def _slice(x, starts, ends, axes, steps):
    axes = _norm_axes(axes or list(range(len(starts))), x.ndim)
    steps = steps or [1] * len(starts)
    index = [slice(None)] * x.ndim
    for a, s, e, st in zip(axes, starts, ends, steps):
        index[a] = slice(s, e, st)  # Python's clamping rules are ONNX's
    return x[tuple(index)]


@register("Slice", since=1)
def _slice_attr(ctx, x):
    return _slice(x, ctx.attr("starts"), ctx.attr("ends"), ctx.attr("axes"), None)


@register("Slice", since=10)
def _slice_input(ctx, x, starts, ends, axes=None, steps=None):
    ints = lambda v, what: _ints(ctx, v, what)  # noqa: E731
    return _slice(
        x, ints(starts, "starts"), ints(ends, "ends"), ints(axes, "axes"), ints(steps, "steps")
    )


_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "edge", "wrap": "wrap"}


def _pad(x, pads, mode, value, axes=None):
    axes = _norm_axes(axes or list(range(x.ndim)), x.ndim)
    n = len(axes)
    widths = [[0, 0] for _ in range(x.ndim)]
    for i, a in enumerate(axes):
        widths[a] = [pads[i], pads[i + n]]
    # Negative pads crop: slice them off first, then pad by the positive parts.
    crop = tuple(slice(max(-b, 0), d - max(-e, 0)) for (b, e), d in zip(widths, x.shape))
    x = x[crop]
    widths = [(max(b, 0), max(e, 0)) for b, e in widths]
    if mode == "constant":
        return jnp.pad(x, widths, mode="constant", constant_values=value)
    return jnp.pad(x, widths, mode=_PAD_MODES[mode])


@register("Pad", since=2)
def _pad_attr(ctx, x):
    value = ctx.attr("value", 0.0)
    return _pad(x, list(ctx.attr("pads")), ctx.attr("mode", "constant"), value)


@register("Pad", since=11)
def _pad_input(ctx, x, pads, constant_value=None, axes=None):
    value = jnp.zeros((), x.dtype) if constant_value is None else jnp.reshape(constant_value, ())
    pads = _ints(ctx, pads, "the pads")
    mode = ctx.attr("mode", "constant")
    return _pad(x, pads, mode, value.astype(x.dtype), _ints(ctx, axes, "the pad axes"))


# --- sequences of numbers ---------------------------------------------------------------


@register("Range", since=11)
def _range(ctx, start, limit, delta):
    s, l, d = (ctx.static(v, "Range's start, limit and delta").reshape(-1)[0]
               for v in (start, limit, delta))
    n = max(int(np.ceil((l - s) / d)), 0)
    return (s + np.arange(n, dtype=s.dtype) * d).astype(s.dtype)


@register("Trilu", since=14)
def _trilu(ctx, x, k=None):
    k = int(np.reshape(ctx.static(k, "Trilu's k"), -1)[0]) if k is not None else 0
    return jnp.triu(x, k) if ctx.attr("upper", 1) else jnp.tril(x, k)


# --- moving blocks between space and channels ----------------------------------------------

_DEPTH_TO_SPACE = {  # mode -> (split of C, permutation of the 6-D view)
    "DCR": (lambda b, c: (b, b, c), (0, 3, 4, 1, 5, 2)),
    "CRD": (lambda b, c: (c, b, b), (0, 1, 4, 2, 5, 3)),
}


@register("DepthToSpace", since=1)
def _depth_to_space(ctx, x):
    b = ctx.attr("blocksize")
    n, c, h, w = x.shape
    split, perm = _DEPTH_TO_SPACE[ctx.attr("mode", "DCR")]
    y = jnp.reshape(x, (n, *split(b, c // (b * b)), h, w))
    return jnp.reshape(jnp.transpose(y, perm), (n, c // (b * b), h * b, w * b))


_SPACE_TO_DEPTH = {"DCR": (0, 3, 5, 1, 2, 4), "CRD": (0, 1, 3, 5, 2, 4)}


@register("SpaceToDepth", since=1)
def _space_to_depth(ctx, x):
    b = ctx.attr("blocksize")
    n, c, h, w = x.shape
    y = jnp.reshape(x, (n, c, h // b, b, w // b, b))
    perm = _SPACE_TO_DEPTH[ctx.attr("mode", "DCR")]
    return jnp.reshape(jnp.transpose(y, perm), (n, c * b * b, h // b, w // b))


@register("CenterCropPad", since=18)
def _center_crop_pad(ctx, x, shape):
    target = _ints(ctx, shape, "the target shape")
    axes = _norm_axes(ctx.attr("axes") or list(range(x.ndim)), x.ndim)
    crop, widths = [slice(None)] * x.ndim, [(0, 0)] * x.ndim
    for a, t in zip(axes, target):
        d = x.shape[a]
        crop[a] = slice((d - t) // 2, (d - t) // 2 + t) if t < d else slice(None)
        widths[a] = ((t - d) // 2, t - d - (t - d) // 2) if t > d else (0, 0)
    return jnp.pad(x[tuple(crop)], widths)
