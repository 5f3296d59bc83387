"""Object storage never feeds a wrong byte (issue 27): a rebuild at the same URL, two processes on
one cache folder, epoch boundaries on 2 ranks with a small cache, local disk faults while caching;
and the cache's hardening and deadlines (issue 28). A local S3 server in its own process
(tests/helpers/s3.py); each test fails on the code before the fix."""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers.faults import tmpfs
from helpers.s3 import S3
from test_remote_shards import epochs, make, same

import pipelines.cache_files as cache_files
from pipelines.bench.small import small_configs
from pipelines.remote import reader_inputs
from pipelines.shard_cache import CacheWaitStopped, ShardCache
from shards.base.atomic import WriteError
from shards.format import BadShard, storage
from shards.format.copy import copy_build
from shards.format.manifest import read_manifest

SR = 8000


@pytest.fixture(scope="module")
def builds(synth_shards) -> tuple[Path, Path]:
    """Two builds of the same shape from different seeds (other audio lengths: other offsets)."""
    kw = dict(tracks=13, seconds=2.5, sample_rate=SR, shard_size_mb=0.1)
    return synth_shards(**kw), synth_shards(**kw, seed=1)


@pytest.fixture(scope="module")
def one_per_shard(synth_shards, s3: S3) -> tuple[Path, str]:
    """26 training shards of one track each: a cache of 60% of the split evicts every epoch."""
    local = synth_shards(tracks=36, seconds=1.2, sample_rate=SR, shard_size_mb=0.001)
    return local, s3.put_build(local, "exact-one-per-shard")


def _train_shards(build: Path):
    return read_manifest(build).split("train").shards


def _bound(build: Path, share: float = 0.6) -> float:
    """loader.cache_gb holding ``share`` of the training split."""
    return share * sum(s.bytes for s in _train_shards(build)) / 1e9


def test_a_rebuild_at_the_same_url_reads_its_own_indexes(builds, s3: S3, tmp_path: Path) -> None:
    a, b = builds
    assert [(a / s.index).read_bytes() for s in _train_shards(a)] != [
        (b / s.index).read_bytes() for s in _train_shards(b)
    ]
    url = s3.url("rebuilt")
    copy_build(a, url, show=False)
    first = make(url, "train", tmp_path / "cache")
    epochs(first, 1)
    first.caches[0].close()
    copy_build(b, url, show=False)  # a new build at the same prefix, the old cache still on disk
    same(epochs(make(b, "train"), 1), epochs(make(url, "train", tmp_path / "cache"), 1))
    for remote in ("direct", "cache"):  # the index copies DALI is given are the new manifest's
        lc = dataclasses.replace(small_configs()[2], cache_dir=str(tmp_path / "cache"), remote=remote)
        inputs = reader_inputs(read_manifest(url), "train", lc, rank=0, world_size=1, batch=4)
        for s, idx in zip(_train_shards(b), inputs.idxs):
            assert storage.sha256_file(idx) == s.index_sha256, remote
        if inputs.gate is not None:
            inputs.gate.cache.close()


def test_a_local_index_that_differs_from_the_manifest_is_fetched_again(builds, s3: S3, tmp_path) -> None:
    local, _ = builds
    url = s3.put_build(local, "stale-index")
    first = make(url, "train", tmp_path / "cache")
    ref = epochs(first, 1)
    idx = first.caches[0].indexes[0]
    first.caches[0].close()
    data = bytearray(idx.read_bytes())
    data[-3:-1] = b"99"  # same size, another offset
    idx.write_bytes(bytes(data))
    again = make(url, "train", tmp_path / "cache")
    assert again.caches[0].folder == first.caches[0].folder
    assert storage.sha256_file(idx) == _train_shards(local)[0].index_sha256
    same(ref, epochs(again, 1))


