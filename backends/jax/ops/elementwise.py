"""Forward rules: elementwise arithmetic, comparisons, logic, casts and activations.

Most ops here are one array function each, so they live in tables keyed by op name. Results
are cast back to the ONNX dtype where JAX's promotion (Python-float attributes, integer
division) could change it.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import onnx_ir as ir
from jax import lax
from jax.core import Tracer

from projc.backends.jax.ops._registry import register


def _same(fn):
    """A unary rule that keeps the input dtype."""
    return lambda ctx, x: jnp.asarray(fn(x)).astype(x.dtype)


def _is_text(*xs) -> bool:
    return any(isinstance(x, np.ndarray) and x.dtype.kind in "OUS" for x in xs)


# --- unary math --------------------------------------------------------------------------

_UNARY = {
    "Neg": jnp.negative,
    "Abs": jnp.abs,
    "Reciprocal": jnp.reciprocal,
    "Sqrt": jnp.sqrt,
    "Exp": jnp.exp,
    "Log": jnp.log,
    "Ceil": jnp.ceil,
    "Floor": jnp.floor,
    "Round": jnp.round,  # half to even, as ONNX asks
    "Sign": jnp.sign,
    "Erf": lax.erf,
    "Sin": jnp.sin,
    "Cos": jnp.cos,
    "Tan": jnp.tan,
    "Asin": jnp.arcsin,
    "Acos": jnp.arccos,
    "Atan": jnp.arctan,
    "Sinh": jnp.sinh,
    "Cosh": jnp.cosh,
    "Asinh": jnp.arcsinh,
    "Acosh": jnp.arccosh,
    "Atanh": jnp.arctanh,
    "Sigmoid": jax.nn.sigmoid,
    "Tanh": jnp.tanh,
    "Softplus": jax.nn.softplus,
    "Softsign": lambda x: x / (1 + jnp.abs(x)),
    "Mish": lambda x: x * jnp.tanh(jax.nn.softplus(x)),
    "Relu": lambda x: jnp.maximum(x, jnp.zeros((), x.dtype)),
    "Not": jnp.logical_not,
    "BitwiseNot": jnp.invert,
}

for _op, _fn in _UNARY.items():
    register(_op, since=1)(_same(_fn))


@register("IsNaN", since=9)
def _isnan(ctx, x):
    return jnp.isnan(x)


@register("IsInf", since=10)
def _isinf(ctx, x):
    pos = jnp.isposinf(x) if ctx.attr("detect_positive", 1) else jnp.zeros(x.shape, bool)
    neg = jnp.isneginf(x) if ctx.attr("detect_negative", 1) else jnp.zeros(x.shape, bool)
    return pos | neg


# --- binary and variadic -----------------------------------------------------------------


def _int_div(a, b):
    """C-style integer division (truncates toward zero), as ONNX's Div on integers."""
    q = jnp.floor_divide(a, b)
    fix = (jnp.remainder(a, b) != 0) & ((a < 0) ^ (b < 0))
    return q + fix.astype(q.dtype)


def _div(a, b):
    if jnp.issubdtype(jnp.result_type(a), jnp.integer):
        return _int_div(a, b)
    return jnp.divide(a, b)


_BINARY_SAME = {  # result keeps the dtype of the first input
    "Add": jnp.add,
    "Sub": jnp.subtract,
    "Mul": jnp.multiply,
    "Div": _div,
    "Pow": jnp.power,
    "BitwiseAnd": jnp.bitwise_and,
    "BitwiseOr": jnp.bitwise_or,
    "BitwiseXor": jnp.bitwise_xor,
    "PRelu": lambda x, slope: jnp.where(x < 0, x * slope, x),
}

_BINARY_BOOL = {
    "Equal": jnp.equal,
    "Less": jnp.less,
    "LessOrEqual": jnp.less_equal,
    "Greater": jnp.greater,
    "GreaterOrEqual": jnp.greater_equal,
    "And": jnp.logical_and,
    "Or": jnp.logical_or,
    "Xor": jnp.logical_xor,
}

_TEXT_COMPARE = {"Equal": np.equal}


def _binary_same(fn):
    return lambda ctx, a, b: jnp.asarray(fn(a, b)).astype(jnp.result_type(a))


