"""Zero-phase signal processing in numpy: resampling and band-pass filtering.

Numpy-only on purpose (no scipy, no torch): copied into the Triton preprocess model
so that the served pipeline runs the very same arithmetic as training.

Resampling is band-limited interpolation (J. O. Smith, "Digital Audio Resampling"):
each output sample is a Kaiser-windowed sinc sum centred on its exact position in
the input, so any rate ratio works (250, 257, 500, 1000 Hz, odd ones), there is no
phase shift (the kernel is symmetric about the output instant), and when the rate
goes down the cutoff follows the new Nyquist frequency (anti-aliasing).
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

__all__ = ["resample", "bandpass"]

_ZERO_CROSSINGS = 16  # sinc lobes per side: stopband ~ -80 dB with beta 8.6
_KAISER_BETA = 8.6
_ROLLOFF = 0.94  # cutoff as a fraction of the lower Nyquist frequency
_CHUNK = 4096  # output samples per block: bounds memory for long records
_MAX_PHASES = 2048  # rational ratios with at most this many kernel phases use the polyphase path


def resample(x: np.ndarray, fs_in: float, fs_out: float) -> np.ndarray:
    """Resample ``x`` ``(leads, samples)`` from ``fs_in`` to ``fs_out`` Hz.

    Output length is ``round(samples * fs_out / fs_in)``; sample ``k`` of the output
    is at time ``k / fs_out``, exactly as sample 0 of the input is at time 0.
    """
    x = np.asarray(x, dtype=np.float64)
    if fs_in == fs_out:
        return x.copy()
    ratio = fs_out / fs_in
    n_in = x.shape[-1]
    n_out = int(round(n_in * ratio))
    cutoff = _ROLLOFF * min(1.0, ratio)  # in cycles per input sample x 2 (1 = input Nyquist)
    half = int(np.ceil(_ZERO_CROSSINGS / cutoff))  # kernel half-width in input samples
    pad = min(half + 1, n_in - 1)
    # Odd reflection keeps value and slope continuous at the edges.
    padded = np.concatenate(
        [2 * x[..., :1] - x[..., pad:0:-1], x, 2 * x[..., -1:] - x[..., -2 : -pad - 2 : -1]], axis=-1
    )
    kernel_at = _kernel_factory(half, cutoff)
    p, q = _rational(ratio)
    if p is not None and pad == half + 1:
        return _polyphase(padded, n_out, p, q, half, kernel_at)
    # Irrational ratio or a record shorter than the kernel: one kernel per output sample.
    offsets = np.arange(-half + 1, half + 1)
    out = np.empty(x.shape[:-1] + (n_out,), dtype=np.float64)
    for start in range(0, n_out, _CHUNK):
        t = np.arange(start, min(start + _CHUNK, n_out)) / ratio  # output instants, input-sample units
        base = np.floor(t).astype(np.int64)
        idx = np.clip(base[:, None] + offsets[None, :] + pad, 0, padded.shape[-1] - 1)  # (chunk, taps)
        out[..., start : start + len(t)] = np.einsum("...ct,ct->...c", padded[..., idx], kernel_at(t - base))
    return out


def _kernel_factory(half: int, cutoff: float):
    """Windowed-sinc kernels (rows sum to 1) for output instants at fractional offsets ``frac``."""
    offsets = np.arange(-half + 1, half + 1)

    def kernel_at(frac: np.ndarray) -> np.ndarray:
        d = np.asarray(frac, dtype=np.float64)[:, None] - offsets[None, :]  # distance to each tap
        arg = np.clip(1.0 - (d / half) ** 2, 0.0, None)
        k = cutoff * np.sinc(cutoff * d) * np.i0(_KAISER_BETA * np.sqrt(arg)) / np.i0(_KAISER_BETA)
        return k / k.sum(axis=1, keepdims=True)  # exact unit gain at DC

    return kernel_at


def _rational(ratio: float) -> tuple[int | None, int]:
    """``ratio = p / q`` with few phases ``p``, or ``(None, 0)`` when no exact small fraction exists."""
    frac = Fraction(ratio).limit_denominator(_MAX_PHASES * 64)
    if frac.numerator > _MAX_PHASES or abs(frac.numerator / frac.denominator - ratio) > 1e-12 * ratio:
        return None, 0
    return frac.numerator, frac.denominator


def _polyphase(padded: np.ndarray, n_out: int, p: int, q: int, half: int, kernel_at) -> np.ndarray:
    """Band-limited interpolation for ``fs_out / fs_in = p / q``.

    Output ``k = m p + j`` sits at input instant ``(m p + j) q / p = m q + j q / p``: for a
    fixed phase ``j`` the kernel is the same and the input window moves by ``q`` samples,
    so each phase is one strided view times one kernel vector.
    """
    taps = 2 * half
    windows = np.lib.stride_tricks.sliding_window_view(padded, taps, axis=-1)  # (..., n, taps) view
    phases = np.arange(p)
    kernels = kernel_at((phases * q % p) / p)  # (p, taps)
    out = np.empty(padded.shape[:-1] + (n_out,), dtype=np.float64)
    for j in range(min(p, n_out)):
        count = (n_out - j + p - 1) // p
        first = j * q // p + 2  # window start = base + pad - half + 1, with pad = half + 1
        out[..., j::p] = windows[..., first : first + (count - 1) * q + 1 : q, :] @ kernels[j]
    return out


def bandpass(x: np.ndarray, fs: float, low_hz: float | None, high_hz: float | None) -> np.ndarray:
    """Zero-phase band-pass of ``x`` ``(leads, samples)`` in the frequency domain.

    The gain is real (no phase shift) with raised-cosine transitions: the high-pass
    rises over ``[0.5, 1.5] x low_hz`` and the low-pass falls over ``high_hz +- 5 Hz``, so
    both are at -6 dB at their nominal frequency. The record is mirrored at both ends
    before the FFT so that the circular wrap does not leak one end into the other.
    """
    x = np.asarray(x, dtype=np.float64)
    if low_hz is None and high_hz is None:
        return x.copy()
    n = x.shape[-1]
    pad = min(n - 1, max(int(2 * fs), n // 2))
    padded = np.concatenate([x[..., pad:0:-1], x, x[..., -2 : -pad - 2 : -1]], axis=-1)
    n_fft = _fast_fft_size(padded.shape[-1])
    freqs = np.fft.rfftfreq(n_fft, d=1.0 / fs)
    gain = np.ones_like(freqs)
    if low_hz:
        gain *= _raised_cosine(freqs, 0.5 * low_hz, 1.5 * low_hz)
    if high_hz and high_hz < fs / 2:
        width = min(5.0, 0.1 * high_hz)
        gain *= 1.0 - _raised_cosine(freqs, high_hz - width, high_hz + width)
    spectrum = np.fft.rfft(padded, n=n_fft, axis=-1) * gain
    return np.fft.irfft(spectrum, n=n_fft, axis=-1)[..., pad : pad + n]


def _fast_fft_size(n: int) -> int:
    """The smallest 2^a 3^b 5^c >= n: pocketfft is fastest on such sizes (10000, not 16384)."""
    best = 1 << int(np.ceil(np.log2(n)))
    f5 = 1
    while f5 < best:
        f35 = f5
        while f35 < best:
            size = f35 << max(0, int(np.ceil(np.log2(n / f35))))
            best = min(best, size)
            f35 *= 3
        f5 *= 5
    return best


def _raised_cosine(f: np.ndarray, start: float, stop: float) -> np.ndarray:
    """0 below ``start``, 1 above ``stop``, half a cosine period in between."""
    ramp = np.clip((f - start) / (stop - start), 0.0, 1.0)
    return 0.5 - 0.5 * np.cos(np.pi * ramp)
