"""The one DALI graph: read -> (train: K chunk windows) -> device -> resample -> STFT -> mel/dB (+ masks).

The same definition builds a ``gpu`` pipeline (production) and a ``cpu`` one
(``device_id=None``, CI). Anything used as an argument input (chunk offsets, SpecAugment
anchors and widths, track lengths) is computed on CPU nodes; the heavy signal work runs
on ``device``. The signal stays at the shards' rate on the CPU (the reader's int16, or
FLAC/OGG decoded at their native rate: the decoder is CPU-only); training moves only its
chunks' windows to the device, evaluation the whole sample (at most one segment); the cast,
resampling and pre-emphasis run there (``pipelines.signal``).

Chunks are laid out one per ``Framing.stride`` samples and framed once (DALI's
spectrogram takes only 1-D input), which equals a centred, zero-padded STFT of each
chunk. Outputs per sample (a track or a segment), F_all = frames of the whole layout, all
frame-major (``"tf"``, DALI's native spectrogram layout: its ``"ft"`` layout costs a
transpose of the whole power spectrogram, half of the CPU graph's time):
``mel (F_all, n_mels)`` in dB, optionally ``power (F_all, n_fft/2+1)`` (chroma, pseudo-CQT)
and ``wave (rows, L)`` (the chunks' samples, as the STFT framed them: the CQT),
in training ``mask (K, R, 2)`` (the SpecAugment draws: ``mask_draws``), then ``lbl``, ``tid``, ``nchunks`` (chunks to keep), in
training ``start (K,)`` (chunk offsets in the sample) and, for version-2 shards, ``seg``.
A sample is a track or one segment of a long track (docs/shard-format.md). The MFCC
(an orthonormal DCT-II, i.e. one small matrix) is applied in torch with the other filter
banks: DALI's CPU ``fn.mfcc`` costs as much as the mel filter bank and the dB together.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from nvidia.dali import fn, pipeline_def, types
from nvidia.dali import math as dmath
from nvidia.dali.pipeline import Pipeline

from pipelines.config import AugmentConfig, FeatureConfig, Framing, LoaderConfig
from pipelines.signal import (
    apply_gain,
    chunk_extent,
    cut_windows,
    feature_length,
    length_of,
    on_device,
    row_width,
    source,
    speed_range,
    train_lengths,
)
from shards.format import AUDIO_EXT, SEGMENT_FIELDS, MemberLayout

READER = "reader"
Mode = Literal["train", "eval"]


@dataclass(kw_only=True)
class GraphSpec:
    """Everything the graph depends on; equal specs build identical (checkpoint-compatible) pipelines."""

    tars: Sequence[str | Path]  # local paths, or s3:// URLs (loader.remote = "direct")
    idxs: Sequence[str | Path]
    codec: str
    shards_rate: int
    features: FeatureConfig
    augment: AugmentConfig
    loader: LoaderConfig
    framing: Framing
    mode: Mode
    device: Literal["gpu", "cpu"]
    rank: int
    world_size: int
    members: MemberLayout  # the samples' ids members (manifest version, task, kind: shards.format.members)
    device_id: int | None = None  # CUDA device for device="gpu"; None = the current one
    segment_samples: int | None = None  # samples per full segment at shards_rate (None: whole tracks)
    longest_sample: int = 0  # samples of the split's longest sample at shards_rate (uniform_time)
    image_exts: list[str] = field(default_factory=list)  # image builds: per channel, "mel.jpg;mel.png"
    plain_reads: bool = False  # open tars without mmap: the shard cache fills them in place (remote.py)

    @property
    def segmented(self) -> bool:
        """Samples carry segment fields (``seg``): audio builds from manifest version 2 on."""
        return self.members.segmented

    @property
    def batch_size(self) -> int:
        """Tracks per DALI batch."""
        return self.loader.tracks_per_batch if self.mode == "train" else self.loader.eval_tracks_per_batch

    @property
    def output_names(self) -> list[str]:
        names = ["mel"]
        if self.features.needs_power:
            names.append("power")
        if self.features.needs_wave:
            names.append("wave")
        if self.mode == "train" and self.augment.active:
            names.append("mask")
        names += ["lbl", "tid", "nchunks"]
        if self.mode == "train":
            names.append("start")
        return [*names, "seg"] if self.segmented else names


def build_pipeline(
    spec: GraphSpec, checkpoint: str | None = None, graph: Callable[[GraphSpec], Any] | None = None
) -> Pipeline:
    """Build (not yet run) the DALI pipeline for ``spec``; ``checkpoint`` restores a reader position.
    ``graph`` defines the nodes (default: the audio graph; the image branch passes its own)."""
    pipe = define_pipeline(spec, checkpoint, graph)
    pipe.build()
    return pipe


def define_pipeline(
    spec: GraphSpec, checkpoint: str | None = None, graph: Callable[[GraphSpec], Any] | None = None
) -> Pipeline:
    """The DALI pipeline for ``spec``, defined but not built (its operators: ``pipelines.bench``'s
    ``--graph-ops`` counts them without CUDA, given an explicit ``spec.device_id``)."""
    device_id = None
    if spec.device == "gpu":
        device_id = spec.device_id if spec.device_id is not None else torch.cuda.current_device()
    seed = spec.loader.seed * 1000 + spec.rank + 1

    @pipeline_def(
        batch_size=spec.batch_size,
        num_threads=spec.loader.num_threads,
        device_id=device_id,
        seed=seed,
        prefetch_queue_depth=spec.loader.prefetch,
        enable_checkpointing=True,
        exec_dynamic=True,
    )  # type: ignore[call-overload]  # DALI stubs lack exec_dynamic
    def music_pipeline():  # type: ignore[no-untyped-def]
        return (graph or _graph)(spec)

    kwargs = {"checkpoint": checkpoint} if checkpoint is not None else {}
    return music_pipeline(**kwargs)  # type: ignore[no-any-return]


def _read(spec: GraphSpec):  # type: ignore[no-untyped-def]
    audio_dtype = types.DALIDataType.INT16 if spec.codec == "pcm16" else types.DALIDataType.UINT8
    return webdataset_reader(spec, [AUDIO_EXT[spec.codec]], [audio_dtype])


def webdataset_reader(spec: GraphSpec, media: list[str], dtypes: list[types.DALIDataType]) -> list[Any]:
    """The webdataset reader's nodes: ``media`` members (ext alternatives as ``"a;b"``) then
    ``lbl``, ``tid`` (and ``seg`` for segmented shards), CPU int64 nodes whichever members hold
    them (``spec.members``: one ``ids`` member per sample from version 3 on, sliced here; DALI
    reads each member with its own request, so fewer members is fewer requests on ``s3://``).
    Shuffled and moving across shards in training; each rank's contiguous range in evaluation."""
    fixed = list(spec.members.members)
    nodes = _reader(spec, [*media, *fixed], [*dtypes, *[types.DALIDataType.INT64] * len(fixed)])
    fields = spec.members.split(nodes[len(media) :])
    return [*nodes[: len(media)], fields["lbl"], fields["tid"], *([fields["seg"]] if spec.segmented else [])]


def _reader(spec: GraphSpec, ext: list[str], dtypes: list[types.DALIDataType]) -> list[Any]:
    """DALI's webdataset reader of ``ext`` (one output node each, in order)."""
    train = spec.mode == "train"
    nodes = fn.readers.webdataset(
        paths=[str(p) for p in spec.tars],
        index_paths=[str(p) for p in spec.idxs],
        ext=ext,
        dtypes=dtypes,
        missing_component_behavior="error",
        shard_id=spec.rank,
        num_shards=spec.world_size,
        random_shuffle=train and spec.loader.shuffle,
        initial_fill=spec.loader.initial_fill,
        pad_last_batch=True,
        stick_to_shard=not train,
        # plain reads: the shard cache fills files in place, and a shard truncated mid-run is an
        # error instead of a SIGBUS (loader.mmap = false)
        dont_use_mmap=spec.plain_reads or not spec.loader.mmap,
        name=READER,
    )
    return list(nodes)  # type: ignore[arg-type]  # several ext: a list of nodes


def chunk_count(n, chunk: int):  # type: ignore[no-untyped-def]
    """Eval chunks of a track of ``n`` samples (float64 CPU node): ``max(ceil(n / chunk), 1)`` int64."""
    return fn.cast(dmath.max(dmath.ceil(n / int(chunk)), 1), dtype=types.DALIDataType.INT64)


def _train_rows(spec: GraphSpec, stored, n_in, n, seg):  # type: ignore[no-untyped-def]
    """K random chunks per sample, ``(K, L)`` on the device (short samples are zero-padded),
    their starts ``(K,)`` int32, and how many of them the loader keeps (``count``, see
    ``_keep_weight``). Only the chunks' windows of stored samples leave the CPU
    (``pipelines.signal.cut_windows``), never the whole sample; ``n_in`` / ``n`` are the
    sample's int32 lengths (stored, feature rate: ``train_lengths``). Every step is one vector operator for the K.

    A chunk lies inside one sample (segment): its start is uniform over the sample's
    ``max(n - L, 1)`` positions (``n - ceil(L f)`` with speed perturbation: a chunk then covers
    ``L f`` samples, f drawn once per sample, ``pipelines.signal.row_width``). Each of the K is
    kept with the probability ``_keep_weight`` gives (the ``loader.track_weighting``), so segment
    lengths never over-weight a track."""
    k = spec.loader.chunks_per_track
    u = fn.random.uniform(range=[0.0, 1.0], shape=[k], dtype=types.DALIDataType.FLOAT64)
    width = row_width(spec, speed_draws(spec)) if speed_range(spec) else None  # the speed factor
    room = dmath.max(n - chunk_extent(spec, width), 0)
    starts = fn.cast(dmath.floor(u * room), dtype=types.DALIDataType.INT32)
    weight = _keep_weight(spec, n, seg)
    if isinstance(weight, float):  # whole tracks, uniform_track: all K kept, no per-sample draw
        count = types.Constant(np.array([k], dtype=np.int64), device="cpu")
    else:
        keep = fn.random.uniform(range=[0.0, 1.0], shape=[k]) < weight
        count = fn.reductions.sum(fn.cast(keep, dtype=types.DALIDataType.INT64))
    return cut_windows(spec, stored, n_in, n, starts, width), starts, count


def _keep_weight(spec: GraphSpec, n, seg):  # type: ignore[no-untyped-def]
    """Probability (<= 1, float64) of keeping each drawn chunk of a sample of ``n`` samples
    (int32, at the feature rate).

    uniform_time: ``n / (longest sample of the split)``: every sample yields K chunks per
    longest-sample's worth of audio, so each second of the split is as likely to be drawn
    as any other (averaged over its sample). uniform_track: ``segment / track`` length:
    each track yields K chunks on average, spread over its segments by their length (a
    whole-track sample keeps all K: the pre-segment behaviour)."""
    if spec.loader.track_weighting == "uniform_time":
        rate, src = int(spec.features.sample_rate), int(spec.shards_rate)
        longest = max(-(-spec.longest_sample * rate // src), 1)  # at the feature rate, as ``n`` is
        return dmath.min(fn.cast(n, dtype=types.DALIDataType.FLOAT64) / longest, 1)
    if seg is None or spec.segment_samples is None:
        return 1.0  # whole tracks: keep all K (``_train_rows`` then skips the draw)
    i = SEGMENT_FIELDS.index
    start = fn.cast(seg[i("start")], dtype=types.DALIDataType.FLOAT64)
    total = fn.cast(seg[i("track_samples")], dtype=types.DALIDataType.FLOAT64)
    return dmath.min(total - start, int(spec.segment_samples)) / total  # shard-rate samples


def _eval_rows(spec: GraphSpec, sig, n):  # type: ignore[no-untyped-def]
    """Consecutive chunks ``(n_max, L)``: tracks are zero-padded to the batch's longest,
    rounded up to whole chunks; ``nchunks`` says how many rows of each are real."""
    L = spec.framing.chunk
    padded = fn.pad(sig, axes=[0], align=[L], fill_value=0.0)
    return fn.reshape(padded, shape=[-1, L])


def mask_draws(a: AugmentConfig, k: int):  # type: ignore[no-untyped-def]
    """The random numbers of the SpecAugment masks of a sample's K chunks (or image crops):
    ``(K, R, 2)`` float32 uniform in [0, 1), R = ``freq_masks + time_masks`` bands, each a
    (width, start) pair. One operator, drawn from the pipeline's seeded RNG (reproducible,
    checkpointed); ``pipelines.feature_stack.masks_from_draws`` turns them into masks on the device.
    Shared by the audio and the image graph."""
    return fn.random.uniform(range=[0.0, 1.0], shape=[k, a.freq_masks + a.time_masks, 2])


def speed_draws(spec: GraphSpec):  # type: ignore[no-untyped-def]
    """A sample's speed-perturbation draw: float64 ``(1,)`` uniform in [0, 1) (its K chunks share
    it; ``pipelines.signal.row_width`` maps it into ``augment.speed``)."""
    return fn.random.uniform(range=[0.0, 1.0], shape=[1], dtype=types.DALIDataType.FLOAT64)


def gain_draws(spec: GraphSpec):  # type: ignore[no-untyped-def]
    """The gain draws of a sample's K chunks: float32 ``(K,)`` uniform in [0, 1)
    (``pipelines.signal.apply_gain`` maps them to +-``augment.gain_db`` dB)."""
    return fn.random.uniform(range=[0.0, 1.0], shape=[spec.loader.chunks_per_track])


def _graph(spec: GraphSpec):  # type: ignore[no-untyped-def]
    features, framing = spec.features, spec.framing
    members = _read(spec)
    audio, lbl, tid = members[:3]
    seg = members[3] if spec.segmented else None
    stored = source(spec, audio)  # CPU, at the shards' rate
    starts = None
    if spec.mode == "train":
        rows, starts, nchunks = _train_rows(spec, stored, *train_lengths(spec, stored), seg)
        if spec.augment.gain_db > 0:
            rows = apply_gain(spec, rows, gain_draws(spec))
    else:  # the whole sample (at most one segment) to the device
        n = feature_length(spec, length_of(stored))
        rows = _eval_rows(spec, on_device(spec, stored), n)
        nchunks = chunk_count(n, framing.chunk)
    laid = fn.slice(rows, start=[-framing.lead], shape=[framing.stride], axes=[1], out_of_bounds_policy="pad")
    flat = fn.reshape(laid, shape=[-1])
    power, mel_db = spectra(features, flat)
    outs = [mel_db]
    if features.needs_power:
        outs.append(power)
    if features.needs_wave:  # the chunks themselves: the CQT is computed from them in torch
        outs.append(rows)
    if spec.mode == "train" and spec.augment.active:
        outs.append(mask_draws(spec.augment, spec.loader.chunks_per_track))
    outs += [lbl, tid, nchunks]
    if starts is not None:
        outs.append(starts)
    return (*outs, seg) if seg is not None else tuple(outs)


def spectra(features: FeatureConfig, flat):  # type: ignore[no-untyped-def]
    """A 1-D signal node (frames start every hop: pad it by the window's half to centre them)
    -> its power spectrogram ``(frames, n_fft/2+1)`` and dB mel ``(frames, n_mels)``, frame-major.
    Shared by the loader's graph and the whole-file features (``pipelines.whole_file``)."""
    window = torch.hann_window(features.window, periodic=True, dtype=torch.float64).tolist()
    power = fn.spectrogram(
        flat,
        nfft=features.n_fft,
        window_length=features.window,
        window_step=features.hop_length,
        window_fn=window,
        center_windows=False,
        power=2,
        layout="tf",
    )
    mel = fn.mel_filter_bank(
        power,
        sample_rate=float(features.sample_rate),
        nfilter=features.n_mels,
        freq_low=features.f_min,
        freq_high=features.mel_fmax,
        normalize=features.mel_norm,
        mel_formula=features.mel_formula,
    )
    mel_db = fn.to_decibels(mel, multiplier=10.0, reference=1.0, cutoff_db=features.db_floor)
    return power, mel_db
