"""Forward rules: Attention (opset 23+), FlexAttention, LinearAttention, rotary embeddings,
SwiGLU."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from onnx_ir import DataType

from projc.backends.jax.ops._registry import register
from projc.backends.jax.ops.reduce import shifted_by_max

# qk_matmul_output_mode values (ONNX Attention).
_QK_WITH_BIAS = 2
_QK_AFTER_SOFTMAX = 3
# Full float32 products on every platform (GPUs default to TF32).
_HIGH = lax.Precision.HIGHEST


def _to_heads(x, num_heads):
    """(B, S, H*D) -> (B, H, S, D); 4-D inputs pass through."""
    if x.ndim == 4:
        return x
    b, s, hidden = x.shape
    return x.reshape(b, s, num_heads, hidden // num_heads).transpose(0, 2, 1, 3)


def _from_heads(y, rank):
    if rank == 4:
        return y
    b, h, s, d = y.shape
    return y.transpose(0, 2, 1, 3).reshape(b, s, h * d)


def _bool_to_bias(mask, dtype):
    return jnp.where(mask, jnp.zeros((), dtype), jnp.full((), -jnp.inf, dtype))


def _pad_mask(mask, kv_len):
    """A mask shorter than the key sequence is padded with 'masked' entries."""
    width = kv_len - mask.shape[-1]
    if width <= 0:
        return mask
    fill = False if mask.dtype == jnp.bool_ else -jnp.inf
    pad = [(0, 0)] * (mask.ndim - 1) + [(0, width)]
    return jnp.pad(mask, pad, constant_values=fill)


def _position_bias(ctx, q_len, kv_len, offset, dtype):
    """Causal and sliding-window bias, bottom-right aligned: query i sits at i + offset.

    ``offset`` is a scalar (past length) or a per-batch (B,) array (nonpad length - q_len);
    the result is (q, kv) or (B, 1, q, kv).
    """
    offset = jnp.asarray(offset)
    offset = offset.reshape(-1, 1, 1, 1) if offset.ndim else offset
    diff = jnp.arange(q_len)[:, None] + offset - jnp.arange(kv_len)[None, :]
    allowed = jnp.ones(diff.shape, bool)
    if ctx.attr("is_causal", 0):
        allowed &= diff >= 0
    left, right = ctx.attr("left_window_size", -1), ctx.attr("right_window_size", -1)
    if left >= 0:
        allowed &= diff <= left
    if right >= 0:
        allowed &= -diff <= right
    return _bool_to_bias(allowed, dtype)


def _attention_bias(ctx, mask, nonpad, q_len, kv_len, past_len, dtype):
    """The additive bias from ``attn_mask``, ``is_causal``, windows and ``nonpad_kv_seqlen``."""
    bias = jnp.zeros((q_len, kv_len), dtype)
    if mask is not None:
        mask = _pad_mask(mask, kv_len)
        bias = bias + (_bool_to_bias(mask, dtype) if mask.dtype == jnp.bool_ else mask)
    offset = past_len
    if nonpad is not None and not past_len:
        offset = jnp.asarray(nonpad).reshape(-1) - q_len
    bias = bias + _position_bias(ctx, q_len, kv_len, offset, dtype)
    if nonpad is not None:
        keep = jnp.arange(kv_len)[None, :] < jnp.asarray(nonpad).reshape(-1, 1)
        bias = bias + _bool_to_bias(keep, dtype)[:, None, None, :]
    return bias


def _repeat_kv(k, q_heads):
    """Grouped-query attention: each KV head serves q_heads / kv_heads query heads."""
    reps = q_heads // k.shape[1]
    return jnp.repeat(k, reps, axis=1) if reps > 1 else k


def _mm(a, b):
    return jnp.matmul(a, b, precision=_HIGH)


def _softcap(x, cap):
    return cap * jnp.tanh(x / cap) if cap else x


def _softmax_guarded(logits, bias):
    """Softmax over keys; a row whose bias is all -inf gives zeros, not NaN."""
    row_masked = jnp.isneginf(jnp.max(bias, axis=-1, keepdims=True))
    top = jnp.max(logits, axis=-1, keepdims=True)
    top = jnp.where(jnp.isfinite(top), top, jnp.zeros((), top.dtype))
    e = jnp.exp(shifted_by_max(logits, -1, top))
    s = jnp.sum(e, axis=-1, keepdims=True)
    p = e / jnp.where(s == 0, jnp.ones((), s.dtype), s)
    return jnp.where(row_masked, jnp.zeros((), p.dtype), p)


@register("Attention", since=23)
def _attention(ctx, q, k, v, mask=None, past_k=None, past_v=None, nonpad=None):
    rank, dtype = q.ndim, q.dtype
    q = _to_heads(q, ctx.attr("q_num_heads"))
    k = _to_heads(k, ctx.attr("kv_num_heads"))
    v = _to_heads(v, ctx.attr("kv_num_heads"))
    if past_k is not None:
        k = jnp.concatenate([past_k, k], axis=2)
        v = jnp.concatenate([past_v, v], axis=2)
    present_k, present_v = k, v
    q_len, kv_len = q.shape[2], k.shape[2]
    past_len = 0 if past_k is None else past_k.shape[2]
    bias = _attention_bias(ctx, mask, nonpad, q_len, kv_len, past_len, dtype)
    scale = ctx.attr("scale", None)
    scale = 1.0 / np.sqrt(q.shape[3]) if scale is None else scale
    root = jnp.asarray(np.sqrt(scale), dtype)
    k, v = _repeat_kv(k, q.shape[1]), _repeat_kv(v, q.shape[1])
    qk = _mm(q * root, jnp.swapaxes(k * root, -1, -2))
    qk = _softcap(qk, ctx.attr("softcap", 0.0))
    logits = qk + bias
    precision = ctx.attr("softmax_precision", None)
    if precision is not None:
        logits = logits.astype(DataType(precision).numpy())
    probs = _softmax_guarded(logits, bias)
    mode = ctx.attr("qk_matmul_output_mode", 0)
    qk_out = {_QK_WITH_BIAS: logits, _QK_AFTER_SOFTMAX: probs}.get(mode, qk)
    y = _mm(probs.astype(dtype), v)
    return _from_heads(y, rank), present_k, present_v, qk_out.astype(dtype)


def _rotate(x1, x2, cos, sin):
    return cos * x1 - sin * x2, sin * x1 + cos * x2


@register("RotaryEmbedding", since=23)
def _rotary_embedding(ctx, x, cos, sin, position_ids=None):
    shape = x.shape
    # Work in (B, S, H, D).
    x = x.transpose(0, 2, 1, 3) if x.ndim == 4 else x.reshape(
        shape[0], shape[1], ctx.attr("num_heads"), -1
    )
    dim = ctx.attr("rotary_embedding_dim", 0) or x.shape[3]
    if position_ids is not None:
        cos, sin = cos[position_ids], sin[position_ids]
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    rot, rest = x[..., :dim], x[..., dim:]
    if ctx.attr("interleaved", 0):
        real, imag = _rotate(rot[..., 0::2], rot[..., 1::2], cos, sin)
        rot = jnp.stack([real, imag], axis=-1).reshape(rot.shape)
    else:
        real, imag = _rotate(rot[..., : dim // 2], rot[..., dim // 2:], cos, sin)
        rot = jnp.concatenate([real, imag], axis=-1)
    y = jnp.concatenate([rot, rest], axis=-1).astype(x.dtype)
    return y.transpose(0, 2, 1, 3) if len(shape) == 4 else y.reshape(shape)


@register("SwiGLU", since=28)
def _swiglu(ctx, a, b):
    alpha = ctx.attr("alpha", 1.0)
    gate = jax.nn.sigmoid(alpha * a).astype(a.dtype)
    return (a * gate * b).astype(a.dtype)


def _heads_f32(x, num_heads):
    return _to_heads(x, num_heads).astype(jnp.float32)


def _linear_attention_step(gating, delta, group):
    """One recurrence step of LinearAttention on the (B, H_kv, d_k, d_v) state."""

    def step(state, inp):
        q, k, v, g, beta = inp
        if gating:
            state = state * jnp.exp(g)[..., None]
        if delta:
            v = beta * (v - jnp.einsum("bhdm,bhd->bhm", state, k, precision=_HIGH))
        state = state + k[..., :, None] * v[..., None, :]
        read = jnp.repeat(state, group, axis=1) if group > 1 else state
        return state, jnp.einsum("bhd,bhdm->bhm", q, read, precision=_HIGH)

    return step


def _per_step(x, heads, b, t):
    """(B, T, H*X) gate inputs as (T, B, H, X); a zero placeholder when absent."""
    if x is None:
        return jnp.zeros((t, b, 1, 1), jnp.float32)
    return x.reshape(b, t, heads if x.shape[-1] % heads == 0 else 1, -1).astype(
        jnp.float32).transpose(1, 0, 2, 3)


@register("LinearAttention", since=27)
def _linear_attention(ctx, query, key, value, past_state=None, decay=None, beta=None):
    rule = ctx.attr("update_rule", "gated_delta")
    gating, delta = rule in ("gated", "gated_delta"), rule in ("delta", "gated_delta")
    hq, hkv = ctx.attr("q_num_heads"), ctx.attr("kv_num_heads")
    b, t = query.shape[:2]
    q, k, v = _heads_f32(query, hq), _heads_f32(key, hkv), _heads_f32(value, hkv)
    d_k, d_v = q.shape[-1], v.shape[-1]
    state = (jnp.zeros((b, hkv, d_k, d_v), jnp.float32) if past_state is None
             else past_state.astype(jnp.float32))
    scale = ctx.attr("scale", 0.0) or 1.0 / np.sqrt(d_k)
    time_major = lambda x: x.transpose(2, 0, 1, 3)  # noqa: E731  (B, H, T, D) -> (T, B, H, D)
    xs = (time_major(q), time_major(k), time_major(v),
          _per_step(decay, hkv, b, t), _per_step(beta, hkv, b, t))
    step = _linear_attention_step(gating, delta, hq // hkv)
    state, out = lax.scan(step, state, xs)
    y = (scale * out).transpose(1, 0, 2, 3).reshape(b, t, -1).astype(query.dtype)
    state_dtype = query.dtype if past_state is None else past_state.dtype
    return y, state.astype(state_dtype)


def _flex_dtype(dtype, precision):
    """FlexAttention's softmax dtype: the given precision, else at least float32."""
    if precision is not None:
        return DataType(precision).numpy()
    return jnp.promote_types(dtype, jnp.float32)


def _mod(ctx, name, x):
    graph = ctx.attr(name)
    return x if graph is None else ctx.run_graph(graph, [x])[0].astype(x.dtype)


@register("FlexAttention", since=1, domain="ai.onnx.preview")
def _flex_attention(ctx, q, k, v):
    scale = ctx.attr("scale", None)
    scale = 1.0 / np.sqrt(q.shape[3]) if scale is None else scale
    root = jnp.asarray(np.sqrt(np.float32(scale)), q.dtype)
    k, v = _repeat_kv(k, q.shape[1]), _repeat_kv(v, q.shape[1])
    scores = _mm(q * root, jnp.swapaxes(k * root, -1, -2))
    scores = scores.astype(_flex_dtype(q.dtype, ctx.attr("softmax_precision", None)))
    probs = _mod(ctx, "prob_mod", jax.nn.softmax(_mod(ctx, "score_mod", scores), axis=-1))
    return _mm(probs, v.astype(probs.dtype)).astype(v.dtype)
