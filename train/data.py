"""Where the trainer's batches come from: the DALI loader over shards, or synthetic data.

Returns the task (from the shards' manifest, or synthetic) and the train/validation
loaders with this rank's share, all with the ``MusicLoader`` interface.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypedDict

import torch

from shards.base.tasks import TaskSpec
from shards.format import Manifest, read_manifest
from train.config import Experiment
from train.synthetic import SyntheticLoader, synthetic_task

if TYPE_CHECKING:
    from pipelines.batches import Batch, BatchLoader


@dataclass
class DataBundle:
    task: TaskSpec
    train: BatchLoader  # MusicLoader | SyntheticLoader
    val: BatchLoader | None  # several builds: all of them in turn (the mixed validation)
    feature_shape: tuple[int, int, int]
    val_parts: dict[str, BatchLoader] = field(default_factory=dict)  # several builds: each one's own

    def close(self) -> None:
        """Release the loaders' pipelines (DALI's threads and device memory)."""
        for loader in (self.train, self.val, *self.val_parts.values()):
            if loader is not None:
                loader.close()


class ChainedLoader:
    """Evaluation loaders of several builds read one after the other, as one validation set
    (track ids tagged with their build, so tracks of different builds never merge)."""

    def __init__(self, loaders: list[BatchLoader]) -> None:
        self.loaders = loaders

    def __iter__(self) -> Iterator[Batch]:
        for b, loader in enumerate(self.loaders):
            for batch in loader:
                yield {**batch, "track": batch["track"] + (b << 40)}

    def __len__(self) -> int:
        return sum(len(x) for x in self.loaders)

    @property
    def feature_shape(self) -> tuple[int, int, int]:
        return self.loaders[0].feature_shape

    skipped_shards: list[str] = []  # validation skips nothing

    @property
    def batches_done(self) -> int:
        return 0

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Validation holds no position."""

    def close(self) -> None:
        for loader in self.loaders:
            loader.close()


class _SyntheticCommon(TypedDict):
    """Keyword arguments both synthetic loaders (train and validation) share."""

    batch_size: int
    learnable: bool
    signal: float
    seed: int
    rank: int
    world_size: int
    device: torch.device
    channels_last: bool


def data_source(exp: Experiment) -> tuple[list[Manifest], TaskSpec]:
    """The builds' manifests (read once per start; none for synthetic data) and the run's task
    (several builds: their vocabularies merged by name)."""
    if exp.data.synthetic:
        return [], synthetic_task(exp.data.synthetic_task, exp.data.synthetic_classes)
    manifests = [read_manifest(b) for b in exp.data.builds]
    if len(manifests) == 1:
        return manifests, manifests[0].task
    from pipelines.plan_inputs import mixed_task  # DALI-free, but the pipelines stage: only for shards

    return manifests, mixed_task(manifests)


def build_data(
    exp: Experiment,
    task: TaskSpec,
    manifests: list[Manifest],
    *,
    rank: int,
    world_size: int,
    device: torch.device,
) -> DataBundle:
    """This rank's train and validation loaders (``manifests`` from ``data_source``)."""
    if not manifests:
        return _synthetic(exp, task, rank, world_size, device)
    from pipelines.loader import build_loader  # DALI: imported only for a shard-fed run

    mixed = len(manifests) > 1

    def loader(shards: list[Manifest] | Manifest, split: str, mode: Literal["train", "eval"]) -> BatchLoader:
        return build_loader(shards, split, mode=mode, features=exp.features, augment=exp.augment,
                            loader=exp.loader, rank=rank, world_size=world_size, device=device,
                            channels_last=exp.train.channels_last, weights=exp.data.weights if mode == "train" else None,
                            vocabulary=task if mixed and mode == "eval" else None)  # fmt: skip

    train = loader(manifests, exp.data.train_split, "train")
    parts: dict[str, BatchLoader] = {}
    if exp.data.val_split:
        parts = {_name(m, b): loader(m, exp.data.val_split, "eval") for b, m in enumerate(manifests)}
    val = (ChainedLoader(list(parts.values())) if mixed else next(iter(parts.values()))) if parts else None
    if parts:  # each fits alone (build_loader); both hold device memory while validating
        from pipelines.memory import check_together

        check_together([train, *parts.values()], manifests[0].where, device)
    c, f, t = train.feature_shape
    return DataBundle(
        task=task, train=train, val=val, feature_shape=(c, f, t), val_parts=parts if mixed else {}
    )


def _name(m: Manifest, b: int) -> str:
    """A build's name in validation metrics: its folder's name (and its position if names repeat)."""
    return f"{b}-" + str(m.root).rstrip("/").rsplit("/", 1)[-1]


def _synthetic(exp: Experiment, task: TaskSpec, rank: int, world: int, device: torch.device) -> DataBundle:
    d = exp.data
    shape = (d.synthetic_shape[0], d.synthetic_shape[1], d.synthetic_shape[2])
    common = _SyntheticCommon(
        batch_size=d.synthetic_batch_size,
        learnable=d.synthetic_learnable,
        signal=d.synthetic_signal,
        seed=exp.train.seed,
        rank=rank,
        world_size=world,
        device=device,
        channels_last=exp.train.channels_last,
    )
    train = SyntheticLoader(
        task, shape, batches=d.synthetic_batches, mode="train", resident=d.synthetic_resident, **common
    )
    val = None
    if d.val_split:
        val = SyntheticLoader(task, shape, batches=max(1, d.synthetic_batches // 2), mode="eval", **common)
    return DataBundle(task=task, train=train, val=val, feature_shape=shape)
