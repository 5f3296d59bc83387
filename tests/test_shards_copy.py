"""``python -m shards copy``: local -> s3:// -> local, byte for byte; sha256 verified and recorded;
resumable; the manifest written last (a local S3 server in its own process)."""

from __future__ import annotations

import filecmp
from pathlib import Path

import pytest
from helpers.s3 import S3

from shards.cli import main
from shards.format import storage
from shards.format.copy import copy_build
from shards.format.manifest import MANIFEST, read_manifest


@pytest.fixture(scope="module")
def local(synth_shards) -> Path:
    return synth_shards(tracks=13, seconds=2.5, sample_rate=8000, shard_size_mb=0.1)


def _shards(build: Path) -> list:
    return [s for info in read_manifest(build).splits.values() for s in info.shards]


def test_round_trip_is_byte_identical(local: Path, s3: S3, tmp_path: Path, capsys) -> None:
    url = s3.url("copy-rt")
    assert main(["copy", str(local), url, "--quiet"]) == 0
    n = len(_shards(local))
    assert capsys.readouterr().out.startswith(f"{url}: {n} shard(s) copied")
    for s in _shards(local):
        assert storage.stat(storage.join(url, s.tar)) == storage.ObjectInfo(s.bytes, s.sha256)
    back = tmp_path / "back"
    assert main(["copy", url, str(back), "--quiet"]) == 0
    names = sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())
    names = [n for n in names if not n.startswith(".")]  # resume bookkeeping is not part of a build
    assert sorted(p.relative_to(back).as_posix() for p in back.rglob("*") if p.is_file()) == names
    assert all(filecmp.cmp(local / n, back / n, shallow=False) for n in names)


def test_interrupted_copy_has_no_manifest_and_resumes(
    local: Path, s3: S3, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = s3.url("copy-resume")
    real, calls = storage.upload, []

    def flaky(src, dst, *, sha256=None):
        calls.append(dst)
        if len(calls) == 3:
            raise ValueError(f"{dst}: connection reset (simulated)")
        return real(src, dst, sha256=sha256)

    monkeypatch.setattr(storage, "upload", flaky)
    with pytest.raises(ValueError, match="simulated"):
        copy_build(local, url, workers=1, show=False)
    assert not storage.exists(storage.join(url, MANIFEST))  # not a build until complete
    monkeypatch.setattr(storage, "upload", real)
    report = copy_build(local, url, workers=1, show=False)
    assert report.skipped == 2 and report.copied == len(_shards(local)) - 2
    assert read_manifest(url).splits.keys() == read_manifest(local).splits.keys()


def test_a_corrupt_source_object_is_refused(local: Path, s3: S3, tmp_path: Path, capsys) -> None:
    url = s3.put_build(local, "copy-corrupt")
    s = _shards(local)[0]
    data = bytearray((local / s.tar).read_bytes())
    data[-2000] ^= 1
    s3.client().put_object(Bucket=s3.bucket, Key=f"copy-corrupt/{s.tar}", Body=bytes(data))
    assert main(["copy", url, str(tmp_path / "out"), "--quiet", "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {url}/{s.tar}: sha256")
    assert not (tmp_path / "out" / MANIFEST).exists()


def test_missing_bucket_is_one_line(local: Path, s3: S3, capsys) -> None:
    assert main(["copy", str(local), "s3://no-such-bucket-x/b", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bucket 'no-such-bucket-x' does not exist" in err


def test_a_failed_copy_over_a_build_leaves_no_manifest(
    synth_shards, local: Path, tmp_path: Path, capsys
) -> None:
    """A copy of build B over build A that fails after its first shard: DST has no manifest (not
    A's over a mix of A's and B's shards), and the copy's report is printed before the error."""
    other = synth_shards(tracks=13, seconds=2.5, sample_rate=8000, shard_size_mb=0.1, seed=1)
    dst = tmp_path / "dst"
    assert main(["copy", str(local), str(dst), "--quiet"]) == 0
    bad = _shards(other)[1]
    src = tmp_path / "other"
    assert main(["copy", str(other), str(src), "--quiet"]) == 0
    capsys.readouterr()
    (src / bad.tar).write_bytes(b"\0" * bad.bytes)  # same size: only its sha256 tells
    assert main(["copy", str(src), str(dst), "--quiet", "--workers", "1"]) == 2
    out, err = capsys.readouterr()
    assert out.startswith(f"{dst}: 1 shard(s) copied") and "no manifest" in out, out
    assert err.count("\n") == 1 and err.startswith(f"error: {src / bad.tar}: sha256"), err
    assert not (dst / MANIFEST).exists() and not (dst / "rejects.jsonl").exists()
    with pytest.raises(FileNotFoundError, match="no shard manifest"):
        read_manifest(dst)


@pytest.mark.parametrize("which", ["index", "ids"])
def test_an_index_or_ids_file_that_does_not_match_the_manifest_is_refused(
    local: Path, s3: S3, tmp_path: Path, capsys, which: str
) -> None:
    url = s3.put_build(local, f"copy-bad-{which}")
    s = _shards(local)[0]
    rel = getattr(s, which)
    data = bytearray((local / rel).read_bytes())
    data[-3:-1] = b"99" if which == "index" else bytes([data[-3] ^ 1, data[-2]])  # same size
    s3.client().put_object(Bucket=s3.bucket, Key=f"copy-bad-{which}/{rel}", Body=bytes(data))
    assert main(["copy", url, str(tmp_path / "out"), "--quiet", "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {url}/{rel}: "), err
    assert "does not belong to this build" in err
    assert not (tmp_path / "out" / MANIFEST).exists()
