"""The audio signal in the DALI graph: read on the CPU at the shards' rate, to the device, resampled there.

``pcm16`` shards hold the signal as raw int16 (the reader's typed output, no decode);
``flac``/``ogg`` are decoded by ``fn.decoders.audio``, which is CPU-only, at their native
rate: its ``sample_rate=`` would resample on the CPU too, while ``fn.audio_resample`` has a
GPU backend (the two use the same kernel: equal output on the CPU). Everything heavier runs
after the transfer: the int16 -> float cast, resampling, pre-emphasis.

Training cuts its K chunks **before** the transfer (:func:`cut_windows`): each chunk travels
as a window of stored samples, never the whole sample, and the K windows travel and are
processed as one batch, so the graph's operator count does not depend on K. With resampling, a
window carries a margin of the resampler's filter support either side and starts on a sample
whose resampled position is a whole output sample, so the chunk cut from the resampled window
equals the chunk cut from the resampled whole sample (up to DALI's float32 position arithmetic:
7e-4 of full scale measured for 16 -> 22.05 kHz; exactly for integer ratios but for the
sample's very last output sample, 4e-9; tests/test_pipeline_windows.py). At the sample's end
a window stops at the signal; zeros follow it in its row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
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
    """Where a training chunk's window of stored samples lies (all in samples at the shards' rate).

    A window starts ``period``-aligned (its resampled position is a whole output sample) at least
    ``margin`` stored samples before its chunk, holds ``span`` stored samples (fewer at the
    sample's end) and sits in a row of ``width`` samples whose tail is zeros: the K rows are
    resampled and pre-emphasised as one signal, and the zeros keep each row's neighbours out of
    its chunk (:func:`cut_windows`)."""

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
    def out_period(self) -> int:
        """``period`` at the feature rate."""
        return self.rate // math.gcd(self.src, self.rate)

    @property
    def margin(self) -> int:
        """Stored samples kept before and after the chunk: the resampler's support (+2 for
        rounding) and one output sample for pre-emphasis's ``x[t-1]``."""
        pre = -(-self.src // self.rate) if self.preemphasis else 0
        if not self.resampling:
            return pre
        return RESAMPLE_LOBES + 2 + pre

    @property
    def lead(self) -> int:
        """Feature-rate samples a window starts before its chunk, at least (``margin`` stored ones)."""
        return -(-self.margin * self.rate // self.src)

    @property
    def span(self) -> int:
        """Stored samples a window holds: the chunk, up to ``lead + out_period - 1`` output
        samples before it, and (resampling) ``margin`` after it."""
        before = self.lead + self.out_period - 1 if self.resampling else self.lead
        after = self.margin if self.resampling else 0
        return -(-(before + self.chunk) * self.src // self.rate) + after

    @property
    def width(self) -> int:
        """A window's row: ``span`` plus zeros (the resampler's support and one output sample
        either side of a row boundary; one sample for pre-emphasis), whole periods long."""
        tail = RESAMPLE_LOBES + 2 + -(-self.src // self.rate) if self.resampling else 1
        return -(-(self.span + tail) // self.period) * self.period

    @property
    def out_width(self) -> int:
        """``width`` at the feature rate (exact: ``width`` is whole periods)."""
        return self.width // self.period * self.out_period

    def max_window(self) -> int:
        """The longest window row, in stored samples (the device memory bound uses it)."""
        return self.width

    def window(self, start: int, n_in: int) -> tuple[int, int, int]:
        """``(first stored sample, stored samples, chunk offset in the resampled window)`` for a
        chunk starting at ``start`` (feature rate) in a sample of ``n_in`` stored samples; the
        plain-int twin of :func:`window_plan`'s DALI arithmetic (tests and docs use it)."""
        block = max((start - self.lead) // self.out_period, 0)
        a = block * self.period
        return a, min(n_in - a, self.span), start - block * self.out_period


def windowing(spec: GraphSpec) -> Windowing:
    f = spec.features
    return Windowing(spec.shards_rate, f.sample_rate, spec.framing.chunk, f.preemphasis > 0)


@dataclass(frozen=True)
class SpeedWindowing:
    """Training windows under speed perturbation (``augment.speed = [lo, hi]``, stored samples).

    A sample with factor f has its chunks cover ``L f`` feature-rate samples (``L f src / rate``
    stored ones), resampled to L: pitch and tempo move together. Each of its K rows holds
    ``width ~ f out_width src / rate`` stored samples (a window, then zeros) and is resampled to
    ``out_width`` samples, the same for every factor (the resampler's ``out_length``), so the
    factor in effect is ``width rate / (out_width src)``: f to within 1 / width. A window starts on a
    whole stored sample ``margin`` before its chunk, and the chunk on the output sample nearest to
    its drawn start (no whole-sample reference to match: the phase alignment of
    :class:`Windowing` is not needed)."""

    base: Windowing
    lo: float
    hi: float

    @property
    def margin(self) -> int:
        """Stored samples kept either side of a chunk: the resampler's support (+2 for rounding)
        and, with pre-emphasis, one output sample at the highest factor."""
        b = self.base
        return RESAMPLE_LOBES + 2 + (math.ceil(b.src * self.hi / b.rate) if b.preemphasis else 0)

    @property
    def out_width(self) -> int:
        """Output samples per row: the chunk, then both margins and the zeros after the window
        (``margin`` again) as many output samples as they make at the lowest factor, +4 for the
        rounding of the row width, the window start and the chunk offset."""
        b = self.base
        return b.chunk + math.ceil((3 * self.margin + 4) * b.rate / (b.src * self.lo))

    def max_window(self) -> int:
        """The longest row in stored samples (at ``hi``; the device memory bound uses it)."""
        return math.ceil(self.out_width * self.base.src * self.hi / self.base.rate) + 1

    def constants(self) -> dict[str, float]:
        """The float constants of :func:`row_width` and :func:`speed_plan` as DALI's arithmetic
        holds them (a Python float enters it as float32): ``width = floor(draw a + b)`` stored
        samples per row, a chunk's start in stored samples ``start x per_start``, the
        feature-rate samples it covers ``ceil(width / out_width x per_width)``."""
        b, out = self.base, self.out_width
        return {
            "a": _f32((self.hi - self.lo) * out * b.src / b.rate),
            "b": _f32(self.lo * out * b.src / b.rate + 0.5),
            "per_start": _f32(b.src / b.rate),
            "per_width": _f32(b.chunk * b.rate / b.src),
        }

    def row_width(self, draw: float) -> int:
        """The plain twin of :func:`row_width`: a sample's row width from its draw in [0, 1)."""
        c = self.constants()
        return math.floor(draw * c["a"] + c["b"])

    def window(self, start: int, n_in: int, width: int) -> tuple[int, int, int, float]:
        """``(first stored sample, stored samples, chunk offset in the row, stored samples per
        output sample)`` of a chunk at ``start`` (feature rate) in rows of ``width``: the plain
        twin of :func:`speed_plan`'s DALI arithmetic (tests and docs use it)."""
        per_out = width / self.out_width
        at = start * self.constants()["per_start"]
        first = max(math.floor(at) - self.margin, 0)
        offset = math.floor((at - first) / per_out + 0.5)
        return first, min(n_in - first, width - self.margin), offset, per_out


def _f32(x: float) -> float:
    return float(np.float32(x))


def speed_range(spec: GraphSpec) -> tuple[float, float] | None:
    """``augment.speed`` as ``(lo, hi)``; None at its neutral setting [1, 1] (no perturbation)."""
    lo, hi = (float(v) for v in spec.augment.speed)
    return None if lo == hi == 1.0 else (lo, hi)


def speed_windowing(spec: GraphSpec) -> SpeedWindowing:
    speed = speed_range(spec)
    assert speed is not None, "speed perturbation is off"
    return SpeedWindowing(windowing(spec), *speed)


def row_width(spec: GraphSpec, draw: Any) -> Any:
    """A sample's speed factor from its draw in [0, 1) (float64 ``(1,)``), as what the graph
    uses: the stored samples of its window rows (whole numbers, float64 ``(1,)``), each resampled
    to ``SpeedWindowing.out_width``; the factor in effect is ``width rate / (out_width src)``."""
    c = speed_windowing(spec).constants()
    return dmath.floor(draw * c["a"] + c["b"])


def chunk_extent(spec: GraphSpec, width: Any) -> Any:
    """Feature-rate samples a training chunk covers (float64 ``(1,)`` node, or an int): L, or
    ``ceil(L factor)`` for a sample whose rows are ``width`` (:func:`row_width`) stored samples."""
    if width is None:
        return int(spec.framing.chunk)
    sw = speed_windowing(spec)
    return dmath.ceil(width / sw.out_width * sw.constants()["per_width"])


def row_widths(spec: GraphSpec) -> tuple[int, int]:
    """(stored, feature-rate) samples of the longest training window row (the memory bound)."""
    if speed_range(spec) is None:
        w = windowing(spec)
        return w.width, w.out_width
    sw = speed_windowing(spec)
    return sw.max_window(), sw.out_width


def length_of(signal: Any) -> Any:
    """Length of a CPU 1-D signal node as a float64 CPU node (exact for any track length)."""
    return fn.cast(signal.shape(), dtype=types.DALIDataType.FLOAT64)


def source(spec: GraphSpec, audio: Any) -> Any:
    """The stored signal on the CPU at the shards' rate: the reader's int16 for pcm16, else
    float32 decoded at the native rate, mono."""
    if spec.codec == "pcm16":
        return audio
    sig, _ = fn.decoders.audio(audio, dtype=types.DALIDataType.FLOAT, downmix=True)
    return sig


def feature_length(spec: GraphSpec, n_in: Any) -> Any:
    """Samples at the feature rate of a signal of ``n_in`` stored samples (float64 CPU node): the
    resampler's output length ``ceil(n * out / in)``, in double precision (integer constants
    keep DALI's arithmetic in float64; a Python float enters as float32)."""
    rate, src = int(spec.features.sample_rate), int(spec.shards_rate)
    return n_in if rate == src else dmath.ceil(n_in * rate / src)


def train_lengths(spec: GraphSpec, signal: Any) -> tuple[Any, Any]:
    """``(stored samples, feature-rate samples)`` of a CPU signal as int32 nodes (what the window
    arithmetic and ``fn.multi_paste``'s anchors use): :func:`feature_length` computed in int64
    (``ceil(n * out / in)`` exactly), then narrowed (a sample is far below 2**31 samples)."""
    rate, src = int(spec.features.sample_rate), int(spec.shards_rate)
    n_in = signal.shape()  # int64
    i32 = types.DALIDataType.INT32
    n_in32 = fn.cast(n_in, dtype=i32)
    return n_in32, n_in32 if rate == src else fn.cast((n_in * rate + (src - 1)) // src, dtype=i32)


def on_device(spec: GraphSpec, x: Any, border: str = "clamp", out_length: int | None = None) -> Any:
    """A CPU signal (or window) of stored samples -> float32 on ``spec.device`` at the feature
    rate, pre-emphasised (kaldi's ``y[0] = x[0] - c x[0]``: border "clamp"). ``out_length``:
    resample every sample to that many samples instead (speed perturbation: per-sample ratios)."""
    features = spec.features
    x = x.gpu() if spec.device == "gpu" else x
    if spec.codec == "pcm16":
        x = fn.cast(x, dtype=types.DALIDataType.FLOAT) * (1.0 / 32768.0)
    if out_length is not None:
        x = fn.audio_resample(x, out_length=out_length)
    elif spec.shards_rate != features.sample_rate:
        x = fn.audio_resample(x, in_rate=float(spec.shards_rate), out_rate=float(features.sample_rate))
    if features.preemphasis:
        x = fn.preemphasis_filter(x, preemph_coeff=features.preemphasis, border=border)
    return x


@dataclass(frozen=True)
class WindowPlan:
    """The K windows of each sample as CPU int32 vectors ``(K,)`` (:func:`window_plan`)."""

    first: Any  # first stored sample of each window
    stored: Any  # stored samples in each window (<= Windowing.span)
    offset: Any  # each chunk's offset in its resampled window row
    keep: Any  # chunk samples before the sample's end (<= L; the rest is zeros)
    width: Any = None  # speed perturbation: each sample's row width (int32 (1,)); None: Windowing.width


def window_plan(w: Windowing, starts: Any, n_in: Any, n: Any) -> WindowPlan:
    """The windows of chunks at ``starts`` (int32 ``(K,)``, feature rate) in a sample of ``n_in``
    stored / ``n`` feature-rate samples (int32, :func:`train_lengths`): :meth:`Windowing.window`,
    one vector chain whatever K."""
    if w.resampling:
        block = dmath.max((starts - w.lead) // w.out_period, 0)
        first, offset = block * w.period, starts - block * w.out_period
    else:
        first = dmath.max(starts - w.lead, 0)
        offset = starts - first
    stored = dmath.min(n_in - first, w.span)
    return WindowPlan(first=first, stored=stored, offset=offset, keep=dmath.min(n - starts, w.chunk))


def speed_plan(sw: SpeedWindowing, width: Any, starts: Any, n_in: Any) -> WindowPlan:
    """The windows of chunks at ``starts`` (int32 ``(K,)``, feature rate) in a sample of ``n_in``
    stored samples whose rows are ``width`` stored samples (float64 ``(1,)``, :func:`row_width`):
    :class:`SpeedWindowing`'s geometry as one vector chain (float64, int32 results)."""
    i32 = types.DALIDataType.INT32
    per_out = width / sw.out_width  # stored samples per output sample: the factor in effect x src / rate
    at = fn.cast(starts, dtype=types.DALIDataType.FLOAT64) * sw.constants()["per_start"]  # in stored samples
    first = dmath.max(dmath.floor(at) - sw.margin, 0)
    offset = dmath.floor((at - first) / per_out + 0.5)
    rest = n_in - first  # stored samples from the window's start to the sample's end
    keep = dmath.ceil(rest / per_out) - offset  # output samples before the sample's end
    return WindowPlan(
        first=fn.cast(first, dtype=i32),
        stored=fn.cast(dmath.min(rest, width - sw.margin), dtype=i32),  # the row ends in ``margin`` zeros
        offset=fn.cast(offset, dtype=i32),
        keep=fn.cast(dmath.clamp(keep, 0, sw.base.chunk), dtype=i32),
        width=fn.cast(width, dtype=i32),
    )


def apply_gain(spec: GraphSpec, rows: Any, draws: Any) -> Any:
    """Training chunks ``(K, L)`` on the device, each scaled by a gain of ``G (2 u - 1)`` dB
    (``augment.gain_db`` = G) from its draw u (float32 CPU ``(K,)`` in [0, 1))."""
    g = float(spec.augment.gain_db)
    scale = fn.reshape(dmath.pow(10.0, draws * (g / 10) - g / 20), shape=[-1, 1])  # 10^(dB / 20)
    return rows * (scale.gpu() if spec.device == "gpu" else scale)


def _int32(a: np.ndarray) -> Any:
    """An int32 CPU constant (``fn.multi_paste`` takes int32 anchors and shapes)."""
    return types.Constant(a.astype(np.int32), dtype=types.DALIDataType.INT32, device="cpu")


def _as_image(x: Any) -> Any:
    """A 1-D signal as a one-row ``HWC`` image (what ``fn.multi_paste`` cuts regions from)."""
    return fn.reshape(x, shape=[1, -1, 1], layout="HWC")


def cut_windows(spec: GraphSpec, stored: Any, n_in: Any, n: Any, starts: Any, width: Any = None) -> Any:
    """The training windows: the chunks at ``starts`` (int32 ``(K,)``, feature rate) of a sample
    of ``n_in`` stored / ``n`` feature-rate samples (int32), ``(K, L)`` float32 on the device, zeros past
    the sample's end. ``width``: the sample's speed factor as its rows' stored width (float64
    ``(1,)``, :func:`row_width`; None: no speed perturbation, rows as :class:`Windowing`, else
    :class:`SpeedWindowing`).
    The operator count does not depend on K:

    1. one ``multi_paste`` on the CPU cuts the K windows of stored samples (:class:`Windowing`)
       into the rows of a ``(K, width)`` canvas, zeros after each window;
    2. the canvas goes to the device as one signal: cast, resampled, pre-emphasised (border
       "zero": a row's first sample is then fixed to kaldi's clamp, ``x0 - c x0``); the zeros
       keep each row's resampling and pre-emphasis to its own window;
    3. one ``multi_paste`` on the device cuts each chunk from its row at its own offset."""
    k = spec.loader.chunks_per_track
    zeros, ones, rows = _int32(np.zeros(k)), _int32(np.ones(k)), _int32(np.arange(k))
    if width is None:
        w = windowing(spec)
        plan, size, out_width, out_length = window_plan(w, starts, n_in, n), [k, w.width], w.out_width, None
    else:
        sw = speed_windowing(spec)
        plan, out_width = speed_plan(sw, width, starts, n_in), sw.out_width
        size, out_length = fn.cat(_int32(np.array([k])), plan.width), k * out_width
    row_anchors = _int32(np.stack([np.arange(k), np.zeros(k)], axis=1))  # (k, 0): row k's start
    canvas = fn.multi_paste(
        *[_as_image(stored)] * k,  # the same sample K times: one region each
        in_anchors=fn.stack(zeros, plan.first, axis=1),
        shapes=fn.stack(ones, plan.stored, axis=1),
        out_anchors=row_anchors,
        output_size=size,
    )
    x = on_device(spec, fn.reshape(canvas, shape=[-1]), border="zero", out_length=out_length)
    x = fn.reshape(x, shape=[k, out_width, 1], layout="HWC")
    if spec.features.preemphasis:
        c = np.zeros((out_width, 1), np.float32)
        c[0, 0] = spec.features.preemphasis
        x = x - x * types.Constant(c, device=spec.device)
    chunks = fn.multi_paste(
        *[x] * k,
        in_anchors=fn.stack(rows, plan.offset, axis=1),
        shapes=fn.stack(ones, plan.keep, axis=1),
        out_anchors=row_anchors,
        output_size=[k, spec.framing.chunk],
    )
    return fn.reshape(chunks, shape=[k, spec.framing.chunk])
