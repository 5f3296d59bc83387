"""Builds in older shard-format versions, made from a fresh build, for "older shards still read".

``as_version(src, dst, version)`` rewrites a build of this version (3: one ``ids`` member per
sample) as version 2 wrote it (separate ``lbl``, ``tid``, ``seg`` members, in that order after
the media) or version 1 (no segment fields at all; whole-track builds only). The ``ids`` member
is split here from the format's description (``docs/shard-format.md``: ``[tid, *lbl, *seg]``),
not with ``shards.format.members``, so the loader's own unpacking is checked against it. The tars are
written again through the project's writer (``shards.format.writer.ShardWriter``: the DALI index
regenerated from the new offsets), and the manifest's version, shard sha256, sizes and index
fields follow; every other byte of every member is the source's.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np

from helpers.tars import tar_samples
from shards.format.manifest import MANIFEST, META_EXT, SEGMENT_FIELDS, read_manifest
from shards.format.writer import ShardWriter


def _rewrite(parts: dict[str, bytes], width: int, audio: bool, version: int, where: str) -> dict[str, bytes]:
    """One version-3 sample's members as ``version`` stores them: media first, then ``lbl``,
    ``tid`` (and, for audio in version 2, ``seg``), then ``json``."""
    ids = np.frombuffer(parts["ids"], dtype="<i8")
    nseg = len(SEGMENT_FIELDS) if audio else 0  # version 3: audio samples carry segment fields
    assert ids.size == 1 + width + nseg, f"{where}: {ids.size} ids, expected {1 + width + nseg}"
    media = {e: b for e, b in parts.items() if e not in ("ids", META_EXT)}
    old = {"lbl": ids[1 : 1 + width].tobytes(), "tid": ids[:1].tobytes()}
    if nseg and version >= 2:
        old["seg"] = ids[1 + width :].tobytes()
    return {**media, **old, META_EXT: parts[META_EXT]}


def as_version(src: Path, dst: Path, version: int) -> Path:
    """``src`` rewritten into ``dst`` as shard-format ``version`` (1 or 2) stores it."""
    m = read_manifest(src)
    assert m.version == 3 and version in (1, 2), (m.version, version)
    width, audio = m.task.label_width, m.kind == "audio"
    data = json.loads((src / MANIFEST).read_text())
    for split, info in data["splits"].items():
        if version == 1:
            assert info["num_samples"] == info["num_tracks"], "only whole-track builds exist in version 1"
        written = []
        for shard in info["shards"]:
            tar = src / shard["tar"]
            start = int(Path(shard["tar"]).stem)
            with ShardWriter(dst, split, max_bytes=1 << 40, start=start) as writer:
                for key, parts in tar_samples(tar).items():
                    writer.write(key, _rewrite(parts, width, audio, version, f"{tar}: sample {key}"))
            (out,) = writer.output
            assert out.num_samples == shard["num_samples"]
            written.append(dataclasses.asdict(out))
        info["shards"] = written
        if version == 1:
            for k in ("num_tracks", "max_segment_seconds"):
                info.pop(k, None)
    if version == 1:
        data.pop("segment_samples", None)
    data["version"] = version
    for extra in src.iterdir():  # rejects, feature stats: whatever else the build folder holds
        if extra.is_file() and extra.name != MANIFEST:
            shutil.copy2(extra, dst / extra.name)
    (dst / MANIFEST).write_text(json.dumps(data, indent=2))
    return dst
