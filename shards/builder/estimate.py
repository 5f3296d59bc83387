"""How big a record will be in a shard, from cheap header reads, before anything is decoded.

The plan decides shard boundaries up front (so any worker can build any shard on its own),
from these estimates: a header read (``soundfile.info``: frames and sample rate) gives the
track's length, hence its stored length after resampling, its segment count and, for pcm16,
its exact stored bytes; FLAC and OGG bytes are estimated with a fixed compression ratio;
images are stored unchanged, so their file sizes are exact. Header reads run in the build's
worker processes with a per-file timeout: a file on a stale network mount gets a zero
estimate (the shard task's decode timeout then rejects it) instead of stalling the plan.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import soundfile as sf

from shards.base.progress import progress
from shards.builder.workers import DecodePool, Fault, run_pooled
from shards.format.members import written_layout
from shards.importers import reasons
from shards.importers.records import Record

BLOCK = 512  # a tar member: one header block, then its data padded to whole blocks
CODEC_RATIO = {"pcm16": 1.0, "flac": 0.6, "ogg": 0.12}
"""Stored bytes per pcm16 byte (FLAC and OGG: typical music at the default settings)."""
META_BYTES = 1024  # a sample's .json member, typically 400-900 bytes
HEADER_TIMEOUT_S = 60.0
"""A header read is milliseconds: one still running after this (or ``decode_timeout`` if
shorter) is a stalled read."""


@dataclass(frozen=True)
class Estimate:
    """A record's expected footprint in a shard."""

    bytes: int
    """Tar bytes of all its samples (members with their headers and padding)."""
    segments: int
    """Samples it becomes (segments of a long track; 1 for short tracks and images)."""


@dataclass(frozen=True)
class Layout:
    """What the estimate needs to know about the build."""

    sample_rate: int
    codec: str
    segment_samples: int
    label_width: int
    kind: str = "audio"


def member_bytes(size: int) -> int:
    """Bytes one tar member of ``size`` data bytes takes (header + data padded to 512)."""
    return BLOCK + -(-size // BLOCK) * BLOCK


def _fixed_bytes(layout: Layout) -> int:
    """Tar bytes of a sample's members besides its media: the ids (``shards.format.members``), the .json."""
    sizes = written_layout(layout.kind, layout.label_width).members.values()
    return sum(member_bytes(n) for n in sizes) + member_bytes(META_BYTES)


def resampled_length(frames: int, rate: int, target: int) -> int:
    """Samples soxr returns for ``frames`` at ``rate`` resampled to ``target`` (round half up)."""
    return frames if rate == target else (2 * frames * target + rate) // (2 * rate)


def estimate_audio(path: Path, layout: Layout) -> Estimate:
    """Estimate from the file's header; an unreadable header is a zero estimate (the decoder
    then rejects the file with its reason). A FIFO or other special file is never opened."""
    if reasons.file_fault(path):
        return Estimate(0, 1)
    try:
        info = sf.info(str(path))
    except Exception:  # missing, empty, not audio: the shard task says which
        return Estimate(0, 1)
    n = resampled_length(int(info.frames), int(info.samplerate), layout.sample_rate)
    seg = layout.segment_samples
    lengths = [min(seg, n - a) for a in range(0, n, seg)] or [0]
    small = _fixed_bytes(layout)
    ratio = CODEC_RATIO[layout.codec]
    total = sum(member_bytes(int(2 * k * ratio)) + small for k in lengths)
    return Estimate(total, len(lengths))


def estimate_images(images: dict[str, Path | bytes], layout: Layout) -> Estimate:
    """Images are stored unchanged: their sizes, plus the ids and .json members."""
    total = _fixed_bytes(layout)
    for src in images.values():
        try:
            size = len(src) if isinstance(src, bytes) else src.stat().st_size
        except OSError:
            size = 0
        total += member_bytes(size)
    return Estimate(total, 1)


def estimate_record(rec: Record, layout: Layout) -> Estimate:
    if layout.kind == "image":
        return estimate_images(rec.images, layout)
    if isinstance(rec.audio, bytes):
        return Estimate(member_bytes(len(rec.audio)), 1)
    assert rec.audio is not None, f"{rec.path}: an audio record without audio"
    return estimate_audio(rec.audio, layout)


def estimate_all(
    records: list[Record], layout: Layout, *, pool: DecodePool | None, timeout: float, show: bool = False
) -> list[Estimate]:
    """``estimate_record`` for every record: in ``pool``'s processes, where a read still running
    after ``timeout`` seconds (0: no limit) is killed and counts as a zero estimate (a hung open
    inside libsndfile would also hold soundfile's global lock, stalling every thread of this
    process); ``pool=None``: in this process (``--workers 1``)."""
    bar = progress(total=len(records), desc="plan: header reads", unit="file", enabled=show)
    out: list[Estimate] = []
    try:
        if pool is None:
            for rec in records:
                out.append(estimate_record(rec, layout))
                bar.update(1)
            return out
        for r in run_pooled(estimate_record, [(rec, layout) for rec in records], pool, timeout):
            out.append(Estimate(0, 1) if isinstance(r, Fault) else r)
            bar.update(1)
        return out
    finally:
        bar.close()
