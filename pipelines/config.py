"""Configs of the pipeline stage: ``[features]``, ``[augment]`` and ``[loader]`` TOML sections.

One dataclass per section (see ``shards/base/config.py``): the feature config is stored in
every checkpoint, so the evaluator rebuilds exactly the features a model was trained on.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from pipelines.channels import channel_names, get_channel
from pipelines.cqt import CqtParams, check_params
from pipelines.feature_presets import FEATURE_PRESETS

Normalize = Literal["minmax", "meanstd", "none"]
MelFormula = Literal["slaney", "htk"]

TrackWeighting = Literal["uniform_time", "uniform_track"]
Balance = Literal["none", "class", "sqrt"]
OnBadShard = Literal["stop", "skip"]
ShardVerify = Literal["none", "first_open"]
ImageColor = Literal["gray", "rgb"]


@dataclass(kw_only=True)
class FeatureConfig:
    """What one chunk's ``(C, F, T)`` feature image is made of (seed defaults)."""

    preset: str | None = None
    """Named settings (``FEATURE_PRESETS``: ast_audioset) filling every field left at its default."""
    sample_rate: int = 22050
    """Hz the audio is brought to before anything else (resampled if the shards differ)."""
    n_fft: int = 2048
    """STFT size in samples (also the Hann window length unless win_length is set)."""
    win_length: int | None = None
    """Hann window length in samples, zero-padded to n_fft (kaldi/AST: 400 in a 512-point FFT); None = n_fft."""
    hop_length: int = 512
    """STFT step in samples."""
    n_mels: int = 256
    """Mel bins; also the height F every other channel is resized to."""
    f_min: float = 0.0
    """Lowest mel filter edge in Hz."""
    f_max: float | None = None
    """Highest mel filter edge in Hz; None means sample_rate / 2."""
    mel_formula: MelFormula = "slaney"
    """Mel scale of the filter bank: slaney (seeds, librosa's default) or htk (kaldi, AST)."""
    mel_norm: bool = True
    """Slaney area normalisation of each mel filter (false: triangles of height 1, as kaldi)."""
    preemphasis: float = 0.0
    """Pre-emphasis y[t] = x[t] - c x[t-1] of the signal before the STFT (kaldi/AST: 0.97; 0 = off)."""
    db_floor: float = -100.0
    """dB value of silence: power is clamped at 10**(db_floor/10) before the log."""
    n_mfcc: int = 40
    """MFCC coefficients (DCT-II, orthonormal, of the dB mel spectrogram)."""
    n_chroma: int = 12
    """Chroma bins, from the power spectrum (filter bank applied in torch)."""
    cqt_bins: int = 84
    """Bins of the cqt channel (a constant-Q transform, librosa's) and of pseudo_cqt, from cqt_fmin."""
    cqt_fmin: float = 32.70
    """Lowest CQT centre frequency in Hz (C1)."""
    cqt_bins_per_octave: int = 12
    """CQT bins per octave (pseudo_cqt: always 12)."""
    cqt_filter_scale: float = 1.0
    """CQT filter length factor (librosa's filter_scale): Q = filter_scale / relative bandwidth."""
    channels: list[str] = field(default_factory=lambda: ["mel", "mfcc", "chroma"])
    """Channel stack, in order: names from the channel registry (built in: mel, mfcc, chroma,
    cqt, pseudo_cqt; see ``pipelines.channels``); each channel is resized (nearest) to n_mels rows."""
    normalize: Normalize = "minmax"
    """'minmax' per chunk and channel (seeds), 'meanstd' from stats_file, or 'none'."""
    stats_file: Path | None = None
    """Per-channel mean/std JSON for 'meanstd'; None means SHARDS/feature_stats.json."""
    norm_mean: list[float] | None = None
    """Fixed per-channel means for 'meanstd' (a pretrained model's, e.g. AST's) instead of stats_file."""
    norm_std: list[float] | None = None
    """Fixed per-channel standard deviations, with norm_mean."""
    image_frames: int | None = None
    """Image shards: width T every image is resized to (height F = n_mels); None = an audio chunk's frames."""
    image_color: ImageColor = "gray"
    """Image shards: decode each image as 'gray' (1 plane) or 'rgb' (3 planes per channel)."""

    def __post_init__(self) -> None:
        if self.preset is not None:
            self._apply_preset()
        if self.sample_rate <= 0:
            raise ValueError(f"features.sample_rate: must be positive, got {self.sample_rate}")
        if self.n_fft < 16 or self.n_fft % 2:
            raise ValueError(f"features.n_fft: must be an even number >= 16, got {self.n_fft}")
        if self.win_length is not None and not (
            16 <= self.win_length <= self.n_fft and self.win_length % 2 == 0
        ):
            raise ValueError(
                f"features.win_length: must be an even number in 16..n_fft, got {self.win_length}"
            )
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
        if min(self.cqt_bins, self.cqt_fmin, self.cqt_bins_per_octave, self.cqt_filter_scale) <= 0:
            raise ValueError(
                "features.cqt_bins/cqt_fmin/cqt_bins_per_octave/cqt_filter_scale: must be positive"
            )
        if not self.channels:
            raise ValueError("features.channels: at least one channel is needed")
        known = channel_names()
        bad = [c for c in self.channels if c not in known]
        if bad or len(set(self.channels)) != len(self.channels):
            raise ValueError(f"features.channels: {self.channels} must be distinct names from {known}")
        if "cqt" in self.channels and self.image_frames is None:  # an image build's cqt is a picture
            check_params(CqtParams.of(self))
        if self.normalize not in ("minmax", "meanstd", "none"):
            raise ValueError(f"features.normalize: {self.normalize!r} is not minmax, meanstd or none")
        if self.image_frames is not None and self.image_frames < 2:
            raise ValueError(f"features.image_frames: must be >= 2 or None, got {self.image_frames}")
        if self.image_color not in ("gray", "rgb"):
            raise ValueError(f"features.image_color: {self.image_color!r} is not gray or rgb")
        if self.db_floor >= 0:
            raise ValueError(f"features.db_floor: must be negative, got {self.db_floor}")
        if self.mel_formula not in ("slaney", "htk"):
            raise ValueError(f"features.mel_formula: {self.mel_formula!r} is not slaney or htk")
        if not 0.0 <= self.preemphasis < 1.0:
            raise ValueError(f"features.preemphasis: must be in [0, 1), got {self.preemphasis}")
        if (self.norm_mean is None) != (self.norm_std is None):
            raise ValueError("features.norm_mean/norm_std: give both or neither")
        if self.norm_mean is not None and self.norm_std is not None:
            n = len(self.channels)
            if len(self.norm_mean) != n or len(self.norm_std) != n or min(self.norm_std) <= 0:
                raise ValueError(
                    f"features.norm_mean/norm_std: need {n} values each (one per channel), stds > 0"
                )
            if self.normalize != "meanstd":
                raise ValueError("features.norm_mean/norm_std: only used with normalize = 'meanstd'")

    def _apply_preset(self) -> None:
        """Fill the preset's values into every field still at its default (explicit settings win)."""
        if self.preset not in FEATURE_PRESETS:
            raise ValueError(f"features.preset: {self.preset!r} is not one of {sorted(FEATURE_PRESETS)}")
        for f in fields(self):
            if f.name in FEATURE_PRESETS[self.preset]:
                default = f.default_factory() if f.default_factory is not MISSING else f.default
                if getattr(self, f.name) == default:
                    value = FEATURE_PRESETS[self.preset][f.name]
                    setattr(self, f.name, list(value) if isinstance(value, list) else value)

    @property
    def mel_fmax(self) -> float:
        return self.f_max if self.f_max is not None else self.sample_rate / 2

    @property
    def window(self) -> int:
        """Samples per STFT frame (the window length)."""
        return self.win_length or self.n_fft

    @property
    def n_freqs(self) -> int:
        return self.n_fft // 2 + 1

    @property
    def needs_power(self) -> bool:
        """Some channel (chroma, CQT) is computed from the power spectrum, which DALI then hands over."""
        return any(get_channel(c).needs == "power" for c in self.channels)

    @property
    def needs_wave(self) -> bool:
        """Some channel (the CQT) is computed from the chunks' samples, which DALI then hands over."""
        return any(get_channel(c).needs == "wave" for c in self.channels)


