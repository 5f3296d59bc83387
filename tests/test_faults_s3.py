"""``python -m shards verify s3://...``: an object-store build checked against its manifest
(sizes and sha256), one line per bad shard naming its URL, never a credential (a local S3
server: tests/helpers/s3.py). Its own module: the S3 server lives for one module."""

from __future__ import annotations

import io
import shutil
from collections.abc import Callable
from pathlib import Path

from helpers.faults import error_lines
from helpers.s3 import S3

from shards.base.atomic import human_bytes
from shards.base.errors import run_cli
from shards.cli import main as shards_main
from shards.format.manifest import read_manifest
from shards.format.verify import sha256_of

SMALL = dict(task="single", tracks=24, seconds=3.0, sample_rate=8000, shard_size_mb=0.12)  # 12 shards


def test_verify_an_object_store_build(
    s3: S3, synth_shards: Callable[..., Path], tmp_path: Path, capsys
) -> None:
    local = tmp_path / "build"
    shutil.copytree(synth_shards(**SMALL), local)
    m = read_manifest(local)
    url = s3.put_build(local, "verify-me")
    assert run_cli(shards_main, ["verify", url, "--quiet", "--workers", "3"]) == 0
    size = sum(s.bytes for i in m.splits.values() for s in i.shards)
    assert capsys.readouterr().out == f"{url}: all 12 shards ({human_bytes(size)}) match manifest.json\n"

    flipped = bytearray((local / "train" / "000003.tar").read_bytes())
    flipped[2000] ^= 0x10
    client, bucket = s3.client(), s3.bucket
    client.put_object(Bucket=bucket, Key="verify-me/train/000003.tar", Body=bytes(flipped))
    tar = local / "test" / "000000.tar"
    client.put_object(Bucket=bucket, Key="verify-me/test/000000.tar", Body=tar.read_bytes()[:4096])
    client.delete_object(Bucket=bucket, Key="verify-me/validation/000001.idx")
    assert run_cli(shards_main, ["verify", url, "--quiet"]) == 1
    got = capsys.readouterr()
    want = {s.tar: s for i in m.splits.values() for s in i.shards}
    assert got.out.splitlines() == [
        f"{url}/train/000003.tar: tar sha256 {sha256_of(io.BytesIO(bytes(flipped)))[:12]}... differs from the "
        f"manifest's {want['train/000003.tar'].sha256[:12]}... (corrupt: bit rot or a bad copy)",
        f"{url}/validation/000001.tar: index 000001.idx missing",
        f"{url}/test/000000.tar: tar has 4096 bytes, the manifest says {want['test/000000.tar'].bytes} (truncated)",
    ]
    assert error_lines(got.err) == [
        f"error: {url}: 3 of 12 shards differ from manifest.json; delete each bad .tar and run the same build "
        "command again (it rebuilds from there), or copy them again"
    ]
    assert not any(secret in got.out + got.err for secret in s3.secrets())


def test_verify_a_missing_object_store_build_is_one_line(s3: S3, capsys) -> None:
    url = s3.url("nothing-here")
    assert run_cli(shards_main, ["verify", url, "--quiet"]) == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and lines[0].startswith(f"error: {url}") and "Traceback" not in lines[0]
