"""Forward rules: classification losses, window functions, DFT, STFT and mel filter banks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from projc.backends.jax.ops._registry import register
from projc.backends.jax.ops.elementwise import onnx_dtype

# --- losses ------------------------------------------------------------------------------


def _nll(ctx, logp, target, weight):
    """Negative log-likelihood of ``target`` classes under log-probabilities (N, C, ...)."""
    ignore = ctx.attr("ignore_index", None)
    classes = logp.shape[1]
    safe = jnp.clip(target, 0, classes - 1)  # ignored targets may lie outside [0, C)
    picked = jnp.take_along_axis(logp, jnp.expand_dims(safe, 1), axis=1)[:, 0]
    w = jnp.ones(target.shape, logp.dtype) if weight is None else jnp.take(weight, safe)
    if ignore is not None:
        w = jnp.where(target == ignore, 0, w).astype(logp.dtype)
    loss = -picked * w
    return _REDUCTIONS[ctx.attr("reduction", "mean")](loss, w).astype(logp.dtype)


_REDUCTIONS = {
    "none": lambda loss, w: loss,
    "sum": lambda loss, w: jnp.sum(loss),
    "mean": lambda loss, w: jnp.sum(loss) / jnp.sum(w),
}


@register("NegativeLogLikelihoodLoss", since=12)
def _nll_loss(ctx, x, target, weight=None):
    return _nll(ctx, x, target, weight)


@register("SoftmaxCrossEntropyLoss", since=12)
def _softmax_cross_entropy(ctx, scores, labels, weights=None):
    logp = jax.nn.log_softmax(scores, axis=1)
    loss = _nll(ctx, logp, labels, weights)
    return (loss, logp) if ctx.num_outputs > 1 else loss


# --- windows -----------------------------------------------------------------------------

_WINDOWS = {  # cosine-sum coefficients a_k of w[n] = sum_k (-1)^k a_k cos(2 pi k n / N)
    "HannWindow": (0.5, 0.5),
    "HammingWindow": (25.0 / 46.0, 21.0 / 46.0),
    "BlackmanWindow": (0.42, 0.5, 0.08),
}


def _window(coeffs):
    def rule(ctx, size):
        n = int(ctx.static(size, "the window size"))
        period = n if ctx.attr("periodic", 1) else n - 1
        phase = 2 * np.pi * np.arange(n, dtype=np.float64) / period
        w = sum((-1) ** k * a * np.cos(k * phase) for k, a in enumerate(coeffs))
        return jnp.asarray(w.astype(onnx_dtype(ctx.attr("output_datatype", 1))))

    return rule


for _op, _coeffs in _WINDOWS.items():
    register(_op, since=17)(_window(_coeffs))


# --- DFT and STFT ------------------------------------------------------------------------


def _to_complex(x):
    """ONNX's real layout ``[..., 1]`` (real) or ``[..., 2]`` (real, imaginary) as complex."""
    if x.shape[-1] == 1:
        return x[..., 0]
    return jax.lax.complex(x[..., 0], x[..., 1])


def _to_real(z, dtype):
    return jnp.stack([jnp.real(z), jnp.imag(z)], axis=-1).astype(dtype)


def _dft(x, length, axis: int, inverse: bool, onesided: bool):
    """The ONNX DFT of ``x`` along ``axis`` (an axis of the signal, before the real/imag dim)."""
    # ONNX's reference data were made with a double-precision forward transform and a
    # single-precision inverse; follow it so the tiny imaginary residues agree.
    z = _to_complex(x if inverse else x.astype(jnp.float64))
    if inverse and onesided:
        return jnp.fft.irfft(z, n=length, axis=axis)[..., None].astype(x.dtype)
    y = (jnp.fft.ifft if inverse else jnp.fft.fft)(z, n=length, axis=axis)
    if onesided:
        y = jax.lax.slice_in_dim(y, 0, length // 2 + 1, axis=axis)
    return _to_real(y, x.dtype)


def _dft_rule(ctx, x, dft_length, axis):
    axis = axis % x.ndim
    inverse, onesided = bool(ctx.attr("inverse", 0)), bool(ctx.attr("onesided", 0))
    if dft_length is not None:
        length = int(ctx.static(dft_length, "the DFT length"))
    else:
        length = 2 * (x.shape[axis] - 1) if inverse and onesided else x.shape[axis]
    return _dft(x, length, axis, inverse, onesided)


@register("DFT", since=17)
def _dft_17(ctx, x, dft_length=None):
    return _dft_rule(ctx, x, dft_length, ctx.attr("axis", 1))


@register("DFT", since=20)
def _dft_20(ctx, x, dft_length=None, axis=None):
    axis = -2 if axis is None else int(ctx.static(axis, "the DFT axis"))
    return _dft_rule(ctx, x, dft_length, axis)


@register("STFT", since=17)
def _stft(ctx, signal, frame_step, window=None, frame_length=None):
    step = int(ctx.static(frame_step, "the frame step"))
    if frame_length is not None:
        length = int(ctx.static(frame_length, "the frame length"))
    else:
        length = signal.shape[-2] if window is None else window.shape[0]
    frames = 1 + (signal.shape[-2] - length) // step
    index = np.arange(frames)[:, None] * step + np.arange(length)[None, :]
    x = jnp.asarray(signal)[:, index, :]  # (batch, frames, length, 1|2)
    if window is not None:
        x = x * jnp.asarray(window).astype(x.dtype)[:, None]
    return _dft(x, length, 2, False, bool(ctx.attr("onesided", 1)))


# --- MelWeightMatrix ---------------------------------------------------------------------


def _mel_edges(num_bins, dft_length, rate, lower_hz, upper_hz):
    """The FFT bin of each triangle's left, centre and right edge (num_bins + 2 of them)."""
    low = 2595 * jnp.log1p(lower_hz / 700) / np.log(10)
    high = 2595 * jnp.log1p(upper_hz / 700) / np.log(10)
    step = (high - low) / (num_bins + 2)
    mel = np.arange(num_bins + 2, dtype=np.float64) * step.astype(jnp.float64) + low
    hz = 700 * jnp.expm1(mel / 2595 * np.log(10))
    return jnp.floor_divide((dft_length + 1) * hz, rate).astype(jnp.int64)


@register("MelWeightMatrix", since=17)
def _mel_weight_matrix(ctx, num_mel_bins, dft_length, sample_rate, lower_hz, upper_hz):
    num_bins = int(ctx.static(num_mel_bins, "num_mel_bins"))
    n_fft = int(ctx.static(dft_length, "dft_length"))
    edges = _mel_edges(num_bins, n_fft, int(ctx.static(sample_rate)), lower_hz, upper_hz)
    lo, mid, hi = edges[None, :-2], edges[None, 1:-1], edges[None, 2:]
    j = jnp.arange(n_fft // 2 + 1, dtype=jnp.int64)[:, None]
    rise = jnp.where(mid == lo, (j == mid) * 1.0, (j - lo) / jnp.maximum(mid - lo, 1))
    fall = (hi - j) / jnp.maximum(hi - mid, 1)
    out = jnp.where((j >= lo) & (j <= mid), rise, 0.0)
    out = jnp.where((j >= mid) & (j < hi) & (hi > mid), fall, out)
    return out.astype(onnx_dtype(ctx.attr("output_datatype", 1)))
