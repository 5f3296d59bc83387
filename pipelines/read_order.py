"""Which shards DALI's webdataset reader touches next in evaluation, from (epoch, batch) alone.

(Training reads the sample plan instead: ``pipelines.train_stream`` asks the shard cache for
each batch's shards itself.) DALI 2.4's reader (``dali/operators/reader/loader/loader.h``)
reads samples strictly in split order. Rank ``r`` of ``w`` reads its own range
``[start(r), start(r + 1))``, ``start(r) = N * r // w`` (``stick_to_shard=True``), wrapping
within it. It runs ahead of what the iterator has handed out by one sample plus the batches the
pipeline and the reader prefetch. :meth:`ReadOrder.window` turns that into the shards that must
be complete before the next batch is asked for, with a margin of two batches beyond what the
pipeline and the reader prefetch.
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
    prefetch: int  # pipeline prefetch queue depth

    @property
    def total(self) -> int:
        return sum(self.counts)

    def window(self, epoch: int, batch: int, *, restored: bool = False) -> tuple[list[int], list[int]]:
        """(tars the reader may read before the next call, the tars after them in reading order)
        when the iterator is about to hand out DALI batch ``batch`` (of any epoch: each one reads
        the same range); ``restored``: the reader was just rebuilt and may re-read from behind."""
        n_all, w, r = self.total, self.world_size, self.rank
        lo = start_index(r, w, n_all)
        n = start_index(r + 1, w, n_all) - lo
        back = 1 + self.batch if restored else 0
        ahead = 1 + self.batch * (self.prefetch + 3)
        pos = lo + (batch * self.batch - back) % n
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
