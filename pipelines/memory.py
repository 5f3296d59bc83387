"""Device memory of one loader, bounded from the configs alone (docs/pipeline.md, "Device memory").

DALI's GPU operators materialise whole tensors per sample: the STFT keeps every window, its
complex spectrum and the power spectrogram of all the sample's frames. What bounds that is the
number of chunk slots a sample is laid out in: K in training, and in evaluation the chunks of
the split's longest *sample*, which is at most one segment (``segment_seconds``, 30 s) in a
segmented build, whatever the track length. :func:`memory_bound` adds the tensors up per
sample, per DALI iteration and over the iterations alive at once (the prefetch queue and the
batches the hand-off holds), plus the cuFFT work areas of DALI's STFT, the pools' granularity
and torch's side of a batch; ``build_loader`` refuses a config whose bound exceeds
``loader.device_memory_gb`` before any DALI work, and :func:`check_together` refuses a training and
a validation loader that fit alone but not together with the CUDA context (they coexist while
validating: the training pipeline keeps its pool).

DALI's pools never shrink on their own (its ``ReleaseUnusedMemory`` frees whole free blocks):
:func:`release_pool_memory` gives them back once a pipeline is shut down, so torch can use them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from nvidia.dali import backend as dali_backend

from pipelines.cqt import CqtParams, workspace_bytes
from pipelines.signal import row_widths

if TYPE_CHECKING:
    from pipelines.graph import GraphSpec

F32 = 4
C64 = 8  # complex64
GB = 1e9
MIB = 1 << 20
GRANULE = 2 * MIB  # an allocation's rounding in the pools (torch's large blocks: 2 MiB; DALI's alike)
CUDA_CONTEXT = 512 * MIB  # per process: the CUDA context, loaded kernels, cuBLAS/cuDNN/cuFFT handles
CUFFT_STREAMS = 4  # DALI's GPU STFT runs its cuFFT plans on up to 4 streams, one work area each
CUFFT_MAX_SIZE = 1 << 26  # DALI's largest plan: windows x n_fft <= 2^26 (stft_gpu_impl.cuh, kMaxSize)
DALI_BUFFERS = 14  # buffers of one iteration (audio steps, STFT, mel, dB): each rounded up
TORCH_BUFFERS = 9  # filter-bank channels, chunk temporaries, x and the previous x
CQT_BUFFERS = 20  # the CQT's temporaries alive at its peak (pipelines.cqt.workspace_bytes)


@dataclass(frozen=True)
class MemoryBound:
    """Bytes one loader may hold on its device at once (the bound, not a measurement)."""

    dali: int
    """DALI's pool: ``prefetch`` iterations with every intermediate, plus the outputs the
    hand-off holds (``prefetch`` consumed batches) and the one being converted, the cuFFT work
    areas and each buffer's rounding to ``GRANULE``."""
    torch: int
    """torch's allocator: one batch's filter-bank channels and chunk temporaries, its ``x`` and
    the previous batch's ``x`` (still held by the consumer while the next one is built)."""
    rows: int
    """Chunk slots per sample: K in training, the longest sample's chunks in evaluation."""
    cufft: int = 0
    """Of ``dali``: the STFT's cuFFT work areas (``cufft_work``)."""

    @property
    def total(self) -> int:
        return self.dali + self.torch


