"""``loader.remote = "direct"``: DALI reads the ``s3://`` tars itself (its own S3 client, made
once per process from the environment: the ONE test module where DALI talks to S3 in-process;
tests/helpers/s3.py). Same batches as the local build; the request count shows why the cache
is the default."""

from __future__ import annotations

import dataclasses

import torch
from helpers.s3 import S3

from pipelines.bench.small import small_configs
from pipelines.loader import build_loader
from shards.manifest import read_manifest


def test_direct_member_reads_give_the_local_batches(synth_shards, s3: S3, tmp_path) -> None:
    local = synth_shards(tracks=13, seconds=2.5, sample_rate=8000, shard_size_mb=0.1)
    url = s3.put_build(local, "direct")
    fc, aug, lc = small_configs(batch_size=4)
    ref = build_loader(local, "train", mode="train", features=fc, augment=aug, loader=lc)
    lc = dataclasses.replace(lc, remote="direct", cache_dir=str(tmp_path))
    before = s3.server.requests()
    remote = build_loader(url, "train", mode="train", features=fc, augment=aug, loader=lc)
    assert remote.gate is None and all(str(t).startswith("s3://") for t in remote.spec.tars)
    for _ in range(2):
        a, b = list(ref), list(remote)
        assert len(a) == len(b) > 0
        for x, y in zip(a, b):
            assert all(torch.equal(x[k], y[k]) for k in x)
    info = read_manifest(local).split("train")
    gets = (s3.server.requests() - before)["GET"]
    members = 4  # pcm, lbl, tid, seg: one ranged GET each, per sample read
    assert gets >= 2 * members * info.num_samples  # two epochs of member reads (no index GETs by DALI)
