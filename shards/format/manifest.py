"""The shard folder's ``manifest.json``: the contract between ``shards`` and ``pipelines``.

Normative description: ``docs/shard-format.md``. Everything a reader needs to stream a
build (codec, sample rate, label layout, shard lists with counts and checksums) is
here, so the pipeline can refuse a build it cannot serve before any GPU work.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import shards.format.storage as storage
from shards.base.config import to_dict
from shards.base.tasks import TaskSpec

FORMAT = "musicstream.shards"
VERSION = 3  # 3: a sample's ids, labels and segment fields packed in one ``ids`` member
READABLE_VERSIONS = (1, 2, 3)  # version 1 reads as one segment per track
PACKED_VERSION = 3  # from this version on, samples carry ``ids`` instead of ``lbl``, ``tid``, ``seg``
MANIFEST = "manifest.json"
REJECTS = "rejects.jsonl"
MAX_MANIFEST_BYTES = 64 << 20
"""Larger is no manifest (100,000 shards take ~25 MB): refused before it is read into memory."""

# Member extensions inside a sample (key.EXT). DALI takes everything after the first
# dot as the extension, so keys never contain dots.
AUDIO_EXT = {"pcm16": "pcm", "flac": "flac", "ogg": "ogg"}
IDS_EXT = "ids"  # version 3: little-endian int64 [tid, *lbl, *seg (audio)] (shards.format.members)
LABEL_EXT = "lbl"  # versions 1-2: little-endian int64 vector, TaskSpec.label_width entries
TRACK_EXT = "tid"  # versions 1-2: little-endian int64 [1]: the track's index within its split
SEGMENT_EXT = "seg"  # version 2: little-endian int64 [SEGMENT_FIELDS]
SEGMENT_FIELDS = ("sample", "index", "count", "start", "track_samples")
"""``seg`` entries: the sample's unique index in its split, its segment index within the track,
the track's segment count, its first sample within the track, the track's length in samples."""
META_EXT = "json"  # human-readable metadata (source id, labels by name, durations)

Codec = Literal["pcm16", "flac", "ogg", "none"]  # "none": image builds store no audio
SampleKind = Literal["audio", "image"]


@dataclass(kw_only=True)
class ShardInfo:
    tar: str  # path relative to the build folder, e.g. "train/000000.tar"
    index: str  # DALI index beside it, e.g. "train/000000.idx"
    num_samples: int
    sha256: str
    bytes: int
    index_sha256: str | None = None  # the index file's sha256 (absent in builds before it was recorded)
    index_bytes: int | None = None  # the index file's size in bytes (likewise)
    ids: str | None = None  # every sample's ``ids`` member in index order, e.g. "train/000000.ids"
    ids_sha256: str | None = None  # (absent in builds before it was written; with ``ids`` always)
    ids_bytes: int | None = None

    def __post_init__(self) -> None:
        for name in ("num_samples", "bytes", "index_bytes", "ids_bytes"):
            if (getattr(self, name) or 0) < 0:
                raise ValueError(f"shard {self.tar}: negative {name} ({getattr(self, name)})")
        if self.ids is not None and (self.ids_sha256 is None or self.ids_bytes is None):
            raise ValueError(f"shard {self.tar}: its ids file {self.ids!r} has no sha256 or size")

    def companions(self) -> list[tuple[str, str | None, int | None]]:
        """The small files beside the tar, as (path, sha256, bytes): its index, and its ids file
        where the build wrote one (sha256/bytes None in builds that recorded none)."""
        out = [(self.index, self.index_sha256, self.index_bytes)]
        if self.ids is not None:
            out.append((self.ids, self.ids_sha256, self.ids_bytes))
        return out


@dataclass(kw_only=True)
class SplitInfo:
    num_samples: int  # samples (= segments) in the split's shards
    seconds: float
    min_seconds: float  # of tracks
    max_seconds: float  # of tracks
    shards: list[ShardInfo]
    num_tracks: int | None = None  # version >= 2; version 1: one sample per track
    max_segment_seconds: float | None = None  # version >= 2: the longest sample

    def __post_init__(self) -> None:
        self.shards = [s if isinstance(s, ShardInfo) else ShardInfo(**s) for s in self.shards]

    @property
    def tracks(self) -> int:
        """Tracks in the split (a version-1 split stores one sample per track)."""
        return self.num_samples if self.num_tracks is None else self.num_tracks

    @property
    def longest_sample_seconds(self) -> float:
        """Duration of the split's longest sample (segment, or whole track in version 1)."""
        return self.max_seconds if self.max_segment_seconds is None else self.max_segment_seconds