def _binary_bool(op, fn):
    def rule(ctx, a, b):
        if _is_text(a, b) and op in _TEXT_COMPARE:  # strings are compile-time NumPy values
            return _TEXT_COMPARE[op](a, b)
        return fn(a, b)

    return rule


for _op, _fn in _BINARY_SAME.items():
    register(_op, since=1)(_binary_same(_fn))
for _op, _fn in _BINARY_BOOL.items():
    register(_op, since=1)(_binary_bool(_op, _fn))


@register("Mod", since=10)
def _mod(ctx, a, b):
    fn = jnp.fmod if ctx.attr("fmod", 0) else jnp.mod
    return fn(a, b).astype(jnp.result_type(a))


@register("BitShift", since=11)
def _bitshift(ctx, x, y):
    fn = jnp.left_shift if ctx.attr("direction") == "LEFT" else jnp.right_shift
    return fn(x, y.astype(x.dtype))


def _variadic(fn):
    return lambda ctx, *xs: jnp.asarray(functools.reduce(fn, xs)).astype(jnp.result_type(xs[0]))


register("Max", since=1)(_variadic(jnp.maximum))
register("Min", since=1)(_variadic(jnp.minimum))
register("Sum", since=1)(_variadic(jnp.add))


@register("Mean", since=1)
def _mean(ctx, *xs):
    return (functools.reduce(jnp.add, xs) / len(xs)).astype(jnp.result_type(xs[0]))


@register("Where", since=9)
def _where(ctx, cond, x, y):
    if _is_text(x, y):
        return np.where(cond, x, y)
    return jnp.where(cond, x, y)


def _clip(x, lo, hi):
    y = x if lo is None else jnp.maximum(x, jnp.asarray(lo).astype(x.dtype))
    return y if hi is None else jnp.minimum(y, jnp.asarray(hi).astype(x.dtype))


@register("Clip", since=1)
def _clip_attr(ctx, x):
    return _clip(x, ctx.attr("min", None), ctx.attr("max", None))


@register("Clip", since=11)
def _clip_input(ctx, x, lo=None, hi=None):
    return _clip(x, lo, hi)


# --- activations with attributes ---------------------------------------------------------

_SELU_ALPHA = 1.67326319217681884765625
_SELU_GAMMA = 1.05070102214813232421875


def _gelu(x, approximate):
    return jax.nn.gelu(x, approximate=approximate == "tanh")


def _shrink(x, lambd, bias):
    return jnp.where(x < -lambd, x + bias, jnp.where(x > lambd, x - bias, 0))


# op -> (function of x and the attribute values, [(attribute, default), ...])
_ACTIVATIONS = {
    "LeakyRelu": (lambda x, a: jnp.where(x < 0, a * x, x), [("alpha", 0.01)]),
    "Elu": (lambda x, a: jnp.where(x > 0, x, a * jnp.expm1(x)), [("alpha", 1.0)]),
    "Selu": (
        lambda x, a, g: g * jnp.where(x > 0, x, a * jnp.expm1(x)),
        [("alpha", _SELU_ALPHA), ("gamma", _SELU_GAMMA)],
    ),
    "Celu": (
        lambda x, a: jnp.maximum(x, 0) + jnp.minimum(0, a * jnp.expm1(x / a)),
        [("alpha", 1.0)],
    ),
    "ThresholdedRelu": (lambda x, a: jnp.where(x > a, x, 0), [("alpha", 1.0)]),
    "HardSigmoid": (
        lambda x, a, b: jnp.clip(a * x + b, 0, 1),
        [("alpha", 0.2), ("beta", 0.5)],
    ),
    "HardSwish": (lambda x: x * jnp.clip(x / 6 + 0.5, 0, 1), []),
    "Gelu": (_gelu, [("approximate", "none")]),
    "Swish": (lambda x, a: x * jax.nn.sigmoid(a * x), [("alpha", 1.0)]),
    "Shrink": (_shrink, [("lambd", 0.5), ("bias", 0.0)]),
}


def _activation(fn, attrs):
    def rule(ctx, x):
        values = [ctx.attr(name, default) for name, default in attrs]
        return jnp.asarray(fn(x, *values)).astype(x.dtype)

    return rule


for _op, (_fn, _attrs) in _ACTIVATIONS.items():
    register(_op, since=1)(_activation(_fn, _attrs))


