"""A training loader's inputs under the sample plan: its builds' catalog, their readers and caches.

Several builds (``data.shards`` as a list) are trained on as one: their label vocabularies
merged by name (:func:`pipelines.catalog.merge_tasks`), their media brought to the first
build's codec and rate when they differ (:mod:`pipelines.media_reader`), each one's share of an
epoch set by ``data.weights`` (default: by their audio). The first build's feature statistics
and image settings apply to all (docs/training.md). ``loader.cache_gb`` is the total over the
builds in object storage, shared in proportion to their bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pipelines.catalog import BuildPart, Samples, merge_tasks, read_samples
from pipelines.config import AugmentConfig, LoaderConfig
from pipelines.media_reader import MediaReader, Target
from pipelines.remote import open_cache
from pipelines.sample_plan import PlanConfig
from pipelines.shard_cache import ShardCache
from pipelines.shard_checks import verify_bad_shards
from pipelines.train_stream import StreamShape, TrainStream
from shards.base.tasks import TaskSpec
from shards.format import Manifest


@dataclass
class TrainInputs:
    stream: TrainStream
    target: Target  # the codec and rate the graph reads
    idxs: list[list[str]]  # per build: local index files (the split checks read them)
    task: TaskSpec  # the run's vocabulary


def target_of(manifests: Sequence[Manifest]) -> Target:
    """The first build's codec and rate when every build shares them, else int16 PCM at its rate."""
    first = manifests[0]
    same = all(m.codec == first.codec and m.sample_rate == first.sample_rate for m in manifests)
    return Target(first.codec if same else "pcm16", first.sample_rate)


def mixed_task(manifests: Sequence[Manifest]) -> TaskSpec:
    """The run's vocabulary over ``manifests`` (one line when their tasks cannot be merged)."""
    return merge_tasks([m.task for m in manifests], [m.where for m in manifests])[0]


def _locations(
    manifests: Sequence[Manifest], split: str, cfg: LoaderConfig, rank: int
) -> tuple[list[list[str]], list[list[str]], dict[int, ShardCache]]:
    """Per build: what the reader opens per shard, the local index files, the caches."""
    tars, idxs, caches = [], [], {}
    remote_bytes = sum(sum(s.bytes for s in m.split(split).shards) for m in manifests if m.remote) or 1
    for b, m in enumerate(manifests):
        t, i = m.urls(split)
        if m.remote:
            share = sum(s.bytes for s in m.split(split).shards) / remote_bytes
            cache = open_cache(m, split, cfg, rank, share)
            i = [str(p) for p in cache.indexes]
            if cfg.remote == "cache":
                t, caches[b] = [str(p) for p in cache.tars], cache
            else:
                cache.close()  # the index copies stay; the members are read from the store
        tars.append(list(t))
        idxs.append(list(i))
    return tars, idxs, caches


def train_inputs(
    manifests: Sequence[Manifest],
    split: str,
    *,
    loader: LoaderConfig,
    augment: AugmentConfig,
    media: list[str],
    rank: int,
    world_size: int,
    weights: Sequence[float] | None = None,
    image: bool = False,
) -> TrainInputs:
    """Catalog the builds' training split and set this rank's plan stream up (no DALI work)."""
    task, maps = merge_tasks([m.task for m in manifests], [m.where for m in manifests])
    tars, idxs, caches = _locations(manifests, split, loader, rank)
    parts = [BuildPart(m, split, t, i, media, mp) for m, t, i, mp in zip(manifests, tars, idxs, maps)]
    level = loader.balance_level % len(task.levels) if task.kind == "hier" else 0
    samples = read_samples(parts, task, weighting=loader.track_weighting, balance_level=level,
                           workers=8 * loader.cache_workers)  # ids of a remote build: small ranged GETs  # fmt: skip
    target = target_of(manifests)
    build_of = [b for b, _ in samples.shard_info]
    local = [sum(1 for c in build_of[:s] if c == b) for s, b in enumerate(build_of)]
    infos = [info for _, info in samples.shard_info]
    reader = MediaReader(samples.shard_tars, build_of, local, manifests, caches, target, infos)
    bands = augment.freq_masks + augment.time_masks if augment.active else 0
    shape = StreamShape(
        loader.tracks_per_batch, loader.chunks_per_track, bands, len(media), image, task.kind == "multi"
    )
    plan = PlanConfig(loader.seed, loader.shuffle, loader.balance, loader.initial_fill,
                      tuple(float(w) for w in weights) if weights is not None else None)  # fmt: skip
    stream = TrainStream(samples, plan, reader, shape, rank, world_size, skip_bad=loader.on_bad_shard == "skip",
                         trace=Path(loader.trace) if loader.trace else None)  # fmt: skip
    if loader.verify == "first_open":
        _verify(stream, samples, manifests, split, loader)
    return TrainInputs(stream, target, idxs, task)


def _verify(
    stream: TrainStream, samples: Samples, manifests: Sequence[Manifest], split: str, cfg: LoaderConfig
) -> None:
    """``loader.verify = first_open`` before step 0 (builds the cache does not hash itself): a bad
    shard stops the run, or with ``skip`` leaves every rank's plan (each rank checks them all)."""
    for m in manifests:
        if m.remote and cfg.remote == "cache":
            continue
        bad = verify_bad_shards(m, split, workers=cfg.num_threads, stop=cfg.on_bad_shard == "stop")
        for name in bad:
            stream.exclude(samples.shard_names.index(name))