def test_index_sizes_are_checked_with_the_tars(builds, s3: S3) -> None:
    local, _ = builds
    url = s3.put_build(local, "long-index")
    s = _train_shards(local)[1]
    body = (local / s.index).read_bytes() + b"\n"
    s3.client().put_object(Bucket=s3.bucket, Key=f"long-index/{s.index}", Body=body)
    with pytest.raises(ValueError, match=rf"differ in size from the manifest: {s.index} \("):
        read_manifest(url)


def _clone(batch: dict) -> dict:
    return {k: v.clone() for k, v in batch.items()}


def _alternate(loaders: list, iters: list, got: list[list]) -> None:
    """Batches from each iterator in turn (``got[k]``: loader k's epoch) until all are done."""
    live = list(range(len(loaders)))
    while live:
        for k in list(live):
            batch = next(iters[k], None)
            if batch is None:
                live.remove(k)
            else:
                got[k].append(_clone(batch))


def test_two_processes_never_share_a_cache_folder(one_per_shard, tmp_path: Path, caplog) -> None:
    """Two loaders alive at once on one cache root with a cache of 60% of the split, the second
    started while the first is mid-epoch (so their windows differ and each evicts): the second
    works in a folder beside the first, and both read exactly the local batches."""
    local, url = one_per_shard
    kw = dict(
        batch_size=4, initial_fill=2, prefetch=1, cache_ahead=1, cache_workers=1, cache_gb=_bound(local)
    )
    one = make(url, "train", tmp_path / "shared", **kw)
    first = iter(one)
    head = [_clone(next(first)) for _ in range(6)]
    with caplog.at_level(logging.INFO, logger="musicstream"):
        two = make(url, "train", tmp_path / "shared", **dict(kw, seed=1))
    assert two.caches[0].folder == one.caches[0].folder.with_name("rank0-1")
    assert f"{one.caches[0].folder}: in use by pid {os.getpid()} on host " in caplog.text
    got: list[list[list]] = [[head], [[]]]
    _alternate([one, two], [first, iter(two)], [got[0][0], got[1][0]])
    got[0].append([])
    got[1].append([])
    _alternate([one, two], [iter(one), iter(two)], [got[0][1], got[1][1]])
    same(epochs(make(local, "train", **kw)), got[0])
    same(epochs(make(local, "train", **dict(kw, seed=1))), got[1])
    assert one.caches[0].stats.evicted > 0 and two.caches[0].stats.evicted > 0


def test_a_held_or_unlockable_folder_is_never_used(one_per_shard, tmp_path: Path, monkeypatch) -> None:
    local, url = one_per_shard
    base = tmp_path / "c" / "x" / "rank0"
    held = [cache_files.claim_folder(base) for _ in range(cache_files.SLOTS)]
    shards = _train_shards(local)
    urls, idxs = read_manifest(url).urls("train")
    with pytest.raises(cache_files.CacheBusy) as e:
        ShardCache(urls, idxs, shards, base, max_bytes=10**9)
    assert f"{base}: shard cache folder in use by pid {os.getpid()} on host " in str(e.value)
    assert "\n" not in str(e.value)
    for _, lock in held:
        lock.release()

    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(cache_files.fcntl, "flock", no_flock)
    with pytest.raises(cache_files.CacheBusy, match=f"{base}: shard cache folder cannot be locked"):
        ShardCache(urls, idxs, shards, base, max_bytes=10**9)


def test_evicted_and_pending_shards_are_empty_never_zeros(one_per_shard, tmp_path: Path) -> None:
    local, url = one_per_shard
    shards = _train_shards(local)
    urls, idxs = read_manifest(url).urls("train")
    cache = ShardCache(
        urls, idxs, shards, tmp_path / "r", max_bytes=3 * max(s.bytes for s in shards), ahead=1
    )
    assert all(p.stat().st_size == 0 for p in cache.tars)  # not yet fetched: empty, not sparse
    for i in range(len(shards)):
        cache.ensure([i])
    assert cache.stats.evicted > 0
    sizes = [p.stat().st_size for p in cache.tars]
    assert sizes[-1] == shards[-1].bytes and sizes[0] == 0  # evicted: truncated to nothing
    assert oct(cache.folder.stat().st_mode & 0o777) == oct(0o700)
    cache.close()


