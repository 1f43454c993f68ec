"""Forward rules: reductions, arg-reductions, softmax-like ops and cumulative ops."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from projc.backends.jax.ops._registry import register


def _lowest(dtype):
    """The identity of ``max`` for ``dtype`` (what a reduction over nothing gives)."""
    if dtype == np.bool_:
        return False
    if jnp.issubdtype(dtype, jnp.integer):
        return int(jnp.iinfo(dtype).min)
    return -np.inf


def _highest(dtype):
    if dtype == np.bool_:
        return True
    if jnp.issubdtype(dtype, jnp.integer):
        return int(jnp.iinfo(dtype).max)
    return np.inf


def _logsumexp(x, axis, keepdims):
    m = jnp.max(x, axis=axis, keepdims=True, initial=-np.inf)
    m = jax.lax.stop_gradient(jnp.where(jnp.isfinite(m), m, 0))
    s = jnp.sum(jnp.exp(shifted_by_max(x, axis, m)), axis=axis, keepdims=True)
    y = jnp.log(s) + m
    return y if keepdims else jnp.squeeze(y, axis)


# op -> fn(x, axis, keepdims); an empty reduction gives the op's identity
_REDUCERS = {
    "ReduceSum": lambda x, a, k: jnp.sum(x, axis=a, keepdims=k),
    "ReduceMean": lambda x, a, k: jnp.mean(x, axis=a, keepdims=k),
    "ReduceMax": lambda x, a, k: jnp.max(x, axis=a, keepdims=k, initial=_lowest(x.dtype)),
    "ReduceMin": lambda x, a, k: jnp.min(x, axis=a, keepdims=k, initial=_highest(x.dtype)),
    "ReduceProd": lambda x, a, k: jnp.prod(x, axis=a, keepdims=k),
    "ReduceL1": lambda x, a, k: jnp.sum(jnp.abs(x), axis=a, keepdims=k),
    "ReduceL2": lambda x, a, k: jnp.sqrt(jnp.sum(x * x, axis=a, keepdims=k)),
    "ReduceLogSum": lambda x, a, k: jnp.log(jnp.sum(x, axis=a, keepdims=k)),
    "ReduceLogSumExp": _logsumexp,
    "ReduceSumSquare": lambda x, a, k: jnp.sum(x * x, axis=a, keepdims=k),
}

# the opset where the axes attribute became an input
_AXES_INPUT_SINCE = {op: 18 for op in _REDUCERS} | {"ReduceSum": 13}


def _reduce(ctx, fn, x, axes):
    """Apply ``fn`` over ``axes`` (``None``/empty: all axes, or none if noop_with_empty_axes)."""
    keepdims = bool(ctx.attr("keepdims", 1))
    axes = [] if axes is None else [int(a) for a in np.ravel(axes)]
    if not axes:
        if ctx.attr("noop_with_empty_axes", 0):
            return jnp.asarray(x)
        axes = list(range(np.ndim(x)))
    axes = tuple(sorted(a % max(np.ndim(x), 1) for a in axes))
    return jnp.asarray(fn(jnp.asarray(x), axes, keepdims)).astype(x.dtype)


def _attr_axes_rule(fn):
    return lambda ctx, x: _reduce(ctx, fn, x, ctx.attr("axes", None))


def _input_axes_rule(fn):
    def rule(ctx, x, axes=None):
        axes = None if axes is None else ctx.static(axes, "the reduction axes")
        return _reduce(ctx, fn, x, axes)

    return rule


for _op, _fn in _REDUCERS.items():
    register(_op, since=1)(_attr_axes_rule(_fn))
    register(_op, since=_AXES_INPUT_SINCE[_op])(_input_axes_rule(_fn))


# --- ArgMax / ArgMin ---------------------------------------------------------------------


def _arg(fn):
    def rule(ctx, x):
        axis = ctx.attr("axis", 0) % x.ndim
        if ctx.attr("select_last_index", 0):  # search the reversed axis, map back
            idx = x.shape[axis] - 1 - fn(jnp.flip(x, axis), axis=axis, keepdims=True)
        else:
            idx = fn(x, axis=axis, keepdims=True)
        idx = idx.astype(jnp.int64)
        return idx if ctx.attr("keepdims", 1) else jnp.squeeze(idx, axis)

    return rule


register("ArgMax", since=1)(_arg(jnp.argmax))
register("ArgMin", since=1)(_arg(jnp.argmin))


# --- Softmax family ----------------------------------------------------------------------


def _hardmax(x, axis):
    idx = jnp.argmax(x, axis=axis)
    return jax.nn.one_hot(idx, x.shape[axis], axis=axis, dtype=x.dtype)


def shifted_by_max(x, axis, top=None):
    """``x - top`` (``top``: the max of ``x`` along ``axis`` by default), every difference
    within rounding of ``top`` (4 ulp) set to 0.

    XLA may evaluate the producer of ``x`` once for the max and again for the subtraction with
    different rounding (likely an FMA contracted in one fusion and not the other). At |x| ~ 1e19 one
    ulp is ~1e12: every difference can land far below 0 (exp = 0 everywhere, a 0/0 softmax) or
    above it (exp = inf). Both were seen on CPU, in some compiles of a network and not others;
    a barrier does not help, XLA's CPU pipeline expands it before fusion."""
    if top is None:
        top = jax.lax.stop_gradient(jnp.max(x, axis=axis, keepdims=True))
    d = x - top
    if not jnp.issubdtype(d.dtype, jnp.floating):
        return d
    tol = 4 * jnp.finfo(d.dtype).eps * jnp.abs(top)
    return jnp.where(d > -tol, jnp.zeros((), d.dtype), d)


