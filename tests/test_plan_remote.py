"""The sample plan over a build in object storage (a local S3 server in its own process): the
shard cache fetches each batch's shards as the plan reads them; a shard whose object fails the
cache's sha256 stops the run (``on_bad_shard = "stop"``) or leaves the plan from the next epoch
on (``"skip"``), the batch it fell in still full."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.s3 import S3
from helpers.tars import tar_samples

from pipelines.bench.small import small_configs
from pipelines.loader import build_loader
from pipelines.shard_cache import CorruptShard
from shards.format import StorageError
from shards.format.manifest import read_manifest

SR = 8000


def loader(url: str, cache: Path, **kw):  # type: ignore[no-untyped-def]
    fc, aug, lc = small_configs(cache_dir=str(cache), cache_gb=1.0, batch_size=4, **kw)
    return build_loader(url, "train", mode="train", features=fc, augment=aug, loader=lc, device="cpu")


@pytest.fixture(scope="module")
def local(synth_shards) -> Path:
    return synth_shards(tracks=24, seconds=1.5, sample_rate=SR, shard_size_mb=0.1)


def corrupt(s3: S3, local: Path, prefix: str) -> tuple[str, str, set[int]]:
    """Upload ``local`` under ``prefix`` with its second train shard's bytes changed (same size)."""
    url = s3.put_build(local, prefix)
    shard = read_manifest(local).split("train").shards[1]
    data = bytearray((local / shard.tar).read_bytes())
    data[2048:2064] = bytes(16)
    s3.client().put_object(Bucket=s3.bucket, Key=f"{prefix}/{shard.tar}", Body=bytes(data))
    lost = {json.loads(s["json"])["tid"] for s in tar_samples(local / shard.tar).values()}
    return url, f"{url}/{shard.tar}", lost


def test_the_plan_reads_an_s3_build_as_the_local_one(local: Path, s3: S3, tmp_path: Path) -> None:
    url = s3.put_build(local, "same")
    here, remote = loader(str(local), tmp_path / "unused"), loader(url, tmp_path / "cache")
    a = [b for _ in range(2) for b in here]
    b = [b for _ in range(2) for b in remote]
    assert len(a) == len(b) == 16 and all((x["x"] == y["x"]).all() for x, y in zip(a, b))
    assert remote.caches[0].stats.fetched == len(read_manifest(local).split("train").shards)  # each once


def test_a_corrupt_object_stops_the_run_by_default(local: Path, s3: S3, tmp_path: Path) -> None:
    url, tar, _ = corrupt(s3, local, "stop")
    with pytest.raises(CorruptShard, match=r"sha256 .* the manifest says") as e:
        [b for b in loader(url, tmp_path / "cache")]
    assert str(e.value).startswith(tar) and "\n" not in str(e.value)


def test_a_corrupt_object_is_skipped_from_the_next_epoch_on(local: Path, s3: S3, tmp_path: Path) -> None:
    url, tar, lost = corrupt(s3, local, "skip")
    trace = tmp_path / "trace"
    ld = loader(url, tmp_path / "cache", on_bad_shard="skip", trace=str(trace))
    with pytest.warns(UserWarning, match="on_bad_shard=skip: .*sha256"):
        first = list(ld)
    second = list(ld)
    assert ld.skipped_shards == [tar]
    assert len(first) == 8 and all(b["x"].shape[0] == 4 for b in first)  # every batch still full
    assert len(second) == (16 - len(lost)) // 2  # the plan without the shard's tracks
    rows = [json.loads(ln) for ln in (trace / "rank0.jsonl").read_text().splitlines()]
    by_epoch = Counter((r["epoch"], r["tid"] in lost) for r in rows)
    assert by_epoch[(0, True)] == 0 and by_epoch[(1, True)] == 0  # no chunk of the bad shard, ever


def test_kept_ids_survive_a_kill_halfway_and_a_failing_store_is_one_line(
    local: Path, s3: S3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The catalog keeps a remote build's ids beside the index copies (written to a temporary name,
    then its stamp): a run killed between the two leaves no stamp, and the next run reads the ids
    again (never trusting the unstamped file); a store that fails those reads is one line naming
    the tar, before any pipeline."""
    import s3fs.core

    url = s3.put_build(local, "kept-ids")
    ref = [b["x"] for b in loader(str(local), tmp_path / "unused")]
    first = loader(url, tmp_path / "cache")
    folder = first.caches[0].folder
    first.caches[0].close()
    stamps = sorted(folder.glob("*.ids.sha256"))
    assert stamps and len(stamps) == len(sorted(folder.glob("*.ids.npy")))
    for stamp in stamps:  # killed after each ids file, before its stamp; one file scrambled too
        stamp.unlink()
    kept = sorted(folder.glob("*.ids.npy"))[0]
    np.save(kept, np.zeros_like(np.load(kept)))
    (folder / ".leftover.ids.npy.99.tmp.npy").write_bytes(b"half")
    before = s3.server.requests()
    again = loader(url, tmp_path / "cache")
    samples = read_manifest(local).split("train").num_samples
    assert (s3.server.requests() - before)["GET"] >= samples  # every sample's ids read again
    assert all(torch.equal(x, b["x"]) for x, b in zip(ref, again, strict=True))
    again.caches[0].close()

    real = s3fs.core.S3FileSystem._call_s3

    async def refuse(self, method, *args, **kw):  # type: ignore[no-untyped-def]
        if method == "get_object" and not str(kw.get("Range", "bytes=0-")).startswith("bytes=0-"):
            raise ConnectionError("the store stopped answering")
        return await real(self, method, *args, **kw)

    monkeypatch.setattr(s3fs.core.S3FileSystem, "_call_s3", refuse)
    with pytest.raises(StorageError) as e:
        loader(s3.put_build(local, "refused"), tmp_path / "other")
    assert str(e.value).startswith(f"{s3.url('refused')}/train/") and "\n" not in str(e.value)
