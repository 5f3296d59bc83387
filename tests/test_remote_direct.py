"""``loader.remote = "direct"``: DALI reads the ``s3://`` tars itself (its own S3 client, made
once per process from the environment: the ONE test module where DALI talks to S3 in-process;
tests/helpers/s3.py). Same batches as the local build; the request count shows why the cache
is the default."""

from __future__ import annotations

import dataclasses

import torch
from helpers.old_formats import as_version
from helpers.s3 import S3

from pipelines.bench.small import small_configs
from pipelines.loader import build_loader
from shards.format.manifest import read_manifest


def test_direct_member_reads_give_the_local_batches(synth_shards, s3: S3, tmp_path) -> None:
    local = synth_shards(tracks=13, seconds=2.5, sample_rate=8000, shard_size_mb=0.1)
    url = s3.put_build(local, "direct")
    fc, aug, lc = small_configs(batch_size=4)
    ref = build_loader(local, "train", mode="train", features=fc, augment=aug, loader=lc)
    lc = dataclasses.replace(lc, remote="direct", cache_dir=str(tmp_path))
    before = s3.server.requests(under=url)
    remote = build_loader(url, "train", mode="train", features=fc, augment=aug, loader=lc)
    built = s3.server.requests(under=url)
    assert remote.gate is None and not remote.caches  # the plan reads the members from the store
    assert all(t.startswith("s3://") for t in remote.stream.samples.shard_tars)
    for _ in range(2):
        a, b = list(ref), list(remote)
        assert len(a) == len(b) > 0
        for x, y in zip(a, b):
            assert all(torch.equal(x[k], y[k]) for k in x)
    info = read_manifest(local).split("train")
    # building: the manifest, then an index copy and the catalog's ids file for each shard
    assert (built - before)["GET"] == 1 + 2 * len(info.shards)
    # then one ranged GET per sample read (its pcm member), two epochs of them and the third's first
    # batch (DALI prefetches it when the second ends), nothing else
    tracks = lc.tracks_per_batch
    read = (info.num_samples // tracks) * tracks  # an epoch's whole batches
    assert (s3.server.requests_at_rest(under=url) - built)["GET"] == 2 * read + tracks


def test_direct_reads_cost_two_requests_per_audio_sample(synth_shards, s3: S3, tmp_path) -> None:
    """An evaluation pass of a version-3 build and of the same build in version 2's layout: 2
    ranged GETs per sample read (pcm, ids) against 4 (pcm, lbl, tid, seg). The reader runs ahead
    of the iterator (prefetch), so it reads K >= n samples, the same K for both once it has filled
    its queues and stopped (counted at rest): 2K + c and 4K + c requests with c other GETs; the
    exact 2x says c = 0."""
    v3 = synth_shards(tracks=13, seconds=2.5, sample_rate=8000, shard_size_mb=0.1)
    v2 = as_version(v3, tmp_path / "v2", 2)
    fc, aug, lc = small_configs(batch_size=4)
    lc = dataclasses.replace(lc, remote="direct", cache_dir=str(tmp_path / "cache"), prefetch=1)
    n = read_manifest(v3).split("train").num_samples
    gets, out = {}, {}
    for name, local in (("v3", v3), ("v2", v2)):
        url = s3.put_build(local, f"members-{name}")
        loader = build_loader(url, "train", mode="eval", features=fc, augment=aug, loader=lc)
        before = s3.server.requests(under=url)
        out[name] = list(loader)
        gets[name] = (s3.server.requests_at_rest(under=url) - before)["GET"]
    assert len(out["v3"]) == len(out["v2"]) > 0
    for x, y in zip(out["v3"], out["v2"]):
        assert all(torch.equal(x[k], y[k]) for k in x)
    assert gets["v2"] == 2 * gets["v3"] and gets["v3"] % 2 == 0 and gets["v3"] >= 2 * n, (gets, n)