def _softmax(x, axis):
    e = jnp.exp(shifted_by_max(x, axis))
    return e / jnp.sum(e, axis=axis, keepdims=True)


def _log_softmax(x, axis):
    z = shifted_by_max(x, axis)
    return z - jnp.log(jnp.sum(jnp.exp(z), axis=axis, keepdims=True))


_SOFTMAX_LIKE = {
    "Softmax": _softmax,
    "LogSoftmax": _log_softmax,
    "Hardmax": _hardmax,
}


def _softmax_2d(fn):
    """Opset < 13: the input is coerced to 2-D at ``axis`` and normalised over the second dim."""

    def rule(ctx, x):
        axis = ctx.attr("axis", 1) % max(x.ndim, 1)
        rows = int(np.prod(x.shape[:axis], dtype=np.int64))
        y = fn(jnp.reshape(x, (rows, -1)), 1)
        return jnp.reshape(y, x.shape).astype(x.dtype)

    return rule


def _softmax_axis(fn):
    def rule(ctx, x):
        return fn(x, ctx.attr("axis", -1) % max(x.ndim, 1)).astype(x.dtype)

    return rule


for _op, _fn in _SOFTMAX_LIKE.items():
    register(_op, since=1)(_softmax_2d(_fn))
    register(_op, since=13)(_softmax_axis(_fn))


# --- CumSum / CumProd --------------------------------------------------------------------

_CUMULATIVE = {"CumSum": (jnp.cumsum, 0), "CumProd": (jnp.cumprod, 1)}


def _cumulative(fn, identity):
    def rule(ctx, x, axis):
        axis = int(ctx.static(axis, "the axis")) % x.ndim
        reverse = ctx.attr("reverse", 0)
        y = jnp.flip(x, axis) if reverse else jnp.asarray(x)
        if ctx.attr("exclusive", 0):  # shift by one, the identity entering first
            pad = [(0, 0)] * x.ndim
            pad[axis] = (1, 0)
            y = jnp.pad(y, pad, constant_values=identity)
            y = jax.lax.slice_in_dim(y, 0, x.shape[axis], axis=axis)
        y = fn(y, axis=axis).astype(x.dtype)
        return jnp.flip(y, axis) if reverse else y

    return rule


for _op, (_fn, _identity) in _CUMULATIVE.items():
    register(_op, since=11)(_cumulative(_fn, _identity))