@dataclass(kw_only=True)
class ImageChannel:
    """One image channel of an image build: its member extensions and the image sizes seen."""

    exts: list[str]  # member extensions, e.g. ["mel.jpg"] (several when formats are mixed)
    min_size: list[int]  # [height, width], smallest seen
    max_size: list[int]  # [height, width], largest seen


@dataclass(kw_only=True)
class Manifest:
    source: str
    sample_rate: int
    codec: Codec
    task: TaskSpec
    splits: dict[str, SplitInfo]
    totals: dict[str, int]  # input, written, rejected
    build: dict[str, Any] = field(default_factory=dict)  # arguments of the build, for provenance
    segment_samples: int | None = None  # version >= 2: samples per full segment (None: whole tracks)
    format: str = FORMAT
    version: int = VERSION
    kind: SampleKind = "audio"  # absent in a manifest = "audio"
    images: dict[str, ImageChannel] = field(default_factory=dict)  # image kind: channel -> info, in order
    root: Path | str | None = field(
        default=None, compare=False
    )  # folder or s3:// prefix read from (not stored)

    def __post_init__(self) -> None:
        if not isinstance(self.task, TaskSpec):
            self.task = TaskSpec(**self.task)
        self.splits = {k: v if isinstance(v, SplitInfo) else SplitInfo(**v) for k, v in self.splits.items()}
        self.images = {
            k: v if isinstance(v, ImageChannel) else ImageChannel(**v) for k, v in self.images.items()
        }
        if self.kind not in ("audio", "image"):
            raise ValueError(f"kind: {self.kind!r} is not audio or image")
        if self.kind == "image" and not self.images:
            raise ValueError("images: an image build lists its channels")

    @property
    def audio_ext(self) -> str:
        if self.kind != "audio":
            raise ValueError(f"{self.root or ''}: an {self.kind} build has no audio member")
        return AUDIO_EXT[self.codec]

    @property
    def segmented(self) -> bool:
        """Audio samples carry segment fields (version 2: a ``seg`` member, 3: inside ``ids``);
        version 1 samples are whole tracks (image samples are never segmented)."""
        return self.version >= 2 and self.kind == "audio"

    @property
    def where(self) -> str:
        """The manifest's own path or URL, for error lines."""
        return str(storage.join(self.root, MANIFEST)) if self.root is not None else MANIFEST

    @property
    def remote(self) -> bool:
        """Read from an object store (``s3://``, ``gs://``) rather than a local folder."""
        return self.root is not None and storage.is_remote(self.root)

    def split(self, name: str) -> SplitInfo:
        if name not in self.splits:
            raise ValueError(f"{self.where}: no split {name!r}; splits are {sorted(self.splits)}")
        return self.splits[name]

    def paths(self, split: str) -> tuple[list[Path], list[Path]]:
        """Absolute tar and index paths of a local build's split, checked to lie inside its folder."""
        assert self.root is not None, "manifest not read from disk"
        if self.remote:
            raise ValueError(f"{self.root}: an object-store build has no local paths (use urls())")
        info = self.split(split)
        tars = [_inside(Path(self.root), s.tar) for s in info.shards]
        idxs = [_inside(Path(self.root), s.index) for s in info.shards]
        return tars, idxs

    def urls(self, split: str) -> tuple[list[str], list[str]]:
        """Tar and index locations of a split as strings: local paths or ``s3://`` URLs."""
        assert self.root is not None, "manifest not read from disk"
        if not self.remote:
            tars, idxs = self.paths(split)
            return [str(t) for t in tars], [str(i) for i in idxs]
        info = self.split(split)
        return [str(storage.join(self.root, s.tar)) for s in info.shards], [
            str(storage.join(self.root, s.index)) for s in info.shards
        ]

    def to_json(self) -> str:
        d = to_dict(self)
        d.pop("root", None)
        if self.kind == "audio":  # absent = audio: audio manifests read the same by older readers
            d.pop("kind")
            d.pop("images")
        for info in d["splits"].values():  # absent = no ids file (builds that wrote none)
            for shard in info["shards"]:
                if shard.get("ids") is None:
                    for key in ("ids", "ids_sha256", "ids_bytes"):
                        shard.pop(key, None)
        return json.dumps(d, indent=2, sort_keys=False) + "\n"


def _inside(root: Path, rel: str) -> Path:
    p = (root / rel).resolve()
    if Path(rel).is_absolute() or not p.is_relative_to(root.resolve()):
        raise ValueError(f"{root / MANIFEST}: path {rel!r} points outside the build folder")
    return p


