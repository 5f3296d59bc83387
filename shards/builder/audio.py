"""Decode -> mono -> band-limited resample -> encode, for one record (runs in worker processes).

Kept free of builder state so a process pool can call it with plain arguments. Every
failure becomes a reason string (never an exception), so one broken MP3 becomes a
line in rejects.jsonl instead of a crashed build.

Decoding streams: ``READ_SAMPLES`` samples at a time are read, mixed down and resampled
(soxr's stream gives the same samples as its one-shot call), and each segment is encoded as
soon as it is complete, so a worker's float memory follows the segment length, not the
track's (a small FLAC of silence can expand 4,000x). What stays is the encoded track itself
(pcm16: 2 bytes a sample at the stored rate), bounded by ``max_seconds``, which is checked
from the header (frames / rate) before anything is decoded.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from shards.base.errors import first_line
from shards.builder.ogg_pages import with_serial
from shards.importers import reasons

SOXR_QUALITY = "HQ"  # soxr's high-quality band-limited resampler
WRITE_BLOCK = 1 << 16  # frames per libsndfile write call (see write_blocks)
SOUNDFILE_FORMATS = {"flac": ("FLAC", "PCM_16"), "ogg": ("OGG", "VORBIS")}
READ_SAMPLES = 1 << 20  # samples (frames x channels) decoded at once: 4 MB of float32


@dataclass(frozen=True)
class AudioSpec:
    """What the builder wants out of every record's audio."""

    sample_rate: int
    codec: str
    min_seconds: float
    segment_samples: int | None = None
    """Cut tracks longer than this into consecutive segments of this many samples (None: whole)."""
    max_seconds: float = 0.0
    """Reject inputs whose header says they are longer (0: no limit)."""


@dataclass
class Encoded:
    """A decoded-and-re-encoded track: one audio member per segment plus facts for the .json."""

    segments: list[bytes]
    """Consecutive segments of the track, each a complete audio member; they concatenate to the track."""
    samples: int
    """Track length in samples at the spec's rate."""
    seconds: float
    orig_sample_rate: int
    orig_channels: int


class NoAudio(Exception):
    """libsndfile found no audio stream at all (it cannot even open the data as audio)."""


def decode(audio: Path | bytes) -> tuple[np.ndarray, int]:
    """Any soundfile-readable file/bytes -> (float32 (n, channels), sample rate).

    Opening and reading fail differently: a file libsndfile cannot open holds no audio
    it recognises (``NoAudio``); a read error after a good open is a damaged stream."""
    src = io.BytesIO(audio) if isinstance(audio, bytes) else str(audio)
    try:
        f = sf.SoundFile(src)
    except sf.LibsndfileError as e:
        raise NoAudio(str(e)) from None
    with f:
        x = f.read(dtype="float32", always_2d=True)
        return x, int(f.samplerate)


def downmix(x: np.ndarray) -> np.ndarray:
    """``(n, channels)`` float32 -> ``(n,)``: the channels' average."""
    ch = x.shape[1]
    y = x[:, 0].copy()
    if ch > 1:  # column sums: ~10x faster than x.mean(axis=1), numpy's strided reduction
        for c in range(1, ch):
            y += x[:, c]
        y *= np.float32(1.0 / ch)
    return y


def to_mono(x: np.ndarray, sr: int, target: int) -> np.ndarray:
    """Average the channels, then resample with soxr (band-limited) to ``target`` Hz."""
    y = downmix(x)
    if sr != target:
        y = soxr.resample(y, sr, target, quality=SOXR_QUALITY)
    return np.ascontiguousarray(y, dtype=np.float32)


def encode(y: np.ndarray, sr: int, codec: str) -> bytes:
    """Mono float32 -> the stored member: raw little-endian int16 (pcm16), FLAC or OGG Vorbis bytes."""
    if codec == "pcm16":
        z = y * np.float32(32767.0)
        np.clip(z, -32767.0, 32767.0, out=z)
        return np.rint(z, out=z).astype("<i2").tobytes()
    if codec not in SOUNDFILE_FORMATS:
        raise ValueError(f"codec: {codec!r} is not pcm16, flac or ogg")
    buf = io.BytesIO()
    write_blocks(buf, y, sr, *SOUNDFILE_FORMATS[codec])
    # libsndfile draws each Ogg stream's serial from the clock: fix it, so bytes are reproducible
    return with_serial(buf.getvalue()) if codec == "ogg" else buf.getvalue()


