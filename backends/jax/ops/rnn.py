"""Forward rules: RNN, GRU and LSTM as one ``lax.scan`` per direction."""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax

from projc.backends.jax.ops._registry import register

# name -> (function of (x, alpha, beta), default alpha, default beta)
_ACTIVATIONS: dict[str, tuple[Callable, float, float]] = {
    "relu": (lambda x, a, b: jnp.maximum(x, 0), 0.0, 0.0),
    "tanh": (lambda x, a, b: jnp.tanh(x), 0.0, 0.0),
    "sigmoid": (lambda x, a, b: jax.nn.sigmoid(x), 0.0, 0.0),
    "affine": (lambda x, a, b: a * x + b, 1.0, 0.0),
    "leakyrelu": (lambda x, a, b: jnp.where(x >= 0, x, a * x), 0.01, 0.0),
    "thresholdedrelu": (lambda x, a, b: jnp.where(x > a, x, 0), 1.0, 0.0),
    "scaledtanh": (lambda x, a, b: a * jnp.tanh(b * x), 1.0, 1.0),
    "hardsigmoid": (lambda x, a, b: jnp.clip(a * x + b, 0, 1), 0.2, 0.5),
    "elu": (lambda x, a, b: jnp.where(x >= 0, x, a * jnp.expm1(x)), 1.0, 0.0),
    "softsign": (lambda x, a, b: x / (1 + jnp.abs(x)), 0.0, 0.0),
    "softplus": (lambda x, a, b: jnp.logaddexp(x, 0), 0.0, 0.0),
}

_DEFAULT_ACTIVATIONS = {
    "RNN": ["Tanh"],
    "GRU": ["Sigmoid", "Tanh"],
    "LSTM": ["Sigmoid", "Tanh", "Tanh"],
}


def _activations(ctx, kind, num_dir):
    """One list of activation callables per direction."""
    names = ctx.attr("activations", None) or _DEFAULT_ACTIVATIONS[kind] * num_dir
    alphas, betas = ctx.attr("activation_alpha", []) or [], ctx.attr("activation_beta", []) or []
    fns = []
    for i, name in enumerate(names):
        fn, a, b = _ACTIVATIONS[name.lower()]
        a = alphas[i] if i < len(alphas) else a
        b = betas[i] if i < len(betas) else b
        fns.append(lambda x, fn=fn, a=a, b=b: fn(x, a, b))
    per = len(names) // num_dir
    return [fns[d * per:(d + 1) * per] for d in range(num_dir)]


@dataclasses.dataclass
class _Cell:
    """One direction's weights: r (G*H, H), rb (G*H,), activations, clip, extras."""

    r: jax.Array
    rb: jax.Array
    acts: list
    clip: float | None
    peep: jax.Array | None = None
    linear_before_reset: int = 0
    input_forget: int = 0

    def pre(self, v):
        return v if self.clip is None else jnp.clip(v, -self.clip, self.clip)


def _mm(a, b):
    return jnp.matmul(a, b, precision=lax.Precision.HIGHEST)


def _rnn_step(c: _Cell, xp, states):
    (h,) = states
    h = c.acts[0](c.pre(xp + _mm(h, c.r.T) + c.rb))
    return (h,), h


def _gru_step(c: _Cell, xp, states):
    (h,) = states
    f, g = c.acts
    hid = h.shape[-1]
    rz, rr, rh = (c.r[i * hid:(i + 1) * hid] for i in range(3))
    bz, br, bh = (c.rb[i * hid:(i + 1) * hid] for i in range(3))
    xz, xr, xh = (xp[:, i * hid:(i + 1) * hid] for i in range(3))
    z = f(c.pre(xz + _mm(h, rz.T) + bz))
    r = f(c.pre(xr + _mm(h, rr.T) + br))
    if c.linear_before_reset:
        cand = g(c.pre(xh + r * (_mm(h, rh.T) + bh)))
    else:
        cand = g(c.pre(xh + _mm(r * h, rh.T) + bh))
    h = (1 - z) * cand + z * h
    return (h,), h


