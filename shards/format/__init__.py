"""What a build *is*, for every reader: the one face other stages import (docs/shard-format.md).

A build is a folder (local or ``s3://``/``gs://``): ``manifest.json``, ``SPLIT/NNNNNN.tar`` with
a DALI index ``.idx`` beside each, and ``rejects.jsonl``. Modules behind this face:

- ``manifest``: the manifest's dataclasses, reading and checking it (``read_manifest``);
- ``members``: which tar members a sample carries, by format version (``member_layout``);
- ``writer``: the tar + index writer the builder uses, and ``read_index``;
- ``verify``: sizes and sha256 of shards and indexes against the manifest;
- ``copy``: a build from one location to another, verified, manifest last;
- ``storage`` (+ ``storage_errors``): one API for a local folder and an object store, one
  error line per failure.

Other stages import names from ``shards.format`` only (tests/test_layering.py); this room
imports only ``shards.base``.
"""

from shards.format import storage
from shards.format.copy import copy_build
from shards.format.manifest import (
    AUDIO_EXT,
    MANIFEST,
    META_EXT,
    REJECTS,
    SEGMENT_FIELDS,
    Codec,
    Manifest,
    ShardInfo,
    SplitInfo,
    read_manifest,
)
from shards.format.members import MemberLayout, member_layout
from shards.format.storage_errors import StorageError
from shards.format.verify import BadShard, check_shard, diagnose, files_of, sha256_of, verify_first_open
from shards.format.writer import read_index

__all__ = [
    "AUDIO_EXT",
    "MANIFEST",
    "META_EXT",
    "REJECTS",
    "SEGMENT_FIELDS",
    "BadShard",
    "Codec",
    "Manifest",
    "MemberLayout",
    "ShardInfo",
    "SplitInfo",
    "StorageError",
    "copy_build",
    "diagnose",
    "files_of",
    "member_layout",
    "read_index",
    "read_manifest",
    "sha256_of",
    "storage",
    "verify_first_open",
    "check_shard",
]