def test_two_ranks_three_epochs_with_a_small_cache_equal_local(one_per_shard, tmp_path: Path) -> None:
    """Rank 0 and rank 1 of 2, three epochs, a read window of a few tracks and a cache of 60% of
    the split: exactly the batches of the local build, and no fetch beyond the reader's needs."""
    local, url = one_per_shard
    kw = dict(
        batch_size=4, initial_fill=2, prefetch=1, cache_ahead=1, cache_workers=1, cache_gb=_bound(local)
    )
    for rank in (0, 1):
        ref = epochs(make(local, "train", rank=rank, world_size=2, **kw), 3)
        remote = make(url, "train", tmp_path / "two", rank=rank, world_size=2, **kw)
        asked: list[list[int]] = []
        real = remote.caches[0].ensure
        remote.caches[0].ensure = lambda n, u=(), real=real, asked=asked: (asked.append(list(n)), real(n, u))[
            1
        ]
        same(ref, epochs(remote, 3))
        # each batch waits for exactly its own shards: 2 tracks, one shard each
        assert asked and all(1 <= len(n) <= 2 for n in asked), asked
        assert remote.caches[0].stats.evicted > 0
        remote.caches[0].close()


def test_a_full_cache_disk_is_a_write_error_not_the_stores(builds, s3: S3, tmp_path: Path) -> None:
    local, _ = builds
    url = s3.put_build(local, "disk-full")
    shards = _train_shards(local)
    urls, idxs = read_manifest(url).urls("train")
    with tmpfs(tmp_path / "small", 3 * max(s.bytes for s in shards) // 2) as mnt:
        cache = ShardCache(urls, idxs, shards, mnt / "r", max_bytes=10**9, ahead=len(shards))
        with pytest.raises(WriteError) as e:
            cache.ensure(list(range(len(shards))))
        cache.close()
    text = str(e.value)
    assert text.startswith(f"{mnt / 'r'}: no space left on device while writing the cached copy of ")
    assert "\n" not in text and "needs" in text and "s3" not in text.split(" while ")[0]


def test_a_shard_that_fits_with_no_room_for_its_marker_is_the_same_write_error(
    builds, s3: S3, tmp_path: Path
) -> None:
    """Downloads run in parallel, so the write that meets a full disk may be a marker's: the
    user is told the same thing (which shard's cached copy, how much it needs)."""
    local, _ = builds
    url = s3.put_build(local, "marker-full")
    shards = _train_shards(local)
    urls, idxs = read_manifest(url).urls("train")
    page = os.sysconf("SC_PAGE_SIZE")
    pages = -(-shards[0].bytes // page)
    with tmpfs(tmp_path / "exact", (pages + 64) * page) as mnt:
        cache = ShardCache(urls, idxs, shards, mnt / "r", max_bytes=10**9, ahead=1)
        # leave exactly the shard's pages free (the lock and index copies are already written)
        (mnt / "ballast").write_bytes(bytes(shutil.disk_usage(mnt).free - pages * page))
        assert shutil.disk_usage(mnt).free == pages * page
        with pytest.raises(WriteError) as e:
            cache.ensure([0])
        copies = [p for p in (mnt / "r").rglob("*.tar") if p.stat().st_size]
        assert len(copies) == 1 and copies[0].stat().st_size == shards[0].bytes  # the shard fitted
        assert not copies[0].with_name(copies[0].name + ".sha256").exists()  # not present
        cache.close()
    text = str(e.value)
    assert text.startswith(
        f"{copies[0].parent}: no space left on device while writing the cached copy of {copies[0].name} "
        "(its sha256 marker"
    ), text
    assert "\n" not in text and "needs 65 B" in text


def test_a_read_only_cache_is_a_write_error_not_access_denied(builds, s3: S3, tmp_path: Path) -> None:
    local, _ = builds
    url = s3.put_build(local, "read-only")
    ro = tmp_path / "ro"
    with tmpfs(ro, 1 << 20, read_only=True) as mnt:
        with pytest.raises(WriteError, match=f"^{mnt}.*: read-only file system while writing"):
            make(url, "train", mnt)


def test_cache_files_are_private_and_never_followed(builds, s3: S3, tmp_path: Path) -> None:
    local, _ = builds
    url = s3.put_build(local, "hardened")
    first = make(url, "train", tmp_path / "cache")
    folder, tar = first.caches[0].folder, first.caches[0].tars[0]
    first.caches[0].close()
    target = tmp_path / "victim"
    target.write_bytes(b"precious")
    tar.unlink()
    tar.symlink_to(target)  # planted in the cache folder
    with pytest.raises(ValueError, match=f"{tar}: a symlink in the shard cache; refused"):
        make(url, "train", tmp_path / "cache")
    assert target.read_bytes() == b"precious"
    tar.unlink()
    if os.geteuid() != 0:
        pytest.skip("giving a folder to another user needs root")
    os.chown(folder, 4321, 4321)  # a folder someone else owns
    with pytest.raises(ValueError, match=f"{folder}: owned by uid 4321, not by you"):
        make(url, "train", tmp_path / "cache")


def test_flattened_names_that_collide_are_refused(builds) -> None:
    local, _ = builds
    a, b = _train_shards(local)[:2]
    b = dataclasses.replace(b, tar=a.tar.replace("/", "-"))
    with pytest.raises(ValueError, match=f"'{b.tar}' and '{a.tar}' map to one shard cache file"):
        cache_files.local_names([a, b], "where")


def _stall_tars(monkeypatch, seconds: float, *, after: int = 0, on_stall=None) -> None:
    """The store answers the first GET of each tar's start after the first ``after`` ones only after
    ``seconds`` (``on_stall()`` called as the first stall starts): at the client's request layer,
    under whatever way a cache reads a shard (the training catalog's reads of the samples' ids
    members, ranges inside a tar, are not stalled)."""
    import asyncio

    import s3fs.core

    real, seen = s3fs.core.S3FileSystem._call_s3, set()

    async def call(self, method, *args, **kw):
        key = str(kw.get("Key", ""))
        start = str(kw.get("Range", "bytes=0-")).startswith("bytes=0-")
        if method == "get_object" and key.endswith(".tar") and start and key not in seen:
            seen.add(key)
            if len(seen) > after:
                if on_stall is not None and len(seen) == after + 1:
                    on_stall()
                await asyncio.sleep(seconds)
        return await real(self, method, *args, **kw)

    monkeypatch.setattr(s3fs.core.S3FileSystem, "_call_s3", call)


def test_a_stalled_download_ends_the_wait_with_one_line(builds, s3: S3, tmp_path: Path, monkeypatch) -> None:
    local, _ = builds
    url = s3.put_build(local, "stalled")
    loader = make(url, "train", tmp_path / "cache", cache_stall_s=1.0)
    _stall_tars(monkeypatch, 6.0)
    t0 = time.monotonic()
    with pytest.raises(
        BadShard, match=r"its download delivered no byte for \d+ s \(loader.cache_stall_s\)"
    ) as e:
        next(iter(loader))
    assert time.monotonic() - t0 < 5.5 and str(e.value).startswith(f"{url}/train/") and loader._pipe is None


def test_a_caught_sigterm_ends_a_blocked_wait(builds, s3: S3, tmp_path: Path, monkeypatch) -> None:
    """A handler that saves on SIGTERM (the trainer's) still runs, and the wait ends at once."""
    local, _ = builds
    url = s3.put_build(local, "sigterm")
    loader = make(url, "train", tmp_path / "cache")
    _stall_tars(monkeypatch, 6.0)
    got: list[int] = []
    old = signal.signal(signal.SIGTERM, lambda s, f: got.append(s))
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM))
    try:
        timer.start()
        t0 = time.monotonic()
        with pytest.raises(CacheWaitStopped, match="SIGTERM while the reader waited for this shard"):
            next(iter(loader))
        assert time.monotonic() - t0 < 5.5 and got == [signal.SIGTERM]  # the stall is 6 s
    finally:
        timer.cancel()
        signal.signal(signal.SIGTERM, old)