def _lstm_step(c: _Cell, xp, states):
    h, cell = states
    f, g, act_h = c.acts
    gates = xp + _mm(h, c.r.T) + c.rb
    i_, o_, f_, c_ = jnp.split(gates, 4, axis=-1)
    p_i, p_o, p_f = jnp.split(c.peep, 3) if c.peep is not None else (0, 0, 0)
    i = f(c.pre(i_ + p_i * cell))
    fg = 1 - i if c.input_forget else f(c.pre(f_ + p_f * cell))
    cell = fg * cell + i * g(c.pre(c_))
    o = f(c.pre(o_ + p_o * cell))
    h = o * act_h(cell)
    return (h, cell), h


def _reverse_valid(x, lens):
    """Reverse each sequence's first ``lens[b]`` steps (time axis 0); an involution."""
    t = jnp.arange(x.shape[0])[:, None]
    idx = jnp.where(t < lens[None, :], lens[None, :] - 1 - t, t)
    return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=0)


def _scan(step, cell, xp, states, lens):
    """Run ``step`` over time; steps past a sequence's length keep the state, output 0."""

    def body(carry, inp):
        xt, t = inp
        new, h = step(cell, xt, carry)
        live = (t < lens)[:, None]
        new = tuple(jnp.where(live, n, o) for n, o in zip(new, carry))
        return new, jnp.where(live, h, jnp.zeros((), h.dtype))

    final, ys = lax.scan(body, tuple(states), (xp, jnp.arange(xp.shape[0])))
    return ys, final


def _recurrence(ctx, kind, step, x, w, r, b, lens, states, peep=None):
    """Shared driver: layout, directions, biases, initial states, outputs."""
    layout = ctx.attr("layout", 0)
    if layout:
        x = x.swapaxes(0, 1)
        states = [None if s is None else s.swapaxes(0, 1) for s in states]
    seq, batch = x.shape[:2]
    num_dir, gh = w.shape[:2]
    hidden = r.shape[-1]
    b = jnp.zeros((num_dir, 2 * gh), x.dtype) if b is None else b
    states = [jnp.zeros((num_dir, batch, hidden), x.dtype) if s is None else s for s in states]
    lens = jnp.full((batch,), seq, jnp.int32) if lens is None else jnp.asarray(lens, jnp.int32)
    acts = _activations(ctx, kind, num_dir)
    reverse = ctx.attr("direction", "forward") == "reverse"
    ys, finals = [], []
    for d in range(num_dir):
        cell = _Cell(r[d], b[d, gh:], acts[d], ctx.attr("clip", None),
                     None if peep is None else peep[d],
                     ctx.attr("linear_before_reset", 0), ctx.attr("input_forget", 0))
        back = reverse or d == 1
        xd = _reverse_valid(x, lens) if back else x
        xp = _mm(xd, w[d].T) + b[d, :gh]
        y, final = _scan(step, cell, xp, [s[d] for s in states], lens)
        ys.append(_reverse_valid(y, lens) if back else y)
        finals.append(final)
    y = jnp.stack(ys, axis=1).astype(x.dtype)
    outs = [jnp.stack([f[i] for f in finals]).astype(x.dtype) for i in range(len(states))]
    if layout:
        y = y.transpose(2, 0, 1, 3)
        outs = [o.swapaxes(0, 1) for o in outs]
    return (y, *outs)


@register("RNN", since=1)
def _rnn(ctx, x, w, r, b=None, lens=None, h0=None):
    return _recurrence(ctx, "RNN", _rnn_step, x, w, r, b, lens, [h0])


@register("GRU", since=1)
def _gru(ctx, x, w, r, b=None, lens=None, h0=None):
    return _recurrence(ctx, "GRU", _gru_step, x, w, r, b, lens, [h0])


@register("LSTM", since=1)
def _lstm(ctx, x, w, r, b=None, lens=None, h0=None, c0=None, peep=None):
    return _recurrence(ctx, "LSTM", _lstm_step, x, w, r, b, lens, [h0, c0], peep)