def _relative(where: str, rel: str) -> str:
    """A manifest's relative name, refused if it leaves the build (absolute, ``..``, a URL)."""
    if rel.startswith("/") or "://" in rel or ".." in rel.split("/"):
        raise ValueError(f"{where}: path {rel!r} points outside the build folder")
    return rel


def write_manifest(folder: storage.Location, manifest: Manifest) -> storage.Location:
    """Write ``manifest.json`` atomically (it is written last: its presence means done); a local
    folder or an object-store prefix alike."""
    path = storage.join(folder, MANIFEST)
    storage.write_text(path, manifest.to_json())
    return path


def parse_manifest(text: str, where: str) -> Manifest:
    """A validated manifest from its JSON text (``where``: its file or URL, named in errors);
    ``root`` is left unset (a remote build has none)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not valid JSON: {e}") from None
    if data.get("format") != FORMAT:
        raise ValueError(f"{where}: not a musicstream shard manifest (format={data.get('format')!r})")
    if data.get("version") not in READABLE_VERSIONS:
        raise ValueError(
            f"{where}: manifest format version {data.get('version')!r}, this musicstream reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}"
        )
    try:
        return Manifest(**data)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: malformed manifest: {e}") from None


def _manifest_location(folder: storage.Location) -> tuple[storage.Location, storage.Location]:
    """(build root, manifest.json location) for a build folder/prefix or a manifest.json path."""
    storage.check_location(folder)
    if storage.is_remote(folder):
        text = str(folder).rstrip("/")
        if text.endswith(".json"):
            return storage.parent(text), text
        return text, storage.join(text, MANIFEST)
    root = Path(folder)
    path = root / MANIFEST if root.is_dir() or not root.name.endswith(".json") else root
    return path.parent, path


def read_manifest(folder: storage.Location, *, check_files: bool = True) -> Manifest:
    """Read and validate a build's manifest (a local folder or an ``s3://``/``gs://`` prefix); any
    problem is one error naming the file. ``check_files``: every listed tar and index is there
    (for a store: one LIST, sizes compared, no download)."""
    root, path = _manifest_location(folder)
    if storage.is_remote(root):
        storage.check_access(root)
    try:
        size = storage.stat(path).size
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path}: no shard manifest here (build shards with `python -m shards build`)"
        ) from None
    if size > MAX_MANIFEST_BYTES:
        raise ValueError(f"{path}: {size} bytes, over the {MAX_MANIFEST_BYTES >> 20} MiB of any manifest")
    manifest = parse_manifest(storage.read_text(path), str(path))
    manifest.root = root
    if storage.is_remote(root):
        _check_objects(manifest, str(path), check_files)
        return manifest
    for name, info in manifest.splits.items():
        for s in info.shards:
            for rel in (s.tar, *(c[0] for c in s.companions())):
                p = _inside(Path(root), rel)
                if check_files and not p.is_file():
                    raise FileNotFoundError(f"{p}: listed in {path} (split {name}) but missing")
    return manifest


def _check_objects(manifest: Manifest, where: str, check_files: bool) -> None:
    """Every object the manifest names is in the store at its listed size: one paged LIST."""
    assert manifest.root is not None
    listed = storage.list_files(manifest.root) if check_files else {}
    missing, wrong = [], []
    for info in manifest.splits.values():
        for s in info.shards:
            for rel in (_relative(where, s.tar), *(_relative(where, c[0]) for c in s.companions())):
                if check_files and rel not in listed:
                    missing.append(rel)
            for rel, _, size in ((s.tar, s.sha256, s.bytes), *s.companions()):  # index: None in old builds
                if check_files and size is not None and rel in listed and listed[rel] != size:
                    wrong.append(f"{rel} ({listed[rel]} bytes, manifest {size})")
    if missing:
        raise storage.StorageNotFound(
            f"{where}: names {len(missing)} object(s) that are not in the store: "
            f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''} (an interrupted upload? "
            "re-run `python -m shards copy`)"
        )
    if wrong:
        raise ValueError(
            f"{where}: {len(wrong)} shard, index or ids file(s) differ in size from the manifest: {', '.join(wrong[:5])} "
            "(truncated or replaced objects; re-run `python -m shards copy`)"
        )


def read_rejects(folder: storage.Location) -> list[dict[str, Any]]:
    """The build's ``rejects.jsonl`` records (local or in a store); [] when the file is absent."""
    path = storage.join(folder, REJECTS)
    if not storage.exists(path):
        return []
    return [json.loads(line) for line in storage.read_text(path).splitlines() if line.strip()]
