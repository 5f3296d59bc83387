"""Hostile or broken build files are one line naming the file, never a huge read or a negative
offset handed to a reader (issue 28)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shards.format.manifest import MAX_MANIFEST_BYTES, ShardInfo, parse_manifest, read_manifest
from shards.format.writer import MAX_INDEX_BYTES, read_index


def _sparse(path: Path, head: bytes, size: int) -> Path:
    """A file of ``size`` bytes that costs no disk (a hole after ``head``)."""
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(size)
    return path


def test_an_index_with_a_negative_offset_or_size_is_refused(tmp_path: Path) -> None:
    idx = tmp_path / "000000.idx"
    idx.write_text("v1.2 2\npcm 512 1024 x.pcm json 1536 -80 x.json\npcm 2048 100 y.pcm\n")
    with pytest.raises(ValueError, match=r"000000.idx: negative offset or size for member json") as e:
        read_index(idx)
    assert "\n" not in str(e.value)
    idx.write_text("v1.2 1\npcm twelve 100 y.pcm\n")
    with pytest.raises(ValueError, match=r"000000.idx: malformed index"):
        read_index(idx)


def test_oversized_indexes_and_manifests_are_refused_before_reading(tmp_path: Path) -> None:
    idx = _sparse(tmp_path / "000000.idx", b"v1.2 1\n", MAX_INDEX_BYTES + 1)
    with pytest.raises(ValueError, match=r"000000.idx: \d+ bytes, over the 64 MiB of any shard index"):
        read_index(idx)
    build = tmp_path / "build"
    build.mkdir()
    _sparse(build / "manifest.json", b"{", MAX_MANIFEST_BYTES + 1)
    with pytest.raises(ValueError, match=r"manifest.json: \d+ bytes, over the 64 MiB of any manifest"):
        read_manifest(build)
    assert os.stat(build / "manifest.json").st_blocks < 64  # the test itself stayed small


def test_a_negative_shard_size_in_a_manifest_is_refused() -> None:
    with pytest.raises(ValueError, match=r"shard train/000000.tar: negative bytes \(-1\)"):
        ShardInfo(tar="train/000000.tar", index="train/000000.idx", num_samples=3, sha256="0" * 64, bytes=-1)
    text = '{"format": "musicstream.shards", "version": 3, "source": "folder", "sample_rate": 22050, '
    text += '"codec": "pcm16", "task": {"kind": "single", "classes": ["a"]}, "totals": {}, '
    text += '"splits": {"train": {"num_samples": 1, '
    text += '"seconds": 1, "min_seconds": 1, "max_seconds": 1, "shards": [{"tar": "train/000000.tar", '
    text += '"index": "train/000000.idx", "num_samples": -4, "sha256": "", "bytes": 10}]}}}'
    with pytest.raises(ValueError, match=r"m.json: malformed manifest: .*negative num_samples"):
        parse_manifest(text, "m.json")
