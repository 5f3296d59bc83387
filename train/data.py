"""Where the trainer's batches come from: the DALI loader over shards, or synthetic data.

Returns the task (from the shards' manifest, or synthetic) and the train/validation
loaders with this rank's share, all with the ``MusicLoader`` interface.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, TypedDict

import torch

from shards.base.tasks import TaskSpec
from shards.format import Manifest, read_manifest
from train.config import Experiment
from train.synthetic import SyntheticLoader, synthetic_task

if TYPE_CHECKING:
    from pipelines.batches import BatchLoader


@dataclass
class DataBundle:
    task: TaskSpec
    train: BatchLoader  # MusicLoader | SyntheticLoader
    val: BatchLoader | None
    feature_shape: tuple[int, int, int]

    def close(self) -> None:
        """Release the loaders' pipelines (DALI's threads and device memory)."""
        for loader in (self.train, self.val):
            if loader is not None:
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


def data_source(exp: Experiment) -> tuple[Manifest | None, TaskSpec]:
    """The shards' manifest (read once per start; None for synthetic data) and the task."""
    if exp.data.synthetic:
        return None, synthetic_task(exp.data.synthetic_task, exp.data.synthetic_classes)
    assert exp.data.shards is not None  # Experiment checks it
    manifest = read_manifest(exp.data.shards)
    return manifest, manifest.task


def build_data(
    exp: Experiment,
    task: TaskSpec,
    manifest: Manifest | None,
    *,
    rank: int,
    world_size: int,
    device: torch.device,
) -> DataBundle:
    """This rank's train and validation loaders (``manifest`` from ``data_source``)."""
    if manifest is None:
        return _synthetic(exp, task, rank, world_size, device)
    from pipelines.loader import build_loader  # DALI: imported only for a shard-fed run

    def loader(split: str, mode: Literal["train", "eval"]) -> BatchLoader:
        return build_loader(manifest, split, mode=mode, features=exp.features, augment=exp.augment,
                            loader=exp.loader, rank=rank, world_size=world_size, device=device,
                            channels_last=exp.train.channels_last)  # fmt: skip

    train = loader(exp.data.train_split, "train")
    val = loader(exp.data.val_split, "eval") if exp.data.val_split else None
    if val is not None:  # each fits alone (build_loader); both hold device memory while validating
        from pipelines.memory import check_together

        check_together([train, val], manifest.where, device)
    c, f, t = train.feature_shape
    return DataBundle(task=task, train=train, val=val, feature_shape=(c, f, t))


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
