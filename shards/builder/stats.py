"""The typed state of a build: what one shard task reports (``ShardPart``) and the per-split
totals ``merge`` adds up from the parts (``SplitStats``), written as JSON under ``.build/``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shards.format.manifest import ImageChannel, ShardInfo, SplitInfo


@dataclass(kw_only=True)
class ImageStats:
    """One image channel: its member extensions (first seen first) and the image sizes seen."""

    exts: list[str]
    min_size: list[int]
    max_size: list[int]

    def add(self, member: str, hw: tuple[int, int] | list[int]) -> None:
        if member not in self.exts:
            self.exts.append(member)
        self.min_size = [min(self.min_size[0], hw[0]), min(self.min_size[1], hw[1])]
        self.max_size = [max(self.max_size[0], hw[0]), max(self.max_size[1], hw[1])]


@dataclass(kw_only=True)
class SplitStats:
    """Running totals of the samples written (one shard's, or a whole split's after merge)."""

    samples: int = 0
    tracks: int = 0
    seconds: float = 0.0
    min_seconds: float | None = None
    max_seconds: float | None = None
    max_segment: float = 0.0
    images: dict[str, ImageStats] = field(default_factory=dict)

    def add_track(self, seconds: float, samples: int, longest_segment: float) -> None:
        """One more track (of ``samples`` samples) written."""
        self.tracks += 1
        self.samples += samples
        self.seconds += seconds
        self.min_seconds = seconds if self.min_seconds is None else min(self.min_seconds, seconds)
        self.max_seconds = seconds if self.max_seconds is None else max(self.max_seconds, seconds)
        self.max_segment = max(self.max_segment, longest_segment)

    def add_images(self, members: list[str], sizes: dict[str, tuple[int, int]]) -> None:
        """One image sample (no audio: it counts as a track of 0 seconds)."""
        self.add_track(0.0, 1, 0.0)
        for member in members:
            ch = member.split(".", 1)[0]
            hw = sizes[ch]
            self.images.setdefault(ch, ImageStats(exts=[], min_size=list(hw), max_size=list(hw))).add(
                member, hw
            )

    def merge(self, other: SplitStats) -> None:
        """Add another shard's totals (shards are merged in plan order)."""
        self.min_seconds = _opt(min, self.min_seconds, other.min_seconds)
        self.max_seconds = _opt(max, self.max_seconds, other.max_seconds)
        self.samples += other.samples
        self.tracks += other.tracks
        self.seconds += other.seconds
        self.max_segment = max(self.max_segment, other.max_segment)
        for ch, t in other.images.items():
            mine = self.images.setdefault(
                ch, ImageStats(exts=[], min_size=list(t.min_size), max_size=list(t.max_size))
            )
            for ext in t.exts:
                mine.add(ext, t.min_size)
                mine.add(ext, t.max_size)

    def split_info(self, shards: list[ShardInfo], image: bool) -> SplitInfo:
        assert self.min_seconds is not None and self.max_seconds is not None
        return SplitInfo(
            num_samples=self.samples,
            num_tracks=self.tracks,
            seconds=round(self.seconds, 3),
            min_seconds=round(self.min_seconds, 4),
            max_seconds=round(self.max_seconds, 4),
            max_segment_seconds=None if image else round(self.max_segment, 4),
            shards=shards,
        )


def _opt(f: Any, a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else f(a, b)


def image_channels(stats: list[SplitStats], channels: list[str]) -> dict[str, ImageChannel]:
    """Each channel's member extensions (sorted) and the smallest/largest image over every split."""
    out: dict[str, ImageChannel] = {}
    for ch in channels:
        seen = [s.images[ch] for s in stats if ch in s.images]
        if not seen:
            continue
        exts = sorted({e for t in seen for e in t.exts})
        lo = [min(t.min_size[k] for t in seen) for k in (0, 1)]
        hi = [max(t.max_size[k] for t in seen) for k in (0, 1)]
        out[ch] = ImageChannel(exts=exts, min_size=lo, max_size=hi)
    return out


@dataclass(kw_only=True)
class ShardPart:
    """What one shard task reports: its shard (None when every record was rejected), the
    totals of what it wrote and one reject line per record it could not write."""

    split: str
    index: int
    fingerprint: str
    records: int
    """Records the plan gave it; ``stats.tracks + len(rejects)`` always equals this."""
    shard: ShardInfo | None = None
    stats: SplitStats = field(default_factory=SplitStats)
    rejects: list[dict[str, Any]] = field(default_factory=list)
    """``{"path", "reason", "key", "split"}`` in record order."""
    cut: str = ""
    """The plan's shard cut (``ShardContext.cut``) this part was built for."""
