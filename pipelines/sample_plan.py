"""One epoch's training samples as a function of (seed, epoch) and the data, never of the rank count.

An epoch is a sequence of **items**: (catalog row, visit). Every item yields the K chunks
``loader.chunks_per_track``; item i's random numbers (chunk start fractions, SpecAugment draws)
are :func:`uniform` of (seed, epoch, the sample's uid, visit, k): counter-based, so any rank
computes any item's draws without having seen the items before it.

Which items (:func:`epoch_items`): the catalog's rows fall into **strata**: one per build
(``data.shards``), or per (build, class) under ``loader.balance``. Each stratum gets its share
of the epoch's items (as many items as the split has samples), rounded by largest remainder,
so an epoch meets its shares exactly (to one item); inside a stratum the items are a
systematic sample of its rows weighted by ``loader.track_weighting`` (a row's weight: its
seconds for ``uniform_time``, its share of its track for ``uniform_track``), so every row is
visited ``floor`` or ``ceil`` of its expected count. No data is copied: a row drawn twice is
read twice.

In which order: shards are permuted per epoch and grouped into blocks of at least
``loader.initial_fill`` samples, and items are shuffled within a block, so the reader's
working set is one block of shards (the shard cache's window). Several builds are
interleaved by their items' fractional positions (an even mix all through the epoch).

Dealt how (:class:`Leg`): the epoch's positions not yet consumed are cut into ``world_size``
contiguous streams, one per rank, read in batches of ``tracks_per_batch``; each rank drops its
stream's tail of less than a batch (at most ``world_size x tracks_per_batch - 1`` items per
epoch). A resume on another rank count starts a new leg on exactly the positions the saved
leg had not consumed, so the rest of the epoch is the same items, none twice, none missed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

Balance = Literal["none", "class", "sqrt"]
START, MASK, ORDER, SYSTEMATIC, SHARDS, MIX, SPEED, GAIN = range(1, 9)
"""Streams of :func:`uniform`: one per kind of random number."""
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser (uint64 in, uint64 out; wraps by design)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def uniform(*keys: int | np.ndarray) -> np.ndarray:
    """float64 in [0, 1) from integer keys (broadcast): the same keys give the same number on
    any machine, rank or resume (a hash, not a stream)."""
    with np.errstate(over="ignore"):
        h = np.zeros((), np.uint64)
        for k in keys:
            h = _mix(h ^ (np.asarray(k).astype(np.uint64) + _GOLDEN))
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


@dataclass(frozen=True)
class Catalog:
    """The training samples of every build in the run, one row each, in build then split order."""

    source: np.ndarray  # int64: index into data.shards
    shard: np.ndarray  # int64: shard number across builds (build 0's shards first)
    uid: np.ndarray  # int64: unique across builds (the sample id, tagged with its build)
    stratum_class: np.ndarray  # int64: the class ``loader.balance`` balances (-1: none, its own group)
    weight: np.ndarray  # float64 > 0: the row's weight under loader.track_weighting
    seconds: np.ndarray  # float64: the row's audio (image builds: 1 per sample)
    shard_sizes: np.ndarray  # int64: samples per shard (index: shard number)

    def __len__(self) -> int:
        return len(self.source)


@dataclass(frozen=True)
class PlanConfig:
    """What the plan depends on besides the catalog."""

    seed: int
    shuffle: bool
    balance: Balance
    block: int  # samples per shuffle block (loader.initial_fill)
    shares: tuple[float, ...] | None = None  # per build (data.weights); None: by their audio


def _largest_remainder(total: int, shares: np.ndarray) -> np.ndarray:
    """Integers summing to ``total`` closest to ``total x shares`` (shares sum to 1)."""
    raw = total * shares / shares.sum()
    out = np.floor(raw).astype(np.int64)
    rest = np.argsort(-(raw - out), kind="stable")[: total - int(out.sum())]
    out[rest] += 1
    return out


def _strata(cat: Catalog, cfg: PlanConfig, alive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(stratum of every alive row, each stratum's share of the epoch)."""
    src, cls = cat.source[alive], cat.stratum_class[alive]
    n_src = int(cat.source.max()) + 1 if len(cat) else 1
    present = np.unique(src)
    src_w = np.zeros(n_src)
    if cfg.shares is not None:
        src_w[present] = np.asarray(cfg.shares, dtype=np.float64)[present]
    else:
        np.add.at(src_w, src, cat.seconds[alive])
    key = src if cfg.balance == "none" else src * (int(cls.max()) + 2) + (cls + 1)
    strata, inverse = np.unique(key, return_inverse=True)
    mass = np.zeros(len(strata))
    np.add.at(mass, inverse, cat.weight[alive])
    if cfg.balance == "sqrt":
        counts = np.bincount(inverse, minlength=len(strata)).astype(np.float64)
        mass = np.sqrt(counts)
    elif cfg.balance == "class":
        mass = np.ones(len(strata))
    stratum_src = src[np.unique(inverse, return_index=True)[1]]
    per_src = np.zeros(n_src)
    np.add.at(per_src, stratum_src, mass)
    return inverse, src_w[stratum_src] / src_w[present].sum() * mass / per_src[stratum_src]


