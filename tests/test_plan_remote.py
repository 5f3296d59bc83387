"""The sample plan over a build in object storage (a local S3 server in its own process): the
shard cache fetches each batch's shards as the plan reads them; a shard whose object fails the
cache's sha256 stops the run (``on_bad_shard = "stop"``) or leaves the plan from the next epoch
on (``"skip"``), the batch it fell in still full."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.s3 import S3
from helpers.tars import tar_samples

from pipelines.bench.catalog_fetch import without_ids_files
from pipelines.bench.small import small_configs, small_overrides
from pipelines.loader import build_loader
from pipelines.shard_cache import CorruptShard
from shards.format import StorageError
from shards.format.manifest import read_manifest, write_manifest
from shards.format.members import member_layout
from shards.format.writer import read_index

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


def test_an_older_builds_kept_ids_survive_a_kill_halfway_and_a_failing_store_is_one_line(
    local: Path, s3: S3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A build written before ids files: the catalog reads its ids member by member and keeps
    them beside the index copies (written to a temporary name,
    then its stamp): a run killed between the two leaves no stamp, and the next run reads the ids
    again (never trusting the unstamped file); a store that fails those reads is one line naming
    the tar, before any pipeline."""
    import s3fs.core

    url = s3.put_build(without_ids_files(local, tmp_path / "old"), "kept-ids")
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
    before = s3.server.requests(under=url)
    again = loader(url, tmp_path / "cache")
    samples = read_manifest(local).split("train").num_samples
    assert (s3.server.requests(under=url) - before)["GET"] >= samples  # every sample's ids read again
    assert all(torch.equal(x, b["x"]) for x, b in zip(ref, again, strict=True))
    again.caches[0].close()

    real = s3fs.core.S3FileSystem._call_s3

    async def refuse(self, method, *args, **kw):  # type: ignore[no-untyped-def]
        if method == "get_object" and not str(kw.get("Range", "bytes=0-")).startswith("bytes=0-"):
            raise ConnectionError("the store stopped answering")
        return await real(self, method, *args, **kw)

    monkeypatch.setattr(s3fs.core.S3FileSystem, "_call_s3", refuse)
    with pytest.raises(StorageError) as e:
        loader(s3.put_build(tmp_path / "old", "refused"), tmp_path / "other")
    assert str(e.value).startswith(f"{s3.url('refused')}/train/") and "\n" not in str(e.value)


def relabeled(local: Path, out: Path) -> Path:
    """``local`` with every train label moved to the next class, written in place of the ids
    members (and in the ids files): the same tar sizes and offsets, so the same index files (and
    index sha256s), and ids files of the same sizes."""
    shutil.copytree(local, out)
    m = read_manifest(out)
    classes, info = len(m.task.classes), m.split("train")
    shards = []
    for shard in info.shards:
        data, rows = bytearray((out / shard.tar).read_bytes()), []
        for row in read_index(out / shard.index):
            at, n = row["ids"]
            ids = np.frombuffer(bytes(data[at : at + n]), "<i8").copy()
            ids[1] = (ids[1] + 1) % classes
            data[at : at + n] = ids.tobytes()
            rows.append(ids.tobytes())
        (out / shard.tar).write_bytes(bytes(data))
        (out / str(shard.ids)).write_bytes(b"".join(rows))
        shards.append(
            dataclasses.replace(
                shard,
                sha256=hashlib.sha256(bytes(data)).hexdigest(),
                ids_sha256=hashlib.sha256(b"".join(rows)).hexdigest(),
            )
        )
    m.splits["train"] = dataclasses.replace(info, shards=shards)
    write_manifest(out, m)
    return out


def test_a_new_build_at_the_same_url_is_read_with_its_own_labels(local: Path, s3: S3, tmp_path: Path) -> None:
    """Relabeling a dataset rebuilds the same audio at the same offsets: every index file is
    byte-identical, only the tars (and their sha256s) change. A cache folder kept from the old
    build must not hand the plan the old labels."""
    assert member_layout(read_manifest(local)).members.keys() == {"ids"}
    new = relabeled(local, tmp_path / "relabeled")
    assert [s.index_sha256 for s in read_manifest(new).split("train").shards] == [
        s.index_sha256 for s in read_manifest(local).split("train").shards
    ]

    def labels(run: str) -> dict[int, int]:
        rows = [json.loads(ln) for ln in (tmp_path / run / "rank0.jsonl").read_text().splitlines()]
        return {r["tid"]: r["labels"][0] for r in rows}

    url = s3.put_build(local, "relabel")
    ld = loader(url, tmp_path / "cache", trace=str(tmp_path / "old"))
    list(ld)
    ld.caches[0].close()
    s3.put_build(new, "relabel")
    ld = loader(url, tmp_path / "cache", trace=str(tmp_path / "new"))
    list(ld)
    ld.caches[0].close()
    old, got = labels("old"), labels("new")
    classes = len(read_manifest(local).task.classes)
    assert old.keys() == got.keys() and all(got[t] == (old[t] + 1) % classes for t in old), (old, got)


