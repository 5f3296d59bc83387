"""How big a record will be in a shard, from cheap header reads, before anything is decoded.

The plan decides shard boundaries up front (so any worker can build any shard on its own),
from these estimates: a header read (``soundfile.info``: frames and sample rate) gives the
track's length, hence its stored length after resampling, its segment count and, for pcm16,
its exact stored bytes; FLAC and OGG bytes are estimated with a fixed compression ratio;
images are stored unchanged, so their file sizes are exact. Header reads run in daemon
threads with a per-file timeout: a file on a stale network mount gets a zero estimate
(the shard task's decode timeout then rejects it) instead of stalling the plan.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf

from shards.base.progress import progress
from shards.records import Record

BLOCK = 512  # a tar member: one header block, then its data padded to whole blocks
CODEC_RATIO = {"pcm16": 1.0, "flac": 0.6, "ogg": 0.12}
"""Stored bytes per pcm16 byte (FLAC and OGG: typical music at the default settings)."""
META_BYTES = 1024  # a sample's .json member, typically 400-900 bytes


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


def resampled_length(frames: int, rate: int, target: int) -> int:
    """Samples soxr returns for ``frames`` at ``rate`` resampled to ``target`` (round half up)."""
    return frames if rate == target else (2 * frames * target + rate) // (2 * rate)


def estimate_audio(path: Path, layout: Layout) -> Estimate:
    """Estimate from the file's header; an unreadable header is a zero estimate (the decoder
    then rejects the file with its reason)."""
    try:
        info = sf.info(str(path))
    except Exception:  # missing, empty, not audio: the shard task says which
        return Estimate(0, 1)
    n = resampled_length(int(info.frames), int(info.samplerate), layout.sample_rate)
    seg = layout.segment_samples
    lengths = [min(seg, n - a) for a in range(0, n, seg)] or [0]
    small = (
        member_bytes(8 * layout.label_width) + member_bytes(8) + member_bytes(40) + member_bytes(META_BYTES)
    )
    ratio = CODEC_RATIO[layout.codec]
    total = sum(member_bytes(int(2 * k * ratio)) + small for k in lengths)
    return Estimate(total, len(lengths))


def estimate_images(images: dict[str, Path | bytes], layout: Layout) -> Estimate:
    """Images are stored unchanged: their sizes, plus the label, track id and .json members."""
    total = member_bytes(8 * layout.label_width) + member_bytes(8) + member_bytes(META_BYTES)
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
    records: list[Record], layout: Layout, *, threads: int, timeout: float, show: bool = False
) -> list[Estimate]:
    """``estimate_record`` for every record, in ``threads`` daemon threads; a read that takes
    longer than ``timeout`` seconds (0: no limit) is abandoned with a zero estimate."""
    pool = _HeaderReads(records, lambda r: estimate_record(r, layout), timeout)
    bar = progress(total=len(records), desc="plan: header reads", unit="file", enabled=show)
    try:
        return pool.run(max(1, threads), bar.update)
    finally:
        bar.close()


class _HeaderReads:
    """A tiny daemon-thread pool whose hung calls are abandoned, not waited for."""

    def __init__(self, items: list[Record], fn: Callable[[Record], Estimate], timeout: float) -> None:
        self.items, self.fn, self.timeout = items, fn, timeout
        self.results: list[Estimate | None] = [None] * len(items)
        self.started: dict[int, float] = {}
        self.next = 0
        self.finished = 0
        self.cond = threading.Condition()

    def _worker(self) -> None:
        while True:
            with self.cond:
                if self.next >= len(self.items):
                    return
                i = self.next
                self.next += 1
                self.started[i] = time.monotonic()
            est = self.fn(self.items[i])
            with self.cond:
                if self.started.pop(i, None) is not None:  # not abandoned meanwhile
                    self.results[i] = est
                    self.finished += 1
                self.cond.notify()

    def _spawn(self) -> None:
        threading.Thread(target=self._worker, daemon=True, name="header-read").start()

    def run(self, threads: int, tick: Callable[[int], object]) -> list[Estimate]:
        for _ in range(min(threads, len(self.items))):
            self._spawn()
        done = 0
        with self.cond:
            while done < len(self.items):
                self.cond.wait(0.5)
                now = time.monotonic()
                for i, t0 in list(self.started.items()):
                    if self.timeout and now - t0 > self.timeout:  # hung: abandon it, replace its thread
                        del self.started[i]
                        self.results[i] = Estimate(0, 1)
                        self.finished += 1
                        self._spawn()
                tick(self.finished - done)
                done = self.finished
        return [r for r in self.results if r is not None]
