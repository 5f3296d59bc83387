"""Configs of the pipeline stage: ``[features]``, ``[augment]`` and ``[loader]`` TOML sections.

One dataclass per section (see ``shards/configtools.py``): the feature config is stored in
every checkpoint, so the evaluator rebuilds exactly the features a model was trained on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Channel = Literal["mel", "mfcc", "chroma", "cqt"]
CHANNELS: tuple[Channel, ...] = ("mel", "mfcc", "chroma", "cqt")
Normalize = Literal["minmax", "meanstd", "none"]
TrackWeighting = Literal["uniform_time", "uniform_track"]
ImageColor = Literal["gray", "rgb"]


@dataclass(kw_only=True)
class FeatureConfig:
    """What one chunk's ``(C, F, T)`` feature image is made of (seed defaults)."""

    sample_rate: int = 22050
    """Hz the audio is brought to before anything else (resampled if the shards differ)."""
    n_fft: int = 2048
    """STFT size (and Hann window length) in samples."""
    hop_length: int = 512
    """STFT step in samples."""
    n_mels: int = 256
    """Mel bins; also the height F every other channel is resized to."""
    f_min: float = 0.0
    """Lowest mel filter edge in Hz."""
    f_max: float | None = None
    """Highest mel filter edge in Hz; None means sample_rate / 2."""
    db_floor: float = -100.0
    """dB value of silence: power is clamped at 10**(db_floor/10) before the log."""
    n_mfcc: int = 40
    """MFCC coefficients (DCT-II, orthonormal, of the dB mel spectrogram)."""
    n_chroma: int = 12
    """Chroma bins, from the power spectrum (filter bank applied in torch)."""
    cqt_bins: int = 84
    """Bins of the optional pseudo-CQT channel (12 per octave from cqt_fmin)."""
    cqt_fmin: float = 32.70
    """Lowest pseudo-CQT centre frequency in Hz (C1)."""
    channels: list[Channel] = field(default_factory=lambda: ["mel", "mfcc", "chroma"])
    """Channel stack, in order; each channel is resized (nearest) to n_mels rows."""
    normalize: Normalize = "minmax"
    """'minmax' per chunk and channel (seeds), 'meanstd' from stats_file, or 'none'."""
    stats_file: Path | None = None
    """Per-channel mean/std JSON for 'meanstd'; None means SHARDS/feature_stats.json."""
    image_frames: int | None = None
    """Image shards: width T every image is resized to (height F = n_mels); None = an audio chunk's frames."""
    image_color: ImageColor = "gray"
    """Image shards: decode each image as 'gray' (1 plane) or 'rgb' (3 planes per channel)."""

    def __post_init__(self) -> None:
        if self.sample_rate <= 0:
            raise ValueError(f"features.sample_rate: must be positive, got {self.sample_rate}")
        if self.n_fft < 16 or self.n_fft % 2:
            raise ValueError(f"features.n_fft: must be an even number >= 16, got {self.n_fft}")
        if not 0 < self.hop_length <= self.n_fft:
            raise ValueError(f"features.hop_length: must be in 1..n_fft, got {self.hop_length}")
        if self.n_mels <= 0:
            raise ValueError(f"features.n_mels: must be positive, got {self.n_mels}")
        top = self.sample_rate / 2
        if self.f_max is not None and not self.f_min < self.f_max <= top:
            raise ValueError(f"features.f_max: must be in (f_min, sample_rate/2 = {top}], got {self.f_max}")
        if not 0 < self.n_mfcc <= self.n_mels:
            raise ValueError(f"features.n_mfcc: must be in 1..n_mels, got {self.n_mfcc}")
        if self.n_chroma <= 0:
            raise ValueError(f"features.n_chroma: must be positive, got {self.n_chroma}")
        if self.cqt_bins <= 0 or self.cqt_fmin <= 0:
            raise ValueError("features.cqt_bins/cqt_fmin: must be positive")
        if not self.channels:
            raise ValueError("features.channels: at least one channel is needed")
        bad = [c for c in self.channels if c not in CHANNELS]
        if bad or len(set(self.channels)) != len(self.channels):
            raise ValueError(f"features.channels: {self.channels} must be distinct names from {CHANNELS}")
        if self.normalize not in ("minmax", "meanstd", "none"):
            raise ValueError(f"features.normalize: {self.normalize!r} is not minmax, meanstd or none")
        if self.image_frames is not None and self.image_frames < 2:
            raise ValueError(f"features.image_frames: must be >= 2 or None, got {self.image_frames}")
        if self.image_color not in ("gray", "rgb"):
            raise ValueError(f"features.image_color: {self.image_color!r} is not gray or rgb")
        if self.db_floor >= 0:
            raise ValueError(f"features.db_floor: must be negative, got {self.db_floor}")

    @property
    def mel_fmax(self) -> float:
        return self.f_max if self.f_max is not None else self.sample_rate / 2

    @property
    def n_freqs(self) -> int:
        return self.n_fft // 2 + 1

    @property
    def needs_power(self) -> bool:
        """Chroma and CQT come from the power spectrum, which DALI then has to hand over."""
        return "chroma" in self.channels or "cqt" in self.channels