def test_a_builds_ids_cost_one_get_per_shard_kept_verified_in_the_cache(
    local: Path, s3: S3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The catalog fetches each shard's ids file whole (not one ranged read per sample), keeps it
    beside the index copies and checks it against the manifest's sha256 on every run: a copy
    cut short by a kill is fetched again, and an object replaced in the store is one line."""
    url = s3.put_build(local, "ids-files")
    info = read_manifest(local).split("train")
    ref = [b["x"] for b in loader(str(local), tmp_path / "unused")]

    def ids_gets(before) -> int:  # type: ignore[no-untyped-def]
        return sum(
            n
            for (method, key), n in (s3.server.requests_by_key(under=url) - before).items()
            if method == "GET" and key.endswith(".ids")
        )

    before = s3.server.requests_by_key(under=url)
    first = loader(url, tmp_path / "cache")
    assert ids_gets(before) == len(info.shards) < info.num_samples
    assert all(torch.equal(x, b["x"]) for x, b in zip(ref, first, strict=True))
    folder = first.caches[0].folder
    first.caches[0].close()
    copies = sorted(folder.glob("*.ids"))
    assert [p.read_bytes() for p in copies] == [(local / s.ids).read_bytes() for s in info.shards]

    before = s3.server.requests_by_key(under=url)
    loader(url, tmp_path / "cache").caches[0].close()
    assert ids_gets(before) == 0  # kept: none read again

    copies[0].write_bytes(copies[0].read_bytes()[:-8])  # killed halfway through its write
    copies[1].write_bytes(bytes(len(copies[1].read_bytes())))  # same size, other bytes
    before = s3.server.requests_by_key(under=url)
    again = loader(url, tmp_path / "cache")
    assert ids_gets(before) == 2
    assert all(torch.equal(x, b["x"]) for x, b in zip(ref, again, strict=True))
    again.caches[0].close()

    shard = info.shards[0]
    data = bytearray((local / shard.ids).read_bytes())
    data[8] ^= 1
    s3.client().put_object(Bucket=s3.bucket, Key=f"ids-files/{shard.ids}", Body=bytes(data))
    with pytest.raises(ValueError) as e:
        loader(url, tmp_path / "other")
    text = str(e.value)
    assert text.startswith(f"{url}/{shard.ids}: ids file of {len(data)} bytes") and "\n" not in text, text

    import s3fs.core

    real = s3fs.core.S3FileSystem._call_s3

    async def refuse(self, method, *args, **kw):  # type: ignore[no-untyped-def]
        if method == "get_object" and str(kw.get("Key", "")).endswith(".ids"):
            raise ConnectionError("the store stopped answering")
        return await real(self, method, *args, **kw)

    monkeypatch.setattr(s3fs.core.S3FileSystem, "_call_s3", refuse)
    with pytest.raises(StorageError) as e:  # a store that stops answering: one line, before any pipeline
        loader(s3.put_build(local, "ids-refused"), tmp_path / "refused")
    text = str(e.value)
    assert text.startswith(f"{s3.url('ids-refused')}/train/") and ".ids" in text and "\n" not in text, text


def test_the_catalog_benchmark_counts_one_get_per_shard_against_one_per_sample(
    local: Path, capsys: pytest.CaptureFixture
) -> None:
    """``python -m pipelines.bench.catalog_fetch`` (its own local S3 server): the figures
    docs/benchmarks.md reports, counted at the server."""
    import os

    from pipelines.bench.catalog_fetch import main

    info = read_manifest(local).split("train")
    saved = dict(os.environ)  # the benchmark points the process at its own server
    try:
        assert main([str(local), "--workers", "1", *small_overrides(batch_size=4)]) == 0
    finally:
        os.environ.clear()
        os.environ.update(saved)
    res = json.loads(capsys.readouterr().out)
    new, old = res["ids_files"], res["per_sample"]
    assert (res["samples"], res["shards"]) == (info.num_samples, len(info.shards))
    assert (new["first_run"]["ids_files"], new["first_run"]["tar_ranges"]) == (len(info.shards), 0)
    assert (old["first_run"]["ids_files"], old["first_run"]["tar_ranges"]) == (0, info.num_samples)
    assert new["first_run"]["indexes"] == old["first_run"]["indexes"] == len(info.shards)
    assert new["second_run"]["ids_files"] == old["second_run"]["tar_ranges"] == 0
