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
in training ``mask (K, R, 2)`` (the plan's SpecAugment draws), then ``lbl``, ``tid``, ``nchunks`` (chunks to keep), in
training ``start (K,)`` (chunk offsets in the sample) and ``src`` (the sample's build), and, for version-2 shards, ``seg``.
Training samples come from the sample plan (``pipelines.sample_plan``, an external source: the
order and every random number), evaluation's from DALI's webdataset reader.
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
from shards.format import AUDIO_EXT, MemberLayout

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
    plan: Any = field(default=None, compare=False)  # training: the sample plan's source (train_stream)

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
            names += ["start", "src"]
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
        enable_checkpointing=spec.mode == "eval",  # training's position is the plan's (train_stream)
        exec_dynamic=True,
    )  # type: ignore[call-overload]  # DALI stubs lack exec_dynamic
    def music_pipeline():  # type: ignore[no-untyped-def]
        return (graph or _graph)(spec)

    kwargs = {"checkpoint": checkpoint} if checkpoint is not None else {}
    return music_pipeline(**kwargs)  # type: ignore[no-any-return]


@dataclass
class SampleNodes:
    """A batch's samples as CPU nodes: media, ids and (training) the plan's draws."""

    media: list[Any]
    lbl: Any
    tid: Any
    seg: Any = None  # segmented audio builds
    u: Any = None  # training: chunk (crop) start fractions (K,) float64
    mask: Any = None  # training with SpecAugment: the draws (K, R, 2) float32
    speed: Any = None  # training with augment.speed: the sample's draw (1,) float64
    gain: Any = None  # training with augment.gain_db: the chunks' draws (K,) float32
    src: Any = None  # training: the sample's build (index into data.shards), int64 (1,)


def audio_dtype(codec: str) -> types.DALIDataType:
    """How the audio member reaches the graph: int16 samples (pcm16) or the file's bytes."""
    return types.DALIDataType.INT16 if codec == "pcm16" else types.DALIDataType.UINT8


def _read(spec: GraphSpec) -> SampleNodes:
    return read_samples(spec, [AUDIO_EXT[spec.codec]], [audio_dtype(spec.codec)])


def read_samples(spec: GraphSpec, media: list[str], dtypes: list[types.DALIDataType]) -> SampleNodes:
    """Training: the sample plan's batches (``spec.plan``, an external source: its order, its
    random numbers). Evaluation: DALI's webdataset reader of ``media`` members (ext alternatives
    as ``"a;b"``) and the ids members, each rank its contiguous range (``spec.members``: one
    ``ids`` member per sample from version 3 on, sliced here)."""
    if spec.mode == "train":
        return _plan_inputs(spec, dtypes)
    fixed = list(spec.members.members)
    nodes = _reader(spec, [*media, *fixed], [*dtypes, *[types.DALIDataType.INT64] * len(fixed)])
    fields = spec.members.split(nodes[len(media) :])
    return SampleNodes(
        nodes[: len(media)], fields["lbl"], fields["tid"], fields.get("seg") if spec.segmented else None
    )


def plan_outputs(spec: GraphSpec, media: list[types.DALIDataType]) -> list[tuple[str, types.DALIDataType]]:
    """The plan source's outputs per sample, in order (``pipelines.train_stream`` yields them):
    the media, ``lbl``, ``tid`` (, ``seg``), ``u``, then the draws the augmentation in use needs,
    then ``src``."""
    i64, f32, f64 = types.DALIDataType.INT64, types.DALIDataType.FLOAT, types.DALIDataType.FLOAT64
    out = [(f"media{j}", t) for j, t in enumerate(media)] + [("lbl", i64), ("tid", i64)]
    out += [("seg", i64)] * spec.segmented + [("u", f64)] + [("mask", f32)] * spec.augment.active
    wave = not spec.image_exts  # speed and gain act on the waveform (image builds warn)
    out += [("speed", f64)] * (wave and speed_range(spec) is not None) + [("gain", f32)] * (
        wave and spec.augment.gain_db > 0
    )
    return [*out, ("src", i64)]


def _plan_inputs(spec: GraphSpec, dtypes: list[types.DALIDataType]) -> SampleNodes:
    """One external source over the plan's batches (``pipelines.train_stream``)."""
    outputs = plan_outputs(spec, dtypes)
    nodes = fn.external_source(
        source=spec.plan, num_outputs=len(outputs), batch=True, cycle="raise", dtype=[t for _, t in outputs]
    )
    named = dict(zip((n for n, _ in outputs), nodes))  # type: ignore[arg-type]  # several outputs: a list
    media = [named[f"media{j}"] for j in range(len(dtypes))]
    fields = {k: named.get(k) for k in ("seg", "u", "mask", "speed", "gain", "src")}
    return SampleNodes(media, named["lbl"], named["tid"], **fields)


def _reader(spec: GraphSpec, ext: list[str], dtypes: list[types.DALIDataType]) -> list[Any]:
    """DALI's webdataset reader of ``ext`` (one output node each, in order): evaluation, each
    rank its contiguous range."""
    nodes = fn.readers.webdataset(
        paths=[str(p) for p in spec.tars],
        index_paths=[str(p) for p in spec.idxs],
        ext=ext,
        dtypes=dtypes,
        missing_component_behavior="error",
        shard_id=spec.rank,
        num_shards=spec.world_size,
        random_shuffle=False,
        pad_last_batch=True,
        stick_to_shard=True,
        # plain reads: the shard cache fills files in place, and a shard truncated mid-run is an
        # error instead of a SIGBUS (loader.mmap = false)
        dont_use_mmap=spec.plain_reads or not spec.loader.mmap,
        name=READER,
    )
    return list(nodes)  # type: ignore[arg-type]  # several ext: a list of nodes


def chunk_count(n, chunk: int):  # type: ignore[no-untyped-def]
    """Eval chunks of a track of ``n`` samples (float64 CPU node): ``max(ceil(n / chunk), 1)`` int64."""
    return fn.cast(dmath.max(dmath.ceil(n / int(chunk)), 1), dtype=types.DALIDataType.INT64)


def _train_rows(spec: GraphSpec, stored, n_in, n, u, speed):  # type: ignore[no-untyped-def]
    """The K chunks of a sample, ``(K, L)`` on the device (short samples are zero-padded), and
    their starts ``(K,)`` int32. Only the chunks' windows of stored samples leave the CPU
    (``pipelines.signal.cut_windows``), never the whole sample; ``n_in`` / ``n`` are the
    sample's int32 lengths (stored, feature rate: ``train_lengths``). Every step is one vector
    operator for the K. A chunk lies inside one sample (segment): its start is the plan's
    fraction ``u`` of the sample's ``max(n - L, 0)`` free positions (``n - ceil(L f)`` with speed
    perturbation: a chunk then covers ``L f`` samples, f the plan's per-sample draw ``speed``,
    ``pipelines.signal.row_width``)."""
    width = row_width(spec, speed) if speed is not None else None  # the speed factor
    room = dmath.max(n - chunk_extent(spec, width), 0)
    starts = fn.cast(dmath.floor(u * room), dtype=types.DALIDataType.INT32)
    return cut_windows(spec, stored, n_in, n, starts, width), starts


def _eval_rows(spec: GraphSpec, sig, n):  # type: ignore[no-untyped-def]
    """Consecutive chunks ``(n_max, L)``: tracks are zero-padded to the batch's longest,
    rounded up to whole chunks; ``nchunks`` says how many rows of each are real."""
    L = spec.framing.chunk
    padded = fn.pad(sig, axes=[0], align=[L], fill_value=0.0)
    return fn.reshape(padded, shape=[-1, L])


def _graph(spec: GraphSpec):  # type: ignore[no-untyped-def]
    features, framing = spec.features, spec.framing
    read = _read(spec)
    stored = source(spec, read.media[0])  # CPU, at the shards' rate
    starts = None
    if spec.mode == "train":
        rows, starts = _train_rows(spec, stored, *train_lengths(spec, stored), read.u, read.speed)
        if read.gain is not None:
            rows = apply_gain(spec, rows, read.gain)
        k = spec.loader.chunks_per_track
        nchunks = types.Constant(np.array([k], dtype=np.int64), device="cpu")
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
    if read.mask is not None:
        outs.append(read.mask)
    outs += [read.lbl, read.tid, nchunks]
    if starts is not None:
        outs += [starts, read.src]
    return (*outs, read.seg) if read.seg is not None else tuple(outs)


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