@dataclass(kw_only=True)
class AugmentConfig:
    """SpecAugment: random frequency and time masks, training only."""

    enabled: bool = True
    """Apply masks in training mode (never in evaluation)."""
    freq_masks: int = 2
    """Frequency masks per chunk."""
    freq_width: int = 32
    """Maximum frequency mask height in rows of the F axis (width drawn in 0..freq_width)."""
    time_masks: int = 2
    """Time masks per chunk."""
    time_width: int = 40
    """Maximum time mask width in frames (width drawn in 0..time_width)."""
    time_crop: float = 0.9
    """Image shards, training: each crop keeps this fraction of the image width (random start), resized to T."""

    def __post_init__(self) -> None:
        for name in ("freq_masks", "freq_width", "time_masks", "time_width"):
            if getattr(self, name) < 0:
                raise ValueError(f"augment.{name}: must be >= 0, got {getattr(self, name)}")
        if not 0 < self.time_crop <= 1:
            raise ValueError(f"augment.time_crop: must be in (0, 1], got {self.time_crop}")

    @property
    def active(self) -> bool:
        return self.enabled and (self.freq_masks * self.freq_width + self.time_masks * self.time_width) > 0


@dataclass(kw_only=True)
class LoaderConfig:
    """How chunks are cut and batched, and the DALI pipeline's resources."""

    batch_size: int = 64
    """Training batch in chunks: batch_size // chunks_per_track tracks x chunks_per_track."""
    chunks_per_track: int = 4
    """K random chunks taken from each track per epoch in training."""
    chunk_seconds: float = 6.0
    """Chunk length in seconds (the model's input width)."""
    eval_tracks_per_batch: int = 16
    """Tracks per evaluation batch; every chunk of each is returned, so the batch varies."""
    num_threads: int = 4
    """DALI CPU worker threads."""
    shuffle: bool = True
    """Shuffle tracks in training (buffer of initial_fill samples)."""
    initial_fill: int = 256
    """Shuffle buffer size in tracks (shards are shuffled across tars when written)."""
    seed: int = 0
    """Base seed: shuffling, chunk offsets and masks are reproducible from it."""
    prefetch: int = 2
    """DALI prefetch queue depth (batches computed ahead)."""
    track_weighting: TrackWeighting = "uniform_time"
    """Training draws: 'uniform_time' = chunks in proportion to the audio (every second of the
    split equally likely, a track weighs its length), 'uniform_track' = chunks_per_track per
    track on average, whatever its length or segment count (see docs/pipeline.md)."""

    def __post_init__(self) -> None:
        if self.chunks_per_track <= 0:
            raise ValueError(f"loader.chunks_per_track: must be positive, got {self.chunks_per_track}")
        if self.batch_size < self.chunks_per_track or self.batch_size % self.chunks_per_track:
            raise ValueError(
                f"loader.batch_size: {self.batch_size} must be a positive multiple of "
                f"chunks_per_track ({self.chunks_per_track})"
            )
        if not self.chunk_seconds > 0:
            raise ValueError(f"loader.chunk_seconds: must be positive, got {self.chunk_seconds}")
        for name in ("eval_tracks_per_batch", "num_threads", "initial_fill", "prefetch"):
            if getattr(self, name) <= 0:
                raise ValueError(f"loader.{name}: must be positive, got {getattr(self, name)}")
        if self.seed < 0:
            raise ValueError(f"loader.seed: must be >= 0, got {self.seed}")
        if self.track_weighting not in ("uniform_time", "uniform_track"):
            raise ValueError(
                f"loader.track_weighting: {self.track_weighting!r} is not uniform_time or uniform_track"
            )

    @property
    def tracks_per_batch(self) -> int:
        return self.batch_size // self.chunks_per_track


@dataclass(frozen=True)
class Framing:
    """Sample/frame geometry of one chunk, shared by DALI, the reference and the baseline.

    DALI's spectrogram only takes 1-D signals, so chunks are laid out one per ``stride``
    samples (chunk, then zeros) and framed without centring: frame ``j*stride_frames + t``
    is then exactly frame ``t`` of chunk ``j`` under ``torch.stft(center=True,
    pad_mode='constant')``. ``stride`` is a multiple of the hop so chunk starts align.
    """

    chunk: int  # L: samples per chunk
    n_fft: int
    hop: int

    @property
    def frames(self) -> int:
        """T: frames per chunk (centred STFT)."""
        return 1 + self.chunk // self.hop

    @property
    def lead(self) -> int:
        return self.n_fft // 2

    @property
    def stride_frames(self) -> int:
        need = max(self.chunk + self.lead, (self.chunk // self.hop) * self.hop + self.n_fft)
        return math.ceil(need / self.hop)

    @property
    def stride(self) -> int:
        return self.stride_frames * self.hop


def framing(features: FeatureConfig, loader: LoaderConfig) -> Framing:
    return Framing(
        chunk=round(loader.chunk_seconds * features.sample_rate),
        n_fft=features.n_fft,
        hop=features.hop_length,
    )
