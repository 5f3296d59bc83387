"""``build_loader``: validate a split's shards against the configs, then build a rank's loader.

The loader itself is ``pipelines.music_loader.MusicLoader`` (``pipelines.image_graph.ImageLoader``
for image builds); training reads the sample plan (``pipelines.plan_inputs``), evaluation DALI's
webdataset reader over one build (``pipelines.remote`` for builds in object storage).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from nvidia.dali import types

from pipelines.config import AugmentConfig, FeatureConfig, LoaderConfig
from pipelines.graph import GraphSpec, audio_dtype, plan_outputs
from pipelines.loader_spec import graph_spec, warn_downsampling
from pipelines.memory import check_memory
from pipelines.music_loader import MusicLoader
from pipelines.plan_inputs import train_inputs
from pipelines.remote import CacheGate, reader_inputs
from pipelines.shard_checks import ShardError, load_manifest, split_info, validate_split, verify_on_first_open
from pipelines.train_stream import TrainStream
from shards.base.distributed import resolve_device, resolve_rank
from shards.base.tasks import TaskSpec
from shards.format import AUDIO_EXT, Manifest, MemberLayout, member_layout

__all__ = ["build_loader", "label_index", "resolve_device"]


def build_loader(
    shards: str | Path | Manifest | Sequence[str | Path | Manifest],
    split: str,
    *,
    mode: Literal["train", "eval"],
    features: FeatureConfig,
    augment: AugmentConfig,
    loader: LoaderConfig,
    rank: int | None = None,
    world_size: int | None = None,
    device: str | torch.device = "cpu",
    channels_last: bool = False,
    weights: Sequence[float] | None = None,
    vocabulary: TaskSpec | None = None,
) -> MusicLoader:
    """Validate the shards against the configs, then build this rank's loader.

    Training reads one build or a list of them (mixed by ``weights``: ``pipelines.plan_inputs``);
    evaluation one build, its labels given in ``vocabulary`` (a mixed run's) when set.
    DALI runs on the GPU when ``device`` is CUDA, CPU-only (``device_id=None``) otherwise.
    ``channels_last``: allocate ``x`` channels-last (a convnet trained channels-last then
    needs no copy per step). No pipeline is built until the first pass (or ``state_dict``).
    """
    if mode not in ("train", "eval"):
        raise ValueError(f"mode: {mode!r} is not 'train' or 'eval'")
    r, w = resolve_rank(rank, world_size)
    given: list[str | Path | Manifest] = (
        [shards] if isinstance(shards, (str, Path, Manifest)) else list(shards)
    )
    manifests = _manifests(given, split, train=mode == "train")
    manifest = manifests[0]
    image_exts: list[str] = []
    if manifest.kind == "image":  # spectrogram-image shards: their own DALI branch, the same contract
        from pipelines.image_graph import ImageLoader, image_member_exts

        image_exts = image_member_exts(manifest, features)
    elif manifest.sample_rate > features.sample_rate:
        warn_downsampling(manifest.sample_rate, features.sample_rate)
    req = _Request(split, mode, (features, augment, loader), r, w, resolve_device(device), image_exts)
    stream, gate, label_map = None, None, None
    if mode == "train":
        spec, task, stream = _train_spec(req, manifests, weights)
    else:
        spec, task, gate, label_map = _eval_spec(req, manifest, vocabulary)
    if manifest.kind == "audio":  # before reading any shard
        check_memory(spec, split, manifest.where, req.dev)
    cls = ImageLoader if manifest.kind == "image" else MusicLoader
    samples = manifest.split(split).num_samples
    return cls(spec, manifest, task, req.dev, samples=samples, channels_last=channels_last, gate=gate,
               stream=stream, label_map=label_map)  # fmt: skip


@dataclass(frozen=True)
class _Request:
    """What ``build_loader`` was asked for, resolved."""

    split: str
    mode: Literal["train", "eval"]
    configs: tuple[FeatureConfig, AugmentConfig, LoaderConfig]
    rank: int
    world: int
    dev: torch.device
    image_exts: list[str]


def _manifests(given: list[str | Path | Manifest], split: str, *, train: bool) -> list[Manifest]:
    """The builds' manifests (an object store: reachable, every object there, one LIST each),
    refused in one line when they cannot be read together."""
    manifests = [load_manifest(s) for s in given]
    first = manifests[0]
    if len(manifests) > 1 and not train:
        raise ValueError("evaluation reads one build at a time (mixed builds are validated one by one)")
    for m in manifests:
        split_info(m, split)
        if m.kind != first.kind or (m.kind == "image" and list(m.images) != list(first.images)):
            raise ShardError(f"{m.where}: a {m.kind} build cannot be mixed with {first.where} ({first.kind}); "
                             "mixed builds need the same kind (and image channels)")  # fmt: skip
    return manifests


def _train_spec(
    req: _Request, manifests: list[Manifest], weights: Sequence[float] | None
) -> tuple[GraphSpec, TaskSpec, TrainStream]:
    """The sample plan over ``manifests`` and the graph that reads it."""
    features, augment, loader = req.configs
    first = manifests[0]
    media = req.image_exts or [AUDIO_EXT[first.codec]]
    got = train_inputs(manifests, req.split, loader=loader, augment=augment, media=media, rank=req.rank,
                       world_size=req.world, weights=weights, image=first.kind == "image")  # fmt: skip
    for m, idxs in zip(manifests, got.idxs):
        validate_split(m, req.split, features=features, loader=loader, world_size=req.world, train=True,
                       indexes=idxs)  # fmt: skip
    members = MemberLayout(
        member_layout(first).version, got.task.label_width, got.stream.samples.seg is not None
    )
    spec = graph_spec(first, req.split, req.mode, req.configs, tars=[], idxs=[], codec=got.target.codec,
                      rate=got.target.rate, members=members, rank=req.rank, world_size=req.world, dev=req.dev,
                      image_exts=req.image_exts)  # fmt: skip
    spec.plan = got.stream
    dtypes = [types.DALIDataType.UINT8] * len(media) if req.image_exts else [audio_dtype(got.target.codec)]
    got.stream.shape.outputs = [name for name, _ in plan_outputs(spec, dtypes)]
    return spec, got.task, got.stream


def _eval_spec(
    req: _Request, manifest: Manifest, vocabulary: TaskSpec | None
) -> tuple[GraphSpec, TaskSpec, CacheGate | None, torch.Tensor | None]:
    """DALI's reader over this rank's range of one build, and its labels in ``vocabulary``."""
    features, _, loader = req.configs
    inputs = reader_inputs(manifest, req.split, loader, rank=req.rank, world_size=req.world,
                           batch=loader.eval_tracks_per_batch)  # fmt: skip
    validate_split(manifest, req.split, features=features, loader=loader, world_size=req.world,
                   indexes=inputs.idxs)  # fmt: skip
    spec = graph_spec(manifest, req.split, req.mode, req.configs, tars=inputs.tars, idxs=inputs.idxs,
                      plain_reads=inputs.plain_reads, rank=req.rank, world_size=req.world, dev=req.dev,
                      image_exts=req.image_exts)  # fmt: skip
    if loader.verify == "first_open" and not (manifest.remote and loader.remote == "cache"):
        verify_on_first_open(manifest, req.split, rank=req.rank, world_size=req.world,
                             workers=loader.num_threads)  # the shard cache hashes each shard itself  # fmt: skip
    label_map = None if vocabulary is None else label_index(manifest, vocabulary)
    return spec, vocabulary or manifest.task, inputs.gate, label_map


def label_index(manifest: Manifest, vocabulary: TaskSpec) -> torch.Tensor | None:
    """A build's label indices in a mixed run's vocabulary (merged by name), or None when equal."""
    if manifest.task.vocab() == vocabulary.vocab() or vocabulary.kind == "hier":
        return None
    missing = [c for c in manifest.task.classes if c not in vocabulary.classes]
    if missing:
        raise ShardError(f"{manifest.where}: classes {missing[:5]} are not in the run's vocabulary")
    return torch.tensor([vocabulary.classes.index(c) for c in manifest.task.classes], dtype=torch.int64)
