"""Where the trainer's batches come from: the DALI loader over shards, or synthetic data.

Returns the task (from the shards' manifest, or synthetic) and the train/validation
loaders with this rank's share, all with the ``MusicLoader`` interface.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

import torch

from shards.manifest import TaskSpec, read_manifest
from train.config import Experiment
from train.synthetic import SyntheticLoader, synthetic_task


@dataclass
class DataBundle:
    task: TaskSpec
    train: Any  # MusicLoader | SyntheticLoader
    val: Any | None
    feature_shape: tuple[int, int, int]


class _SyntheticCommon(TypedDict):
    """Keyword arguments both synthetic loaders (train and validation) share."""

    batch_size: int
    learnable: bool
    signal: float
    seed: int
    rank: int
    world_size: int
    device: torch.device


def _shards(exp: Experiment) -> Path:
    """``data.shards``, which a shard-fed (non-synthetic) run cannot do without."""
    if exp.data.shards is None:
        raise ValueError("data.shards: required unless data.synthetic = true")
    return exp.data.shards


def read_task(exp: Experiment) -> TaskSpec:
    """The task and vocabularies: the manifest's, or the synthetic one (no GPU work)."""
    if exp.data.synthetic:
        return synthetic_task(exp.data.synthetic_task, exp.data.synthetic_classes)
    return read_manifest(_shards(exp)).task


def build_data(exp: Experiment, *, rank: int, world_size: int, device: torch.device) -> DataBundle:
    task = read_task(exp)
    if exp.data.synthetic:
        return _synthetic(exp, task, rank, world_size, device)
    from pipelines.loader import build_loader

    common = dict(
        features=exp.features,
        augment=exp.augment,
        loader=exp.loader,
        rank=rank,
        world_size=world_size,
        device=device,
    )
    manifest = read_manifest(_shards(exp))
    train = build_loader(manifest, exp.data.train_split, mode="train", **common)
    val = None
    if exp.data.val_split:
        val = build_loader(manifest, exp.data.val_split, mode="eval", **common)
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
    )
    train = SyntheticLoader(
        task, shape, batches=d.synthetic_batches, mode="train", resident=d.synthetic_resident, **common
    )
    val = None
    if d.val_split:
        val = SyntheticLoader(task, shape, batches=max(1, d.synthetic_batches // 2), mode="eval", **common)
    return DataBundle(task=task, train=train, val=val, feature_shape=shape)
