"""The audio signal in the DALI graph: read on the CPU at the shards' rate, to the device, resampled there.

``pcm16`` shards hold the signal as raw int16 (the reader's typed output, no decode);
``flac``/``ogg`` are decoded by ``fn.decoders.audio``, which is CPU-only, at their native
rate: its ``sample_rate=`` would resample on the CPU too, while ``fn.audio_resample`` has a
GPU backend (the two use the same kernel: equal output on the CPU). Everything heavier runs
after the transfer: the int16 -> float cast, resampling, pre-emphasis.

Training cuts its K chunks **before** the transfer (:func:`cut_windows`): each chunk travels
as a window of stored samples, never the whole sample. With resampling, a window carries a
margin of the resampler's filter support either side and starts on a sample whose resampled
position is a whole output sample, so the chunk cut from the resampled window equals the chunk
cut from the resampled whole sample (up to DALI's float32 position arithmetic: 7e-4 of full
scale measured for 16 -> 22.05 kHz, exactly for integer ratios; tests/test_pipeline_windows.py).
At the sample's ends a window stops at the signal, where the whole-sample resampler and
pre-emphasis see the same border.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nvidia.dali import fn, types
from nvidia.dali import math as dmath

if TYPE_CHECKING:
    from pipelines.graph import GraphSpec

RESAMPLE_LOBES = 16
"""Input samples either side of an output sample that DALI's ``fn.audio_resample`` reads at its
default ``quality=50``: ``round(0.007 q^2 - 0.09 q + 3)`` lobes of its windowed sinc, which DALI
evaluates at the input rate whether up- or downsampling (the kernel does not low-pass)."""


@dataclass(frozen=True)
class Windowing:
    """Where a training chunk's window of stored samples lies (all in samples at the shards' rate)."""

    src: int  # the shards' rate
    rate: int  # the feature rate
    chunk: int  # L, at the feature rate
    preemphasis: bool

    @property
    def resampling(self) -> bool:
        return self.src != self.rate

    @property
    def period(self) -> int:
        """Stored samples between window starts whose resampled position is a whole output sample."""
        return self.src // math.gcd(self.src, self.rate)

    @property
    def margin(self) -> int:
        """Stored samples kept before and after the chunk: the resampler's support (+2 for
        rounding) and one output sample for pre-emphasis's ``x[t-1]``."""
        pre = -(-self.src // self.rate) if self.preemphasis else 0
        if not self.resampling:
            return pre
        return RESAMPLE_LOBES + 2 + pre

    def max_window(self) -> int:
        """The longest window, in stored samples (the device memory bound uses it)."""
        if not self.resampling:
            return self.chunk + self.margin
        return -(-self.chunk * self.src // self.rate) + 2 * self.margin + self.period + 2

    def window(self, start: int, n_in: int) -> tuple[int, int, int]:
        """``(first stored sample, stored samples, chunk offset in the resampled window)`` for a
        chunk starting at ``start`` (feature rate) in a sample of ``n_in`` stored samples; the
        plain-int twin of :func:`cut_windows`' DALI arithmetic (tests and docs use it)."""
        s, src, rate, m = start, self.src, self.rate, self.margin
        if not self.resampling:
            a = max(s - m, 0)
            return a, min(s + self.chunk, n_in) - a, s - a
        a = max((math.floor(s * src / rate) - m) // self.period * self.period, 0)
        end = min(math.ceil((s + self.chunk) * src / rate) + m, n_in)
        return a, end - a, s - a * rate // src


def windowing(spec: GraphSpec) -> Windowing:
    f = spec.features
    return Windowing(spec.shards_rate, f.sample_rate, spec.framing.chunk, f.preemphasis > 0)


def length_of(signal: Any) -> Any:
    """Length of a CPU 1-D signal node as a float64 CPU node (exact for any track length)."""
    return fn.cast(signal.shape(), dtype=types.DALIDataType.FLOAT64)


def source(spec: GraphSpec, audio: Any) -> tuple[Any, Any]:
    """-> (the stored signal on the CPU at the shards' rate: the reader's int16 for pcm16, else
    float32 decoded at the native rate, mono; its length as a float64 CPU node)."""
    if spec.codec == "pcm16":
        return audio, length_of(audio)
    sig, _ = fn.decoders.audio(audio, dtype=types.DALIDataType.FLOAT, downmix=True)
    return sig, length_of(sig)


def feature_length(spec: GraphSpec, n_in: Any) -> Any:
    """Samples at the feature rate of a signal of ``n_in`` stored samples (float64 CPU node): the
    resampler's output length ``ceil(n * out / in)``, in double precision (integer constants
    keep DALI's arithmetic in float64; a Python float enters as float32)."""
    rate, src = int(spec.features.sample_rate), int(spec.shards_rate)
    return n_in if rate == src else dmath.ceil(n_in * rate / src)


def on_device(spec: GraphSpec, x: Any) -> Any:
    """A CPU signal (or window) of stored samples -> float32 on ``spec.device`` at the feature
    rate, pre-emphasised (kaldi's ``y[0] = x[0] - c x[0]``: border "clamp")."""
    features = spec.features
    x = x.gpu() if spec.device == "gpu" else x
    if spec.codec == "pcm16":
        x = fn.cast(x, dtype=types.DALIDataType.FLOAT) * (1.0 / 32768.0)
    if spec.shards_rate != features.sample_rate:
        x = fn.audio_resample(x, in_rate=float(spec.shards_rate), out_rate=float(features.sample_rate))
    if features.preemphasis:
        x = fn.preemphasis_filter(x, preemph_coeff=features.preemphasis, border="clamp")
    return x


def cut_windows(spec: GraphSpec, stored: Any, n_in: Any, starts: list[Any]) -> Any:
    """The chunks at ``starts`` (INT32 CPU nodes, feature rate), stacked ``(K, L)`` on the device:
    each cut on the CPU as a window of stored samples (:class:`Windowing`), moved and resampled
    on its own, then trimmed to ``L`` (zero-padded past the sample's end, as before)."""
    w, i32 = windowing(spec), types.DALIDataType.INT32
    rows = []
    for start in starts:
        s = fn.cast(start, dtype=types.DALIDataType.FLOAT64)
        if w.resampling:
            first = dmath.floor(s * w.src / w.rate) - w.margin
            a = dmath.max(dmath.floor(first / w.period) * w.period, 0)
            end = dmath.min(dmath.ceil((s + w.chunk) * w.src / w.rate) + w.margin, n_in)
            offset = s - a * w.rate / w.src  # a whole number: ``a`` is a multiple of the period
        else:
            a = dmath.max(s - w.margin, 0)
            end = dmath.min(s + w.chunk, n_in)
            offset = s - a
        window = fn.slice(stored, start=fn.cast(a, dtype=i32), shape=fn.cast(end - a, dtype=i32), axes=[0])
        rows.append(
            fn.slice(
                on_device(spec, window),
                start=fn.cast(offset, dtype=i32),
                shape=[w.chunk],
                axes=[0],
                out_of_bounds_policy="pad",
            )
        )
    return fn.stack(*rows)
