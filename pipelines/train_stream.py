"""A training loader's rank of the epoch plan: its batches as DALI's external source reads
them, its position, the shards it skips, and its trace.

The DALI graph reads training samples from :meth:`TrainStream.__iter__` (one generator per
epoch: DALI re-iterates it after each epoch's end, and the generator reads the position when
its first batch is asked for, so a rebuilt pipeline starts where the loader's batches stopped).
Each batch carries, per sample: its media, ``lbl``, ``tid`` (, ``seg``), the chunk start
fractions ``u (K,)``, the SpecAugment draws ``(K, R, 2)`` when masks are on, and its build
``src``: every random number comes from the plan, none from DALI's generators.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipelines.catalog import Samples
from pipelines.media_reader import MediaReader
from pipelines.sample_plan import GAIN, MASK, SPEED, START, Leg, PlanConfig, epoch_items, uniform
from pipelines.shard_cache import CorruptShard
from shards.format import BadShard

STATE_VERSION = 3
"""The loader state's layout (``graph`` in the saved state; 1-2: DALI reader checkpoints)."""


@dataclass
class StreamShape:
    """What a batch holds: ``batch`` samples of K chunks, R SpecAugment bands (0: no masks)."""

    batch: int
    k: int
    bands: int
    media: int  # media outputs (1 audio member, or one image per channel)
    image: bool
    multi: bool  # multi-label: a chunk's labels are its positive tags
    outputs: list[str] = field(default_factory=list)  # the graph's order (pipelines.graph.plan_outputs)