def test_a_read_of_a_shard_the_cache_does_not_hold_is_one_line(builds, s3: S3, tmp_path: Path) -> None:
    """A cache file cut under the reader (what a wrong read window would do) stops the pass with
    one line naming the shard's URL, never zeros fed as audio."""
    local, _ = builds
    url = s3.put_build(local, "cut-under")
    loader = make(url, "train", tmp_path / "cache", batch_size=4, shuffle=False, initial_fill=1)
    it = iter(loader)
    next(it)
    loader.caches[0].ensure = lambda *a, **k: None  # the gate lets everything through
    for e in loader.caches[0].entries:
        e.local.write_bytes(b"")  # every file empty, as the cache leaves one it does not hold
    with pytest.raises(BadShard, match="did not hold it complete") as e:
        list(it)
    assert str(e.value).startswith(f"{url}/train/") and "\n" not in str(e.value)
    loader.caches[0].close()  # its read-ahead must not run on into the next test


def test_first_open_in_cache_mode_downloads_nothing_twice(
    builds, s3: S3, tmp_path: Path, monkeypatch, capsys
) -> None:
    """Cache mode: the cache's own sha256 check is loader.verify=first_open (no tar is read before
    the first batch). Direct mode: the download it costs shows a progress line."""
    local, _ = builds
    url = s3.put_build(local, "first-open")
    before = s3.server.requests(under=url)
    loader = make(url, "train", tmp_path / "cache", verify="first_open")
    shards = len(_train_shards(local))
    # the manifest, the indexes and the ids files (the plan's catalog, kept for later runs)
    assert (s3.server.requests(under=url) - before)["GET"] == 1 + 2 * shards
    loader.caches[0].close()
    monkeypatch.setenv("MUSICSTREAM_PROGRESS", "lines")
    make(url, "train", tmp_path / "cache", verify="first_open", remote="direct")
    assert (
        f"loader.verify=first_open: downloading train to check: {shards}/{shards} shard"
        in capsys.readouterr().err
    )