def memory_bound(spec: GraphSpec) -> MemoryBound:
    """The bound for ``spec`` (audio graphs): a function of the batch, the chunk and the split's
    longest sample (one segment in segmented builds), the STFT and mel sizes and the prefetch."""
    f, framing, loader = spec.features, spec.framing, spec.loader
    train = spec.mode == "train"
    B, K, L = spec.batch_size, loader.chunks_per_track, framing.chunk
    longest = -(-max(spec.longest_sample, 1) * f.sample_rate // spec.shards_rate)  # feature rate
    rows = K if train else max(1, -(-longest // L))
    frames = rows * framing.stride_frames  # STFT frames of one sample's layout
    n_freq = f.n_fft // 2 + 1
    stft = frames * (f.n_fft + 2 * n_freq + n_freq) * F32  # windows, complex spectrum, power
    mels = 2 * frames * f.n_mels * F32  # mel, dB
    if train:  # K window rows: stored (<= 4 B), float; resampled, pre-emphasised, fix-up (2); chunks, layout
        width, out_width = row_widths(spec)  # speed perturbation: its longest rows (augment.speed's hi)
        audio = K * (2 * width * F32 + 4 * out_width * F32)
        audio += (
            K * (L + framing.stride + (L if spec.augment.gain_db > 0 else 0)) * F32
        )  # (+ the gained chunks)
    else:  # the whole sample: stored, float, resampled, pre-emphasised, padded, laid out
        audio = 2 * spec.longest_sample * F32 + 2 * longest * F32 + rows * (L + framing.stride) * F32
    per_iteration = B * (audio + stft + mels)
    outputs = B * (frames * f.n_mels * F32 + (frames * n_freq * F32 if f.needs_power else 0))
    outputs += B * rows * L * F32 if f.needs_wave else 0  # the chunks' samples (the CQT's input)
    growth = dali_backend.GetDeviceBufferGrowthFactor()  # type: ignore[attr-defined]  # 1.1 in DALI 2.4
    # DALI over-allocates a growing buffer by its growth factor
    dali = round(growth * (loader.prefetch * per_iteration + (loader.prefetch + 1) * outputs))
    cufft = cufft_work(B * frames, f.n_fft)
    dali += cufft + (DALI_BUFFERS * loader.prefetch + 3 * (loader.prefetch + 1)) * GRANULE
    n_chunks = B * rows
    # mfcc, chroma (+ max), pseudo-cqt on whole frames; the constant-Q transform's temporaries
    # per chunk (its spectrum, levels and octave responses: about 20 buffers, each rounded)
    filter_banks = B * frames * (f.n_mfcc + 2 * f.n_chroma + f.cqt_bins) * F32
    if "cqt" in f.channels:
        filter_banks += B * rows * workspace_bytes(CqtParams.of(f), L) + CQT_BUFFERS * GRANULE
    chunk = n_chunks * f.n_mels * framing.frames * F32  # one channel's chunks at full height
    x = len(f.channels) * chunk  # the batch being built, and the previous one its consumer still holds
    # SpecAugment (training): the uint8 masks and their bool bands, made in torch from DALI's draws
    masks = 4 * n_chunks * f.n_mels * framing.frames if train and spec.augment.active else 0
    torch_side = filter_banks + 3 * chunk + 2 * x + masks + (TORCH_BUFFERS + (2 if masks else 0)) * GRANULE
    return MemoryBound(dali=dali, torch=torch_side, rows=rows, cufft=cufft)


def cufft_work(windows: int, n_fft: int) -> int:
    """Bytes of cuFFT work areas one STFT of ``windows`` frames may hold: DALI makes R2C plans of
    power-of-2 batches up to ``CUFFT_MAX_SIZE / n_fft`` windows, and gives each of its up to
    ``CUFFT_STREAMS`` streams a work area of the largest plan's size; a plan's work area is taken
    to be at most one complex output of its batch (an assumption: cuFFT does not document it;
    the gpu test compares the whole bound with DALI's measured peak). Transient (DALI's
    scratchpad, one operator run at a time): counted once, not per prefetched iteration."""
    plan = 1
    while plan * 2 <= min(windows, CUFFT_MAX_SIZE // n_fft):
        plan *= 2
    streams = min(CUFFT_STREAMS, -(-windows // plan))
    return streams * plan * (n_fft // 2 + 1) * C64


def budget_bytes(budget_gb: float | None, device: torch.device) -> float | None:
    """``loader.device_memory_gb`` in bytes; None: half the GPU's memory (the model needs the
    rest), no check for DALI's CPU pipeline."""
    if budget_gb is not None:
        return budget_gb * GB
    if device.type != "cuda":
        return None
    return torch.cuda.get_device_properties(device).total_memory / 2


def check_memory(spec: GraphSpec, split: str, where: object, device: torch.device) -> MemoryBound:
    """Refuse (ValueError, one line) a loader whose bound exceeds the budget."""
    bound = memory_bound(spec)
    budget = budget_bytes(spec.loader.device_memory_gb, device)
    if budget is not None and bound.total > budget:
        loader = spec.loader
        what = (
            f"{spec.batch_size} samples x {bound.rows} chunks (longest sample "
            f"{spec.longest_sample / spec.shards_rate:.0f} s)"
            if spec.mode == "eval"
            else f"{loader.tracks_per_batch} samples x {loader.chunks_per_track} chunks"
        )
        raise ValueError(
            f"{where}: split {split!r} ({spec.mode}) needs up to {bound.total / GB:.1f} GB of device memory per "
            f"rank ({what}, prefetch {loader.prefetch}; docs/pipeline.md 'Device memory'), over the "
            f"{budget / GB:.1f} GB budget (loader.device_memory_gb); lower the batch or the prefetch, "
            "or rebuild the shards with segments (segment_seconds)"
        )
    return bound


def check_together(loaders: list[object], where: object, device: torch.device) -> int | None:
    """Refuse (ValueError, one line) loaders that coexist on one device (training + validation:
    the training pipeline keeps its pool while validating) when their audio bounds, with the CUDA
    context, exceed the budget. Returns that total (None: no audio loader, or no budget)."""
    specs = [
        spec for lo in loaders if (spec := getattr(lo, "spec", None)) is not None and not spec.image_exts
    ]
    budget = budget_bytes(specs[0].loader.device_memory_gb, device) if specs else None
    if budget is None:
        return None
    parts = [(spec.mode, memory_bound(spec).total) for spec in specs]
    total = sum(n for _, n in parts) + CUDA_CONTEXT
    named = " + ".join(f"{mode} {n / GB:.2f}" for mode, n in parts)
    if total > budget:
        raise ValueError(
            f"{where}: the loaders of one rank need up to {total / GB:.1f} GB of device memory together "
            f"({named} GB + {CUDA_CONTEXT / GB:.2f} GB CUDA context; they coexist "
            f"while validating; docs/pipeline.md 'Device memory'), over the {budget / GB:.1f} GB budget "
            "(loader.device_memory_gb); lower the batches or the prefetch"
        )
    return total


def release_pool_memory(device: torch.device) -> None:
    """Free DALI's unused pooled blocks (device and pinned host) after a pipeline shut down."""
    if device.type == "cuda":
        dali_backend.ReleaseUnusedMemory()  # type: ignore[attr-defined]  # not in DALI's stubs
