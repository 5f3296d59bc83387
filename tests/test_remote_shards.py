"""Shards in object storage, read through the whole-shard cache (``loader.remote = "cache"``):
the same batches as the local build, resume, exactly-once evaluation, eviction, and the
sha256 check. A local S3 server in its own process (tests/helpers/s3.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from helpers.s3 import S3

from pipelines.bench.small import small_configs
from pipelines.loader import build_loader
from pipelines.read_order import ReadOrder
from shards.format.manifest import read_manifest

SR, SECONDS = 8000, 2.5


@pytest.fixture(scope="module")
def build(synth_shards, s3: S3) -> tuple[Path, str]:
    """13 tracks (train 9, one or two per shard), local and uploaded as is."""
    local = synth_shards(tracks=13, seconds=SECONDS, sample_rate=SR, shard_size_mb=0.1)
    return local, s3.put_build(local, "small")


def make(shards, mode, cache: Path | None = None, *, split="train", rank=0, world_size=1, **loader):
    fc, aug, lc = small_configs(**loader)
    if cache is not None:
        lc = dataclasses.replace(lc, cache_dir=str(cache))
    return build_loader(
        shards, split, mode=mode, features=fc, augment=aug, loader=lc, rank=rank, world_size=world_size
    )


def epochs(loader, n=2):
    return [[{k: v.clone() for k, v in b.items()} for b in loader] for _ in range(n)]


def same(a, b) -> None:
    assert len(a) == len(b)
    for ea, eb in zip(a, b):
        assert len(ea) == len(eb) and len(ea) > 0
        for x, y in zip(ea, eb):
            assert x.keys() == y.keys()
            for k in x:
                assert torch.equal(x[k], y[k]), k


def test_training_batches_from_s3_equal_the_local_build(build, tmp_path, s3: S3) -> None:
    local, url = build
    ref = epochs(make(local, "train"))
    before = s3.server.requests(under=url)
    remote = make(url, "train", tmp_path / "cache")
    got = epochs(remote)
    same(ref, got)
    shards = len(read_manifest(local).split("train").shards)
    stats = remote.caches[0].stats
    assert stats.fetched == shards and stats.hits == 0  # every shard once; epoch 2 read the cache
    gets = (s3.server.requests(under=url) - before)["GET"]
    samples = read_manifest(local).split("train").num_samples
    # the manifest, one per tar, one per index and one per ids file (the catalog's, once per
    # cache folder: a restart reads none)
    assert gets == 1 + 3 * shards and shards < samples
    remote.caches[0].close()  # the first process ends: its folder is free again
    before = s3.server.requests(under=url)
    again = make(url, "train", tmp_path / "cache")  # a restart finds the verified shards
    same(ref, epochs(again))
    assert (s3.server.requests(under=url) - before)["GET"] == 1  # the manifest; indexes and ids are kept
    assert again.caches[0].stats.fetched == 0 and again.caches[0].stats.hits == shards


def test_mid_epoch_resume_from_s3(build, tmp_path) -> None:
    _, url = build
    loader = make(url, "train", tmp_path / "a", batch_size=4)
    it = iter(loader)
    next(it)
    state = loader.state_dict()
    rest = [{k: v.clone() for k, v in b.items()} for b in it]
    following = epochs(loader, 1)[0]
    resumed = make(url, "train", tmp_path / "b", batch_size=4)  # another node: an empty cache
    resumed.load_state_dict(state)
    same([rest, following], epochs(resumed, 2))


def test_evaluation_is_exactly_once_across_ranks(build, tmp_path) -> None:
    local, url = build
    ref = [b for b in make(local, "eval", split="validation")]
    tracks: list[int] = []
    for rank in (0, 1):
        loader = make(url, "eval", tmp_path / "c", split="validation", rank=rank, world_size=2)
        tracks += [int(t) for b in loader for t in b["track"]]
    want = [int(t) for b in ref for t in b["track"]]
    assert sorted(tracks) == sorted(want)  # every chunk of every track once


def test_streaming_with_eviction_gives_the_same_batches(synth_shards, s3: S3, tmp_path) -> None:
    """One track per shard, a cache that holds about half the split, one shard fetched ahead:
    shards are evicted and fetched again in epoch 2, and the batches still equal the local ones."""
    local = synth_shards(tracks=36, seconds=1.2, sample_rate=SR, shard_size_mb=0.001)
    url = s3.put_build(local, "one-per-shard")
    info = read_manifest(local).split("train")
    assert len(info.shards) == info.num_samples == 26
    kw = dict(batch_size=4, shuffle=False, initial_fill=1, cache_ahead=1, cache_workers=1)
    ref = epochs(make(local, "train", **kw))
    bound = 15 * max(s.bytes for s in info.shards) / 1e9
    remote = make(url, "train", tmp_path / "small", cache_gb=bound, **kw)
    same(ref, epochs(remote))
    stats = remote.caches[0].stats
    assert stats.evicted > 0 and stats.fetched > len(info.shards)
    assert remote.caches[0].resident_bytes() <= bound * 1e9


def test_a_corrupt_object_is_refused_before_the_pipeline(build, s3: S3, tmp_path) -> None:
    local, _ = build
    url = s3.put_build(local, "corrupt")
    tar = read_manifest(local).split("train").shards[0]
    data = bytearray((local / tar.tar).read_bytes())
    data[1000] ^= 0xFF  # same size: only the sha256 tells
    s3.client().put_object(Bucket=s3.bucket, Key=f"corrupt/{tar.tar}", Body=bytes(data))
    loader = make(
        url, "train", tmp_path / "d"
    )  # builds no pipeline (issue 19): the first pass asks the cache
    with pytest.raises(ValueError, match=r"sha256 .* the manifest says") as e:
        next(iter(loader))
    assert loader._pipe is None  # refused before any pipeline was built
    assert "\n" not in str(e.value) and str(e.value).startswith(f"{url}/{tar.tar}")


def test_read_order_matches_dalis_sharding() -> None:
    order = ReadOrder(counts=(3, 3, 3, 3), rank=1, world_size=2, batch=2, prefetch=1)
    needed, rest = order.window(0, 0)  # rank 1 reads samples 6..11 (tars 2, 3), 1 + 2 x 4 ahead
    assert needed == [2, 3] and rest == []
    needed, rest = order.window(0, 2, restored=True)  # after a restore: 3 samples back
    assert needed == [2, 3] and rest == []
    ev = ReadOrder(counts=(3, 3, 3, 3), rank=0, world_size=2, batch=2, prefetch=1)
    assert set(sum(ev.window(5, 7), [])) == {0, 1}  # evaluation never leaves its range
    assert ReadOrder(counts=(4, 4, 4, 4), rank=0, world_size=1, batch=1, prefetch=0).window(0, 0) == (
        [0],
        [1, 2, 3],
    )


def test_shard_checks_use_object_metadata_not_downloads(build, s3: S3) -> None:
    """``checksums=True`` on a store compares the manifest's sha256 with each object's metadata
    (HEADs, no tar GET): present after ``shards copy``, reported missing after a plain upload."""
    from pipelines.shard_checks import ShardError, validate_split
    from shards.format.copy import copy_build

    local, plain = build
    fc, _, lc = small_configs()
    copied = s3.url("checked")
    copy_build(local, copied, show=False)
    before = s3.server.requests(under=copied)
    validate_split(read_manifest(copied), "train", features=fc, loader=lc, checksums=True)
    shards = len(read_manifest(local).split("train").shards)
    gets = (s3.server.requests(under=copied) - before)["GET"]
    assert gets == 1 + shards  # the manifest and the indexes only
    with pytest.raises(ShardError, match="no sha256 in the object's metadata"):
        validate_split(read_manifest(plain), "train", features=fc, loader=lc, checksums=True)