def _train_args(shards: str, out: Path, seed: int, cache: Path, bound: float, epochs: int = 1) -> list[str]:
    """``python -m train`` arguments: TINY, 2 tracks per batch, a small read window, the cache."""
    from test_train_e2e import ROOT, TINY

    small = [
        "loader.batch_size=4",
        "loader.initial_fill=2",
        "loader.prefetch=1",
        "loader.cache_ahead=1",
        "loader.cache_workers=1",
    ]
    return [
        "--config", str(ROOT / "configs" / "demo_customcnn.toml"), f"--data.shards={shards}",
        f"--train.out={out}", f"--train.epochs={epochs}", f"--train.seed={seed}", f"--loader.seed={seed}",
        f"--loader.cache_dir={cache}", f"--loader.cache_gb={bound}", *[f"--{t}" for t in TINY + small],
    ]  # fmt: skip


def _train_cmd(shards: str, out: Path, seed: int, cache: Path, bound: float) -> list[str]:
    return [sys.executable, "-m", "train", *_train_args(shards, out, seed, cache, bound)]


def _losses(out: Path) -> list[float]:
    from train.logger import read_metrics

    return [r["train/loss"] for r in read_metrics(out) if "train/loss" in r]


@pytest.mark.slow
def test_two_trainings_on_one_cache_root_log_the_local_losses(one_per_shard, tmp_path: Path) -> None:
    """Two `python -m train` started together on one cache root, different seeds, a small read
    window and a cache of 60% of the split: each logs exactly the losses of its run from local disk."""
    from test_train_e2e import ROOT

    local, url = one_per_shard
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "MUSICSTREAM_PROGRESS": "none"}
    cache, bound = tmp_path / "cache", _bound(local)
    runs = [
        subprocess.Popen(_train_cmd(url, tmp_path / f"s3-{seed}", seed, cache, bound), cwd=ROOT, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for seed in (1, 2)
    ]  # fmt: skip
    for proc in runs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
    for seed in (1, 2):
        ref = subprocess.run(_train_cmd(str(local), tmp_path / f"local-{seed}", seed, cache, bound), cwd=ROOT,
                             env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
        assert ref.returncode == 0, ref.stderr[-3000:]
        got = _losses(tmp_path / f"s3-{seed}")
        assert len(got) == 13 and got == _losses(tmp_path / f"local-{seed}"), seed
    assert _losses(tmp_path / "s3-1") != _losses(tmp_path / "s3-2")
    folders = sorted(p.name for p in cache.glob("*/train/*"))
    assert folders == ["rank0", "rank0-1"], folders  # started together: one folder each


def test_the_cache_sends_one_get_per_shard_and_index_and_nothing_else(builds, s3: S3, tmp_path: Path) -> None:
    local, _ = builds
    url = s3.put_build(local, "requests")
    shards = _train_shards(local)
    urls, idxs = read_manifest(url).urls("train")
    before = s3.server.requests(under=url)
    cache = ShardCache(urls, idxs, shards, tmp_path / "b" / "s" / "r", max_bytes=10**9)
    cache.ensure(list(range(len(shards))))
    cache.close()
    assert dict(s3.server.requests(under=url) - before) == {"GET": 2 * len(shards)}  # no HEAD, no LIST


@pytest.mark.slow
def test_two_gloo_ranks_three_epochs_with_a_small_cache_log_the_local_losses(one_per_shard, tmp_path) -> None:
    """torchrun, 2 gloo ranks, 3 epochs, a read window of a few tracks and a cache of 60% of the
    split per rank: the losses (averaged over both ranks each step) equal the local build's."""
    from test_train_ddp import torchrun

    local, url = one_per_shard
    bound = _bound(local)
    for name, shards in (("local", str(local)), ("s3", url)):
        torchrun(_train_args(shards, tmp_path / name, 0, tmp_path / "cache", bound, epochs=3))
    got = _losses(tmp_path / "s3")
    assert len(got) == 3 * (26 // 2 // 2) and got == _losses(tmp_path / "local")
    assert sorted(p.name for p in (tmp_path / "cache").glob("*/train/*")) == ["rank0", "rank1"]


@pytest.mark.slow
def test_a_sigterm_while_training_waits_for_a_shard_saves_then_one_line(
    one_per_shard, tmp_path: Path, monkeypatch, capsys
) -> None:
    """The store stops answering at the 12th shard; a SIGTERM lands while the trainer's batch
    waits for it: the run checkpoints and stops with one line naming that shard."""
    from shards.base.errors import run_cli
    from train.__main__ import main as train_main

    local, url = one_per_shard
    timer = threading.Timer(2.0, os.kill, (os.getpid(), signal.SIGTERM))
    _stall_tars(monkeypatch, 8.0, after=11, on_stall=timer.start)
    out = tmp_path / "run"
    args = _train_args(url, out, 0, tmp_path / "cache", _bound(local)) + ["--train.log_every=1"]
    assert run_cli(train_main, args) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert (
        len(err) == 1 and "SIGTERM while the reader waited for this shard; the run stopped at step" in err[0]
    )
    assert err[0].startswith(f"error: {url}/train/") and "written)" in err[0], err
    assert list((out / "checkpoints").glob("step_*.pt"))