def write_blocks(dest: str | Path | io.BytesIO, data: np.ndarray, sr: int, fmt: str, subtype: str) -> None:
    """Write audio ``(n,)`` or ``(n, channels)`` in calls of ``WRITE_BLOCK`` frames.

    Why: libvorbis allocates its analysis buffer on the stack (``alloca`` of the frames given
    in one call, vorbis/lib/block.c), so one ``sf.write`` of a long track as OGG Vorbis
    overflows the stack and segfaults (300 s at 8 kHz does here; libsndfile issue #1095,
    python-soundfile #396/#426); the same data written in blocks encodes fine.
    """
    channels = 1 if data.ndim == 1 else int(data.shape[1])
    with sf.SoundFile(dest, "w", sr, channels, format=fmt, subtype=subtype) as f:
        for i in range(0, max(len(data), 1), WRITE_BLOCK):
            f.write(data[i : i + WRITE_BLOCK])


def segment_bounds(n: int, segment: int | None) -> list[tuple[int, int]]:
    """``[start, end)`` of consecutive segments covering ``n`` samples: full segments of
    ``segment`` samples, then the rest; a track of at most ``segment`` samples is one segment."""
    if segment is None or n <= segment:
        return [(0, n)]
    return [(a, min(a + segment, n)) for a in range(0, n, segment)]


def too_long(seconds: float, limit: float) -> str:
    """The reject reason of an input longer than ``max_seconds``."""
    return (
        f"too long: {seconds:.0f} s > max_seconds {limit:g} (from its header; raise --max-seconds to keep it)"
    )


class _Segmenter:
    """Resampled mono blocks in, encoded segments out as each one completes."""

    def __init__(self, sr: int, spec: AudioSpec) -> None:
        self.spec = spec
        self.stream = (
            None
            if sr == spec.sample_rate
            else soxr.ResampleStream(sr, spec.sample_rate, 1, dtype="float32", quality=SOXR_QUALITY)
        )
        self.segments: list[bytes] = []
        self.samples, self.finite = 0, True
        self.held: list[np.ndarray] = []  # resampled samples not in a segment yet
        self.size = 0

    def add(self, y: np.ndarray, last: bool = False) -> None:
        if self.stream is not None:
            y = self.stream.resample_chunk(y, last=last)
        self.finite = self.finite and bool(np.isfinite(y).all())  # a NaN/inf survives the downmix
        self.samples += len(y)
        self.held.append(np.ascontiguousarray(y, dtype=np.float32))
        self.size += len(y)
        seg = self.spec.segment_samples
        while seg and self.size >= seg and (self.size > seg or not last):
            self._emit(seg)
        if last and (self.size or not self.segments):
            self._emit(self.size)

    def _emit(self, n: int) -> None:
        y = np.concatenate(self.held) if len(self.held) != 1 else self.held[0]
        self.segments.append(encode(y[:n], self.spec.sample_rate, self.spec.codec))
        self.held, self.size = [y[n:]], len(y) - n


def transcode(audio: Path | bytes, spec: AudioSpec) -> Encoded | str:
    """The whole per-record job; returns ``Encoded`` or a one-line reject reason."""
    fault = reasons.file_fault(audio)
    if fault:
        return fault
    try:
        f = sf.SoundFile(io.BytesIO(audio) if isinstance(audio, bytes) else str(audio))
    except sf.LibsndfileError:
        return reasons.not_audio(audio)
    with f:
        sr, channels = int(f.samplerate), int(f.channels)
        if sr > 0 and spec.max_seconds and f.frames / sr > spec.max_seconds:
            return too_long(f.frames / sr, spec.max_seconds)
        try:
            frames, out = _stream(f, sr, channels, spec)
        except Exception as e:  # libsndfile raises several types for a stream damaged mid-way
            return f"decode failed: {first_line(e)}"
    if frames == 0 or sr <= 0:
        return reasons.no_audio_frames(reasons.size_of(audio))
    if frames / sr < spec.min_seconds:
        return reasons.too_short(frames / sr, spec.min_seconds)
    if out.samples == 0:  # a few samples downsampled to none (possible with min_seconds=0)
        return f"too short: no samples left at {spec.sample_rate} Hz"
    if not out.finite:
        return "decode failed: non-finite samples"
    return Encoded(out.segments, out.samples, out.samples / spec.sample_rate, sr, channels)


def _stream(f: sf.SoundFile, sr: int, channels: int, spec: AudioSpec) -> tuple[int, _Segmenter]:
    """Read ``f`` in blocks through a ``_Segmenter``; (frames read, the segmenter)."""
    out = _Segmenter(max(sr, 1), spec)
    frames = 0
    block = max(1, READ_SAMPLES // max(channels, 1))
    while True:
        x = f.read(block, dtype="float32", always_2d=True)
        frames += len(x)
        last = len(x) < block
        if sr > 0:
            out.add(downmix(x), last=last)
        if last:
            return frames, out