# --- casts -------------------------------------------------------------------------------

_FLOAT8 = {
    np.dtype(ml_dtypes.float8_e4m3fn),
    np.dtype(ml_dtypes.float8_e4m3fnuz),
    np.dtype(ml_dtypes.float8_e5m2),
    np.dtype(ml_dtypes.float8_e5m2fnuz),
}
_SUB_BYTE_INT = {
    np.dtype(ml_dtypes.int4),
    np.dtype(ml_dtypes.uint4),
    np.dtype(ml_dtypes.int2),
    np.dtype(ml_dtypes.uint2),
}


def onnx_dtype(code: int) -> np.dtype:
    """The NumPy dtype of an ONNX ``TensorProto`` element type code."""
    return np.dtype(ir.DataType(code).numpy())


def _e8m0(x, saturate: bool, round_mode: str):
    """Round to a power of two (float8e8m0) on the bits of float32, as ONNX specifies."""
    bits = lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
    exponent = (bits >> 23) & 0xFF
    mantissa = bits & 0x7FFFFF
    up = {
        "up": mantissa > 0,
        "down": jnp.zeros_like(mantissa, bool),
        "nearest": (mantissa > 0x400000) | ((mantissa == 0x400000) & (exponent > 0)),
    }[round_mode]
    special = exponent == 0xFF
    bumped = exponent + up.astype(jnp.uint32)
    limit = 0xFE if saturate else 0xFF
    out = jnp.where(special, 0xFF, jnp.minimum(bumped, limit))
    return lax.bitcast_convert_type(out.astype(jnp.uint8), ml_dtypes.float8_e8m0fnu)


def cast_to(x, to: np.dtype, saturate: bool = True, round_mode: str = "up"):
    """``x`` cast to ``to`` with ONNX semantics (float8 saturation; sub-byte integers wrap, floats out of range give 0)."""
    if _is_text(x) or to.kind in "OUS":
        return _cast_text(x, to)
    if to == np.dtype(ml_dtypes.float8_e8m0fnu):
        return _e8m0(jnp.asarray(x), saturate, round_mode)
    x = jnp.asarray(x)
    if to in _FLOAT8 and saturate and jnp.issubdtype(x.dtype, jnp.floating):
        info = ml_dtypes.finfo(to)
        x = jnp.clip(x, float(info.min), float(info.max))
    if to in _SUB_BYTE_INT:
        info = ml_dtypes.iinfo(to)
        if jnp.issubdtype(x.dtype, jnp.floating):
            # ONNX's reference casts with ml_dtypes, which since 0.7 (onnx 1.23.2's test data)
            # sends a float outside the range, NaN included, to 0 rather than wrapping it
            t = jnp.trunc(x)
            x = jnp.where((t >= int(info.min)) & (t <= int(info.max)), t, 0).astype(jnp.int64)
        else:  # integers wrap modulo 2**bits, like the wider integer types
            span = int(info.max) - int(info.min) + 1
            x = jnp.mod(x.astype(jnp.int64) - int(info.min), span) + int(info.min)
    return x.astype(to)


def _cast_text(x, to: np.dtype):
    """Casts from or to strings: only possible on compile-time (NumPy) values."""
    if isinstance(x, Tracer):
        raise NotImplementedError(
            "casts from or to strings need an input known when the model is compiled"
        )
    x = np.asarray(x)
    if to.kind in "OUS":
        return x.astype(np.str_).astype(object)
    return x.astype(np.str_).astype(np.float64).astype(to)


@register("Cast", since=1)
def _cast(ctx, x):
    to = onnx_dtype(ctx.attr("to"))
    return cast_to(x, to, bool(ctx.attr("saturate", 1)), ctx.attr("round_mode", "up"))


@register("CastLike", since=15)
def _castlike(ctx, x, like):
    to = np.dtype(like.dtype)
    return cast_to(x, to, bool(ctx.attr("saturate", 1)), ctx.attr("round_mode", "up"))


@register("BitCast", since=26)
def _bitcast(ctx, x):
    to = onnx_dtype(ctx.attr("to"))
    if np.dtype(x.dtype) == np.bool_ or to == np.bool_:  # XLA has no bool bitcast; 1 byte each
        return x.astype(to) if to != np.bool_ else x != 0
    return lax.bitcast_convert_type(x, to)
