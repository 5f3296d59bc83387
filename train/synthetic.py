"""A loader of synthetic spectrogram batches with the ``MusicLoader`` interface.

Two jobs: (1) tests and CI train every family without audio or DALI; (2) the
input-bound benchmark measures model steps/s on batches that already sit on the
training device (``resident=True``: generated once, no per-step host work), the
upper bound the real pipeline is compared against.

With ``learnable=True`` each class owns a fixed random pattern (C, F, T) added to
noise, so a model that learns reaches well above chance; hierarchical labels are
drawn at the leaf level and their parents follow the hierarchy's parent links.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import torch

from shards.base.tasks import Level, TaskKind, TaskSpec


def synthetic_task(kind: str, classes: list[int]) -> TaskSpec:
    """A TaskSpec for synthetic data: ``classes`` sizes per head (hier: per level)."""
    if kind == "hier":
        if len(classes) < 2:
            raise ValueError("data.synthetic_classes: a hierarchical task needs >= 2 levels")
        levels = [Level(name="level0", classes=[f"l0_c{i}" for i in range(classes[0])])]
        for d, (up, n) in enumerate(zip(classes, classes[1:]), start=1):
            parent = [j * up // n for j in range(n)]
            levels.append(Level(name=f"level{d}", classes=[f"l{d}_c{i}" for i in range(n)], parent=parent))
        return TaskSpec(kind="hier", name="synthetic", levels=levels)
    # TaskSpec refuses a kind other than single/multi/hier
    return TaskSpec(
        kind=cast("TaskKind", kind), name="synthetic", classes=[f"c{i}" for i in range(classes[0])]
    )


class SyntheticLoader:
    """Re-iterable; one pass = one epoch of ``batches`` dicts {x (B,C,F,T), y, track (B,)}.

    Deterministic in (seed, rank, epoch, batch index), so ``state_dict`` (epoch and
    position) is enough to resume mid-epoch exactly.
    """

    def __init__(
        self,
        task: TaskSpec,
        shape: tuple[int, int, int],
        *,
        batches: int = 8,
        batch_size: int = 16,
        chunks_per_track: int = 2,
        mode: str = "train",
        learnable: bool = True,
        signal: float = 1.0,
        resident: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        device: str | torch.device = "cpu",
        channels_last: bool = False,
    ) -> None:
        if mode not in ("train", "eval"):
            raise ValueError(f"mode: {mode!r} is not train or eval")
        if batch_size % chunks_per_track:
            raise ValueError(
                f"batch_size {batch_size} is not a multiple of chunks_per_track {chunks_per_track}"
            )
        c, f, t = shape
        self.task, self.feature_shape = task, (c, f, t)
        self.batches, self.batch_size, self.k = batches, batch_size, chunks_per_track
        self.mode, self.learnable, self.signal = mode, learnable, signal
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.device = torch.device(device)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.epoch, self.position = 0, 0
        self.manifest = None
        n_leaf = task.head_sizes[-1] if task.kind == "hier" else task.head_sizes[0]
        g = torch.Generator().manual_seed(seed + 7919)  # patterns shared by all ranks/splits
        self.patterns = torch.randn((n_leaf, *self.feature_shape), generator=g)
        self._resident = [self._make(0, i) for i in range(batches)] if resident else None

    def __len__(self) -> int:
        return self.batches

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        start = self.position
        for i in range(start, self.batches):
            batch = self._resident[i] if self._resident is not None else self._make(self.epoch, i)
            self.position = i + 1
            yield batch
        if self.mode == "train":
            self.epoch += 1
        self.position = 0

    def close(self) -> None:
        """Nothing to release (the loader interface's ``close``)."""

    def state_dict(self) -> dict[str, Any]:
        """Epoch and batch position: everything needed to continue the stream."""
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, Any] | list[dict[str, Any]]) -> None:
        if isinstance(state, list):  # saved per rank (before issue 31): every rank's was the same
            state = state[0]
        self.epoch, self.position = int(state["epoch"]), int(state["position"])

    skipped_shards: list[str] = []  # synthetic batches come from no shard

    @property
    def batches_done(self) -> int:
        """Batches of the current epoch behind the position."""
        return self.position

    def _make(self, epoch: int, index: int) -> dict[str, torch.Tensor]:
        """Batch ``index`` of ``epoch`` on this rank: tracks x K chunks."""
        epoch = epoch if self.mode == "train" else 0
        stream = 0 if self.mode == "train" else 1
        g = torch.Generator().manual_seed(hash((self.seed, stream, self.rank, epoch, index)) & 0x7FFFFFFF)
        n_tracks = self.batch_size // self.k
        first = (index * self.world_size + self.rank) * n_tracks
        track = torch.arange(first, first + n_tracks).repeat_interleave(self.k)
        leaf, y = self._labels(n_tracks, g)
        x = torch.randn((self.batch_size, *self.feature_shape), generator=g)
        if self.learnable:
            x += self.signal * self._signal(leaf.repeat_interleave(self.k, 0))
        y = y.repeat_interleave(self.k, 0)
        dev = self.device
        x = x.to(dev).contiguous(memory_format=self.memory_format)  # as the model consumes it
        return {"x": x, "y": y.to(dev), "track": track.to(dev)}

    def _labels(self, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(what the signal encodes, y as the task needs it) for n tracks."""
        t = self.task
        if t.kind == "single":
            y = torch.randint(0, t.head_sizes[0], (n,), generator=g)
            return y, y
        if t.kind == "multi":
            y = (torch.rand((n, t.head_sizes[0]), generator=g) < 0.3).float()
            return y, y
        leaf = torch.randint(0, t.head_sizes[-1], (n,), generator=g)
        cols = [leaf]
        for lv in reversed(t.levels[1:]):
            cols.insert(0, torch.tensor(lv.parent)[cols[0]])
        return leaf, torch.stack(cols, 1)

    def _signal(self, code: torch.Tensor) -> torch.Tensor:
        if code.dtype.is_floating_point:  # multi-hot: sum of the active tags' patterns
            return torch.einsum("bn,n...->b...", code, self.patterns)
        return self.patterns[code]


def synthetic_experiment(out: str | Path, overrides: list[str] | None = None) -> Any:
    """An ``Experiment`` on synthetic data writing to ``out`` (tests, benchmarks, smoke runs).

    Defaults: customcnn tiny, (3, 32, 32) chunks, 4 classes, fp32, no validation split
    unless overridden with ``data.val_split=...``; ``overrides`` are ``section.key=value``.
    """
    from train.config import load_experiment_tree

    base = [
        "data.synthetic=true",
        "data.val_split=''",
        "model.family=customcnn",
        "train.amp=none",
        "train.epochs=1",
        "train.device=cpu",
        "checkpoint.resume=auto",
        f"train.out='{Path(out).as_posix()}'",
    ]
    overrides = list(overrides or [])
    if not any(o.lstrip("-").startswith("model.family=") for o in overrides):
        base.append("model.preset=tiny")
    return load_experiment_tree(base + overrides)