@dataclass
class TrainStream:
    samples: Samples
    plan: PlanConfig
    reader: MediaReader
    shape: StreamShape
    rank: int
    world: int
    skip_bad: bool = False  # loader.on_bad_shard = "skip"
    trace: Path | None = None  # loader.trace: DIR/rank{r}.jsonl
    epoch: int = 0
    excluded: set[int] = field(default_factory=set)  # shards dropped from the plan (agreed by all ranks)
    found_bad: set[int] = field(default_factory=set)  # found this epoch, dropped from the next one on
    leg: Leg = field(init=False)
    consumed: int = 0  # batches this rank yielded in the current leg (the leg's ``taken`` included)
    _items: tuple[tuple[int, frozenset[int]], np.ndarray] | None = None
    _stream: tuple[Leg, np.ndarray] | None = None

    def __post_init__(self) -> None:
        self.leg = Leg.whole(len(self.items()), self.world)

    # -------------------------------------------------------------- the plan
    def items(self) -> np.ndarray:
        """This epoch's items ``(n, 2)`` (row, visit), in reading order (cached per epoch)."""
        key = (self.epoch, frozenset(self.excluded))
        if self._items is None or self._items[0] != key:
            self._items = (key, epoch_items(self.samples.catalog, self.plan, self.epoch, key[1]))
        return self._items[1]

    def __len__(self) -> int:
        """Batches of this epoch as this rank count counts them: the global batches before this
        leg (rounded) plus the leg's own."""
        before = len(self.items()) - self.leg.left
        return round(before / (self.world * self.shape.batch)) + self.leg.batches(self.shape.batch)

    @property
    def done(self) -> int:
        """Batches of this epoch behind the position (the trainer's ``batch_in_epoch``)."""
        return len(self) - self.leg.batches(self.shape.batch) + self.consumed

    def next_epoch(self) -> None:
        """Move to the next epoch; shards any rank found bad are dropped from it on every rank."""
        self.excluded |= _agree(self.found_bad, self.world)
        self.found_bad.clear()
        self.epoch += 1
        self.leg = Leg.whole(len(self.items()), self.world)
        self.consumed = 0

    def exclude(self, shard: int) -> None:
        """Drop a shard found bad before the run's first batch (every rank found it: no agreement)."""
        warnings.warn(f"loader.on_bad_shard=skip: {self.samples.shard_names[shard]} failed its check; "
                      "it is left out of the plan", stacklevel=2)  # fmt: skip
        self.excluded.add(shard)
        self.leg, self.consumed = Leg.whole(len(self.items()), self.world), 0

    def restart(self, epoch: int) -> None:
        """Start ``epoch`` from its beginning (a saved position of another layout or plan)."""
        self.epoch = epoch
        self.leg, self.consumed = Leg.whole(len(self.items()), self.world), 0

    def skipped(self) -> list[str]:
        return [self.samples.shard_names[s] for s in sorted(self.excluded | self.found_bad)]

    # -------------------------------------------------------------- DALI's source
    def __iter__(self) -> Iterator[list[list[np.ndarray]]]:
        return self._batches()

    def _batches(self) -> Iterator[list[list[np.ndarray]]]:
        start = self.consumed  # read when DALI asks for the first batch (not when it re-iterates)
        for j in range(start, self.leg.batches(self.shape.batch)):
            yield self._batch(j)

    def warm(self) -> None:
        """Fetch the next batch's shards before a pipeline is built over the plan (a build in
        object storage: a shard that cannot be had stops here, before any DALI work)."""
        j = self.consumed
        if j < self.leg.batches(self.shape.batch):
            self._readable(self._rows(j), [])

    def _positions(self, j: int) -> np.ndarray:
        """Epoch positions of this rank's batch ``j`` in the leg (its stream, cached per leg)."""
        if self._stream is None or self._stream[0] is not self.leg:
            self._stream = (self.leg, self.leg.stream(self.rank))
        b = self.shape.batch
        return self._stream[1][j * b : (j + 1) * b]

    def _rows(self, j: int) -> np.ndarray:
        return self.items()[self._positions(j)]

    def _batch(self, j: int) -> list[list[np.ndarray]]:
        items = self._rows(j)
        s = self.samples
        ahead = [self._rows(i) for i in range(j + 1, min(j + 4, self.leg.batches(self.shape.batch)))]
        upcoming = [int(s.catalog.shard[r]) for a in ahead for r in a[:, 0]]
        upcoming = [u for u in upcoming if u not in self.found_bad]  # never fetched again
        items = self._readable(items, upcoming)
        rows, visits = items[:, 0], items[:, 1]
        members = [
            (int(s.catalog.shard[r]), int(s.offsets[r, m]), int(s.sizes[r, m]))
            for r in rows
            for m in range(self.shape.media)
        ]
        data = self.reader.read_batch(members)
        media = [
            [
                self._decode(int(s.catalog.shard[r]), data[i * self.shape.media + m])
                for i, r in enumerate(rows)
            ]
            for m in range(self.shape.media)
        ]
        fields = {f"media{m}": media[m] for m in range(self.shape.media)}
        fields |= {
            "lbl": list(s.lbl[rows]),
            "tid": list(s.tid[rows][:, None]),
            "src": list(s.catalog.source[rows][:, None]),
        }
        if s.seg is not None:
            fields["seg"] = list(s.seg[rows])
        draws = self._draws(s.catalog.uid[rows][:, None], visits[:, None])
        return [fields[name] if name in fields else draws[name]() for name in self.shape.outputs]

    def _draws(self, uid: np.ndarray, visit: np.ndarray) -> dict[str, Any]:
        """The plan's random numbers of a batch's items, by output name (computed when asked)."""
        seed, epoch, k, bands = self.plan.seed, self.epoch, self.shape.k, self.shape.bands

        def mask() -> list[np.ndarray]:
            cells = np.arange(k * bands * 2)[None, :]
            return list(
                uniform(seed, epoch, uid, visit, cells, MASK).astype(np.float32).reshape(-1, k, bands, 2)
            )

        return {
            "u": lambda: list(uniform(seed, epoch, uid, visit, np.arange(k)[None, :], START)),
            "mask": mask,
            "speed": lambda: list(uniform(seed, epoch, uid, visit, SPEED)),
            "gain": lambda: list(
                uniform(seed, epoch, uid, visit, np.arange(k)[None, :], GAIN).astype(np.float32)
            ),
        }

    def _decode(self, shard: int, data: bytes) -> np.ndarray:
        return np.frombuffer(data, np.uint8) if self.shape.image else self.reader.audio(shard, data)

    def _readable(self, items: np.ndarray, upcoming: list[int]) -> np.ndarray:
        """The batch's items, its shards fetched first. With ``skip``, a shard that fails its
        check is recorded (dropped from the next epoch on every rank) and its items here are
        replaced by the batch's first readable item, so every rank still yields a full batch."""
        shards = [int(self.samples.catalog.shard[r]) for r in items[:, 0]]
        while True:
            bad = [s for s in set(shards) if s in self.found_bad]
            try:
                self.reader.prepare([s for s in shards if s not in bad], upcoming)
            except CorruptShard as e:
                if not self.skip_bad:
                    raise
                hit = self.samples.shard_names.index(e.shard) if e.shard in self.samples.shard_names else -1
                if hit < 0 or hit in self.found_bad:
                    raise
                self._report(hit, e)
                continue
            break
        good = [i for i, s in enumerate(shards) if s not in self.found_bad]
        if not good:
            raise BadShard(
                self.samples.shard_names[shards[0]],
                "every sample of a batch lies in shards that failed their check",
            )
        if len(good) == len(shards):
            return items
        fill = items.copy()
        fill[[i for i in range(len(shards)) if i not in good]] = items[good[0]]
        return fill

    def _report(self, shard: int, error: BaseException) -> None:
        self.found_bad.add(shard)
        warnings.warn(
            f"loader.on_bad_shard=skip: {error}; dropped from the plan from the next epoch on", stacklevel=2
        )

    # -------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        leg = Leg(self.leg.ranges, self.leg.world, self.consumed)
        return {
            "graph": STATE_VERSION,
            "epoch": self.epoch,
            "ranges": [list(r) for r in leg.ranges],
            "world": leg.world,
            "taken": leg.taken,
            "excluded": [self.samples.shard_names[s] for s in sorted(self.excluded)],
            "found_bad": [self.samples.shard_names[s] for s in sorted(self.found_bad)],
            "items": len(self.items()),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        names = self.samples.shard_names
        self.epoch = int(state["epoch"])
        self.excluded = {names.index(n) for n in state.get("excluded", []) if n in names}
        self.found_bad = {names.index(n) for n in state.get("found_bad", []) if n in names}
        if int(state.get("items", -1)) != len(self.items()):
            warnings.warn(
                f"the saved loader position is of another epoch plan ({state.get('items')} items, this one "
                f"{len(self.items())}: other data or loader settings): epoch {self.epoch} restarts",
                stacklevel=2,
            )
            self.restart(self.epoch)
            return
        saved = Leg(
            tuple((int(a), int(b)) for a, b in state["ranges"]), int(state["world"]), int(state["taken"])
        )
        self.leg = saved.regrouped(self.world, self.shape.batch)
        self.consumed = self.leg.taken

    # -------------------------------------------------------------- trace
    def write_trace(self, sample: torch.Tensor, tid: torch.Tensor, start: torch.Tensor, lbl: torch.Tensor,
                    src: torch.Tensor, rate: int) -> None:  # fmt: skip
        """One line per chunk of the batch just yielded (``loader.trace``): ``sample`` is each
        chunk's sample in the batch, ``start`` its first sample in the track at ``rate``."""
        if self.trace is None:
            return
        positions = self._positions(self.consumed - 1)
        step = self.done - 1
        lines = []
        for i, t, s, lab, b in zip(sample.tolist(), tid.tolist(), start.tolist(), lbl.tolist(), src.tolist()):
            labels = [j for j, v in enumerate(lab) if v] if self.shape.multi else lab
            lines.append(json.dumps({"epoch": self.epoch, "step": step, "pos": int(positions[i]), "tid": t,
                                     "start": s / rate, "labels": labels, "source": b}))  # fmt: skip
        self.trace.mkdir(parents=True, exist_ok=True)
        with open(self.trace / f"rank{self.rank}.jsonl", "a") as f:
            f.write("\n".join(lines) + "\n")


def _agree(found: set[int], world: int) -> set[int]:
    """The union of every rank's ``found`` (a collective when several ranks run)."""
    if world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        gathered: list[Any] = [None] * world
        torch.distributed.all_gather_object(gathered, sorted(found))
        return {s for g in gathered for s in g}
    return set(found)