def stored_features(section: dict[str, Any]) -> dict[str, Any]:
    """A ``[features]`` section an audio checkpoint stored, in today's names: before the true
    CQT (issue 32) the ``cqt`` channel was the filter bank now called ``pseudo_cqt``, and those
    configs have no ``cqt_bins_per_octave``; the model must get the features it was trained on."""
    channels = section.get("channels") or []
    if "cqt" in channels and "cqt_bins_per_octave" not in section:
        return {**section, "channels": ["pseudo_cqt" if c == "cqt" else c for c in channels]}
    return section


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
    speed: list[float] = field(default_factory=lambda: [1.0, 1.0])
    """Audio, training: speed perturbation [lo, hi] (0 < lo <= hi): one factor per track sample,
    uniform in [lo, hi], shared by its K chunks; a chunk covers chunk x factor seconds resampled to
    the chunk (pitch and tempo move together, as NeMo's speed perturbation). [1, 1] = off."""
    gain_db: float = 0.0
    """Audio, training: a gain uniform in +-gain_db dB per chunk on the waveform before the STFT
    (0 = off)."""
    mixup_alpha: float = 0.0
    """Training: mixup of each batch's inputs and targets on the device (train.mixup), one
    lam ~ Beta(alpha, alpha) per batch; 0 = off."""

    def __post_init__(self) -> None:
        for name in ("freq_masks", "freq_width", "time_masks", "time_width"):
            if getattr(self, name) < 0:
                raise ValueError(f"augment.{name}: must be >= 0, got {getattr(self, name)}")
        if not 0 < self.time_crop <= 1:
            raise ValueError(f"augment.time_crop: must be in (0, 1], got {self.time_crop}")
        if len(self.speed) != 2 or not 0 < self.speed[0] <= self.speed[1]:
            raise ValueError(f"augment.speed: must be [lo, hi] with 0 < lo <= hi, got {self.speed}")
        if not self.gain_db >= 0:
            raise ValueError(f"augment.gain_db: must be >= 0, got {self.gain_db}")
        if not 0 <= self.mixup_alpha < float("inf"):  # NaN and inf refused too
            raise ValueError(f"augment.mixup_alpha: must be >= 0 (0 = off), got {self.mixup_alpha}")

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
    """Shuffle the training samples every epoch (blocks of shards, samples within a block)."""
    initial_fill: int = 256
    """Samples per shuffle block: each epoch the shards are permuted and grouped into blocks of at
    least this many samples, shuffled within (the reader's working set: a block of shards)."""
    seed: int = 0
    """Base seed: the epoch plan (order, chunk offsets, masks) is a function of it, the epoch and the data."""
    balance: Balance = "none"
    """Training chunks per class: 'none' (as the data has them), 'class' (an equal share per
    class), 'sqrt' (a share proportional to the square root of the class's sample count); met
    per epoch by a stratified plan (docs/training.md). Multi-label: a sample's rarest tag."""
    balance_level: int = -1
    """Hierarchical tasks: the level ``balance`` balances (0 = coarsest, -1 = finest)."""
    on_bad_shard: OnBadShard = "stop"
    """A training shard that fails its check (loader.verify=first_open, or the shard cache's
    sha256): 'stop' the run with one line, or 'skip' it (dropped from the plan on every rank
    from the next epoch on; its samples in the current batch are replaced; the run's log names it)."""
    trace: str | None = None
    """Folder for a per-rank trace of the training chunks (DIR/rank{r}.jsonl: epoch, step, tid,
    start seconds, labels, source); none: off."""
    prefetch: int = 2
    """DALI prefetch queue depth (batches computed ahead)."""
    track_weighting: TrackWeighting = "uniform_time"
    """Training draws: 'uniform_time' = chunks in proportion to the audio (every second of the
    split equally likely, a track weighs its length), 'uniform_track' = chunks_per_track per
    track on average, whatever its length or segment count (see docs/pipeline.md)."""
    verify: ShardVerify = "none"
    """'first_open': check each shard's sha256 against the manifest the first time this process
    reads it (training: every shard of the split; evaluation: this rank's range) and stop with
    one line naming a bad one; costs one read of those shards per process. 'none': sizes only."""
    mmap: bool = True
    """DALI maps shard files into memory (its fast path: the reader alone moves ~2x the bytes of
    plain reads, docs/benchmarks.md). A shard truncated while a run reads it then kills the
    process with SIGBUS ("Bus error"); false: plain reads, and such a shard stops the run with
    one line naming it and the step, after a checkpoint (for shards on shared or network storage)."""
    device_memory_gb: float | None = None
    """Budget per rank for the loaders' buffers (the bound in docs/pipeline.md, "Device memory"):
    an audio loader whose bound exceeds it is refused before any DALI work, and so are a training
    and a validation loader that exceed it together with the CUDA context. None: half the GPU's
    memory when DALI runs on the GPU, no check for DALI's CPU pipeline."""

    remote: Literal["cache", "direct"] = "cache"
    """Shards in object storage (``s3://``): 'cache' fetches whole shards ahead of the reader into
    ``cache_dir`` (one request per shard) and DALI reads local files; 'direct' lets DALI read each
    sample's members from the store (one ranged GET per member: only for stores where requests are
    cheap)."""
    cache_dir: str | None = None
    """Local folder of the whole-shard cache (each rank its own subfolder); None: the
    MUSICSTREAM_CACHE environment variable, else ~/.cache/musicstream/shards."""
    cache_gb: float = 50.0
    """Size bound of one rank's cache in GB: shards the reader has passed are evicted beyond it."""
    cache_workers: int = 4
    """Shards downloaded in parallel per rank."""
    cache_ahead: int = 8
    """Shards fetched ahead of the reader's position (more than the parallel downloads: the
    window that streams while the step trains)."""
    cache_stall_s: float = 300.0
    """Seconds a shard's download may deliver no byte while the reader waits for it; then the
    run stops with one line naming the shard (after a checkpoint, in one process)."""

    def __post_init__(self) -> None:
        if self.remote not in ("cache", "direct"):
            raise ValueError(f"loader.remote: {self.remote!r} is not 'cache' or 'direct'")
        if not self.cache_gb > 0:
            raise ValueError(f"loader.cache_gb: must be positive, got {self.cache_gb}")
        if not self.cache_stall_s > 0:
            raise ValueError(f"loader.cache_stall_s: must be positive, got {self.cache_stall_s}")
        for name in ("cache_workers", "cache_ahead"):
            if getattr(self, name) <= 0:
                raise ValueError(f"loader.{name}: must be positive, got {getattr(self, name)}")
        if not 0 < self.chunks_per_track <= 64:  # DALI's multi_paste takes at most 64 inputs (signal.py)
            raise ValueError(f"loader.chunks_per_track: must be 1..64, got {self.chunks_per_track}")
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
        if self.verify not in ("none", "first_open"):
            raise ValueError(f"loader.verify: {self.verify!r} is not none or first_open")
        if self.device_memory_gb is not None and not self.device_memory_gb > 0:
            raise ValueError(
                f"loader.device_memory_gb: must be positive or none, got {self.device_memory_gb}"
            )
        if self.balance not in ("none", "class", "sqrt"):
            raise ValueError(f"loader.balance: {self.balance!r} is not none, class or sqrt")
        if self.on_bad_shard not in ("stop", "skip"):
            raise ValueError(f"loader.on_bad_shard: {self.on_bad_shard!r} is not stop or skip")
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
    window: int  # samples per STFT frame (features.window)
    hop: int

    @property
    def frames(self) -> int:
        """T: frames per chunk (centred STFT)."""
        return 1 + self.chunk // self.hop

    @property
    def lead(self) -> int:
        return self.window // 2

    @property
    def stride_frames(self) -> int:
        need = max(self.chunk + self.lead, (self.chunk // self.hop) * self.hop + self.window)
        return math.ceil(need / self.hop)

    @property
    def stride(self) -> int:
        return self.stride_frames * self.hop


def framing(features: FeatureConfig, loader: LoaderConfig) -> Framing:
    return Framing(
        chunk=round(loader.chunk_seconds * features.sample_rate),
        window=features.window,
        hop=features.hop_length,
    )
