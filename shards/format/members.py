"""A sample's fixed-size members: which ones a build's samples carry, and where each id lives.

Besides its media (audio, or a spectrogram image per channel) and its ``json``, a sample
carries three little-endian int64 fields the loader needs: ``tid`` (the track's index in its
split), ``lbl`` (``TaskSpec.label_width`` entries) and, for audio builds from version 2 on,
``seg`` (``SEGMENT_FIELDS``). Version 3 packs them into ONE member, ``ids`` =
``[tid, *lbl, *seg]``: DALI's webdataset reader issues one request per member per sample, so
reading ``s3://`` shards directly costs 2 requests per audio sample instead of 4. Versions 1
and 2 store them as separate members, and still read.

Everything that writes or reads these members (the shard task, the DALI graph, the shard
checks, the CPU baselines and benchmarks, the tests' tar readers) takes the layout from here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from shards.format.manifest import (
    IDS_EXT,
    LABEL_EXT,
    PACKED_VERSION,
    SEGMENT_EXT,
    SEGMENT_FIELDS,
    TRACK_EXT,
    VERSION,
    Manifest,
)

T = TypeVar("T")
SEPARATE = {"lbl": LABEL_EXT, "tid": TRACK_EXT, "seg": SEGMENT_EXT}
"""Versions 1-2: field -> member extension, in the order the members were written."""


@dataclass(frozen=True)
class MemberLayout:
    """The int64 fields a build's samples carry and the members that hold them."""

    version: int
    label_width: int
    segmented: bool  # audio samples from version 2 on carry segment fields

    @property
    def packed(self) -> bool:
        """One ``ids`` member (version 3) rather than ``lbl``, ``tid`` (and ``seg``)."""
        return self.version >= PACKED_VERSION

    @property
    def widths(self) -> dict[str, int]:
        """int64 entries per field, in their packed order: ``tid``, ``lbl`` (, ``seg``)."""
        out = {"tid": 1, "lbl": self.label_width}
        if self.segmented:
            out["seg"] = len(SEGMENT_FIELDS)
        return out

    @property
    def order(self) -> list[str]:
        """The fields in the order their entries are stored (all members' bytes concatenated)."""
        return list(self.widths) if self.packed else [f for f in SEPARATE if f in self.widths]

    @property
    def members(self) -> dict[str, int]:
        """Member extension -> its size in bytes, in the order a sample stores them."""
        widths = self.widths
        if self.packed:
            return {IDS_EXT: 8 * sum(widths.values())}
        return {ext: 8 * widths[f] for f, ext in SEPARATE.items() if f in widths}

    def split(self, values: Sequence[T]) -> dict[str, T]:
        """The fields ``{"tid", "lbl"(, "seg")}`` from the members' int64 vectors in ``members``
        order: numpy arrays, or DALI CPU nodes (constant-bound subscripts) alike."""
        assert len(values) == len(self.members), (len(values), self.members)
        if not self.packed:
            return dict(zip((f for f in SEPARATE if f in self.widths), values))
        (ids,) = values
        out, at = {}, 0
        for name, width in self.widths.items():
            out[name] = ids[at : at + width]  # type: ignore[index]
            at += width
        return out

    def pack(self, tid: int, label: bytes, seg: Sequence[int] | None = None) -> dict[str, bytes]:
        """A sample's fixed-size members ``{ext: bytes}`` for the shard writer (``label``: the
        ``TaskSpec.encode`` bytes; ``seg``: the ``SEGMENT_FIELDS`` of a segmented build)."""
        fields = {"tid": np.asarray([tid], dtype="<i8"), "lbl": np.frombuffer(label, dtype="<i8")}
        if self.segmented:
            assert seg is not None, "a segmented build's sample needs its segment fields"
            fields["seg"] = np.asarray(seg, dtype="<i8")
        for name, width in self.widths.items():
            assert fields[name].size == width, (name, fields[name].size, width)
        if self.packed:
            return {IDS_EXT: np.concatenate([fields[f] for f in self.widths]).tobytes()}
        return {ext: fields[f].tobytes() for f, ext in SEPARATE.items() if f in self.widths}

    def unpack(self, members: Mapping[str, bytes], where: str) -> dict[str, np.ndarray]:
        """The int64 fields of one sample read outside DALI (``{ext: bytes}``); a member that is
        missing or of the wrong size is one error naming ``where`` (the tar and the sample key)."""
        values = []
        for ext, size in self.members.items():
            data = members.get(ext)
            if data is None:
                raise ValueError(f"{where}: no .{ext} member (manifest version {self.version})")
            if len(data) != size:
                raise ValueError(
                    f"{where}: .{ext} member has {len(data)} bytes, expected {size} "
                    f"(manifest version {self.version}, {self.label_width} label entries)"
                )
            values.append(np.frombuffer(data, dtype="<i8"))
        return {k: v.copy() for k, v in self.split(values).items()}


def member_layout(manifest: Manifest) -> MemberLayout:
    """The fixed-size members of ``manifest``'s samples (by its version, kind and task)."""
    return MemberLayout(manifest.version, manifest.task.label_width, manifest.segmented)


def written_layout(kind: str, label_width: int) -> MemberLayout:
    """The layout this version of the shard writer produces for a build of ``kind``."""
    return MemberLayout(VERSION, label_width, kind == "audio")