def epoch_items(
    cat: Catalog, cfg: PlanConfig, epoch: int, excluded: frozenset[int] = frozenset()
) -> np.ndarray:
    """The epoch's items in reading order: ``(n, 2)`` int64 rows of (catalog row, visit); as many
    items as the catalog has samples outside the ``excluded`` shards."""
    alive_rows = np.flatnonzero(~np.isin(cat.shard, list(excluded)))
    if len(alive_rows) == 0:
        return np.zeros((0, 2), np.int64)
    alive = np.zeros(len(cat), bool)
    alive[alive_rows] = True
    stratum, shares = _strata(cat, cfg, alive)
    quota = _largest_remainder(len(alive_rows), shares)
    rows, visits = [], []
    for s in range(len(quota)):
        members = alive_rows[stratum == s]
        if cfg.shuffle:  # a fresh systematic sample every epoch
            members = members[
                np.argsort(uniform(cfg.seed, epoch, cat.uid[members], SYSTEMATIC), kind="stable")
            ]
        w = cat.weight[members]
        edges = np.concatenate([[0.0], np.cumsum(w) / w.sum() * quota[s]])
        u0 = float(uniform(cfg.seed, epoch, s, SYSTEMATIC)) if cfg.shuffle else 0.5
        counts = np.diff(np.floor(edges + u0)).astype(np.int64)
        counts[-1] += quota[s] - counts.sum()  # float rounding at the very end
        rows.append(np.repeat(members, counts))
        first = np.repeat(np.cumsum(counts) - counts, counts)  # each row's first item
        visits.append(np.arange(int(counts.sum())) - first)
    items = np.stack([np.concatenate(rows), np.concatenate(visits)], axis=1).astype(np.int64)
    return _order(cat, cfg, epoch, items)


def _order(cat: Catalog, cfg: PlanConfig, epoch: int, items: np.ndarray) -> np.ndarray:
    """Shard blocks shuffled per epoch, items shuffled within a block; builds interleaved evenly."""
    if not cfg.shuffle:
        return items[np.lexsort((items[:, 1], items[:, 0]))]
    n_shards = len(cat.shard_sizes)
    perm = np.argsort(uniform(cfg.seed, epoch, np.arange(n_shards), SHARDS), kind="stable")
    block_of = np.empty(n_shards, np.int64)
    block_of[perm] = np.cumsum(np.concatenate([[0], cat.shard_sizes[perm][:-1]])) // max(cfg.block, 1)
    row = items[:, 0]
    tie = uniform(cfg.seed, epoch, cat.uid[row], items[:, 1], ORDER)
    within = np.lexsort((tie, block_of[cat.shard[row]]))  # a build's items, in its reading order
    src = cat.source[row[within]]
    frac = np.empty(len(items))
    for s in np.unique(src):
        at = np.flatnonzero(src == s)
        frac[at] = (np.arange(len(at)) + uniform(cfg.seed, epoch, int(s), MIX)) / len(at)
    return items[within[np.lexsort((src, frac))]]


@dataclass(frozen=True)
class Leg:
    """A stretch of an epoch read by one rank count: the positions it had left when it began
    (``ranges``, in reading order), its ``world`` size and the batches each rank ``taken``."""

    ranges: tuple[tuple[int, int], ...]
    world: int
    taken: int = 0

    @classmethod
    def whole(cls, n: int, world: int) -> Leg:
        return cls(((0, n),), world)

    @property
    def left(self) -> int:
        """Positions the leg began with."""
        return sum(b - a for a, b in self.ranges)

    def batches(self, batch: int) -> int:
        """Batches every rank reads in this leg: its shortest stream in whole batches."""
        return (self.left // self.world) // batch

    def stream(self, rank: int) -> np.ndarray:
        """Rank ``rank``'s epoch positions in this leg (a contiguous cut of the leg's ranges)."""
        flat = np.concatenate([np.arange(a, b) for a, b in self.ranges]) if self.ranges else np.zeros(0)
        n = len(flat)
        return flat[rank * n // self.world : (rank + 1) * n // self.world].astype(np.int64)

    def rest(self, batch: int) -> tuple[tuple[int, int], ...]:
        """The positions no rank has consumed after ``taken`` batches, as ranges in reading order."""
        out: list[tuple[int, int]] = []
        for r in range(self.world):
            for p in self.stream(r)[self.taken * batch :].tolist():
                if out and out[-1][1] == p:
                    out[-1] = (out[-1][0], p + 1)
                else:
                    out.append((p, p + 1))
        return tuple(out)

    def regrouped(self, world: int, batch: int) -> Leg:
        """This leg resumed on ``world`` ranks: itself on the same count, else a new leg on its rest."""
        if world == self.world:
            return self
        return Leg(self.rest(batch), world)
