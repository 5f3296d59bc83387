"""Which shards DALI's webdataset reader touches next, from (epoch, batch) alone.

DALI 2.4's reader (``dali/operators/reader/loader/loader.h``) reads samples strictly in split
order. Rank ``r`` of ``w`` starts at ``start(r) = N * r // w``; in training
(``stick_to_shard=False``) it moves on circularly through the whole split, epoch ``e`` starting
at ``start((r + e) % w)``; in evaluation (``stick_to_shard=True``) it wraps within its own range
``[start(r), start(r + 1))``. It runs ahead of what the iterator has handed out by its shuffle
buffer (``initial_fill`` samples, 1 without shuffling) plus the batches the pipeline and the
reader prefetch; after a checkpoint restore it re-reads up to a buffer's worth before the saved
position (nothing behind otherwise: what it has read sits in its buffer). :meth:`ReadOrder.window`
turns that into the shards that must be complete before the next batch is asked for, with a
margin of two batches beyond what the pipeline and the reader prefetch.
"""

from __future__ import annotations

import bisect
import itertools
from dataclasses import dataclass


def start_index(shard: int, shards: int, size: int) -> int:
    """DALI's ``start_index``: first sample of reader shard ``shard`` of ``shards``."""
    return size * shard // shards


@dataclass(frozen=True)
class ReadOrder:
    """One rank's reading order over a split's tars (``counts``: samples per tar, split order)."""

    counts: tuple[int, ...]
    rank: int
    world_size: int
    batch: int  # samples (tracks) per DALI batch
    fill: int  # the reader's shuffle buffer (1 without shuffling)
    prefetch: int  # pipeline prefetch queue depth
    train: bool  # train: circular over the split; eval: wraps within the rank's range

    @property
    def total(self) -> int:
        return sum(self.counts)

    def _range(self, epoch: int) -> tuple[int, int, int]:
        """(first position read this epoch, start of the circular span, span length)."""
        n, w, r = self.total, self.world_size, self.rank
        if self.train:
            return start_index((r + epoch) % w, w, n), 0, n
        a, b = start_index(r, w, n), start_index(r + 1, w, n)
        return a, a, b - a

    def window(self, epoch: int, batch: int, *, restored: bool = False) -> tuple[list[int], list[int]]:
        """(tars the reader may read before the next call, the tars after them in reading order)
        when the iterator is about to hand out DALI batch ``batch`` of ``epoch``; ``restored``:
        the reader was just rebuilt from a checkpoint and may re-read its buffer from behind."""
        first, lo, n = self._range(epoch)
        back = self.fill + self.batch if restored else 0
        ahead = self.fill + self.batch * (self.prefetch + 3)
        pos = lo + (first - lo + batch * self.batch - back) % n
        needed = self._tars(pos, back + ahead, lo, n)
        after = lo + (pos - lo + back + ahead) % n
        rest = [t for t in self._tars(after, n, lo, n) if t not in needed]
        return needed, rest

    def _tars(self, pos: int, length: int, lo: int, n: int) -> list[int]:
        """Tars holding positions ``pos, pos+1, ...`` (``length`` of them, circular in
        ``[lo, lo + n)``), in reading order, each once."""
        bounds = list(itertools.accumulate(self.counts))
        out: list[int] = []
        left = min(length, n)
        while left > 0:
            t = bisect.bisect_right(bounds, pos)
            end = min(bounds[t], lo + n)
            take = min(left, end - pos)
            if t not in out:
                out.append(t)
            left -= take
            pos += take
            if pos >= lo + n:
                pos = lo
        return out
