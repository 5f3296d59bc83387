"""``BuildConfig``: every knob of ``python -m shards build``, from TOML ``[shards]`` and the CLI.

One dataclass for the stage (docs/architecture.md, Conventions): the options every build shares, plus ``options``,
the chosen importer's own dataclass (``shards.importers``: each importer declares what it
reads). The build records it in the manifest for provenance.
"""

from __future__ import annotations

import dataclasses
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from shards.base.config import from_dict, load_toml, section_table, to_dict
from shards.base.tasks import TaskKind
from shards.format import storage
from shards.format.manifest import Codec
from shards.importers import ImporterOptions, get_importer

OptionsT = TypeVar("OptionsT", bound=ImporterOptions)


@dataclass(kw_only=True)
class BuildConfig:
    """How to turn one raw dataset into a shard folder (see docs/shard-format.md)."""

    source: str
    """Which registered importer reads ``root`` (built in: fma, mtat, ccmusic, folder)."""
    root: Path
    """Folder holding the raw dataset as its publisher ships it."""
    out: str | Path
    """Build folder to write (manifest.json, rejects.jsonl, SPLIT/%06d.tar + .idx): a local path or
    an object-store prefix (``s3://bucket/prefix``)."""
    task: TaskKind | None = None
    """single, multi or hier; None = the importer's natural task (fma single, mtat multi, ccmusic hier, folder single)."""
    sample_rate: int = 22050
    """Sample rate of the stored audio (band-limited soxr resampling)."""
    codec: Codec = "pcm16"
    """Stored audio: pcm16 (raw int16, GPU-decodable), flac or ogg."""
    shard_size_mb: float = 256.0
    """Upper bound of one tar shard in MiB (a larger single sample gets its own shard)."""
    workers: int = 0
    """Decoding processes; 0 = all cores, 1 = in-process (no decode timeout: for debugging)."""
    seed: int = 0
    """Seed of the shuffle across shards and of hash/random splits."""
    min_seconds: float = 1.0
    """Tracks shorter than this after decoding are rejected."""
    segment_seconds: float = 30.0
    """Tracks longer than this are stored as consecutive segments of this length (the last holds
    the rest); keep it a multiple of the training chunk (6 s) so evaluation chunks never straddle segments."""
    force: bool = False
    """Rebuild everything instead of resuming finished shards."""
    strict: bool = False
    """Exit non-zero when any input was rejected."""
    executor: Literal["local", "ray"] = "local"
    """Who builds the shards: local (this machine's process pool) or ray (one Ray task per shard)."""
    ray_address: str | None = None
    """executor = ray: the cluster to join (auto, ray://host:10001); None = start Ray on this machine."""
    decode_timeout: float = 600.0
    """Seconds one file may take to read and decode before it is rejected as hung (0 = no limit)."""
    max_seconds: float = 4 * 3600.0
    """Inputs longer than this (from their header, before decoding) are rejected (0 = no limit)."""
    part: str | None = None
    """Array jobs: I/N builds the I-th of N slices of the plan (0-based); merge with `python -m shards merge`."""
    options: ImporterOptions | None = None
    """The importer's own options (its ``Importer.options`` dataclass); None = its defaults."""

    def __post_init__(self) -> None:
        importer = get_importer(self.source)
        self.root = Path(self.root)
        storage.check_location(self.out)  # an unknown scheme or credentials in a URL: one line
        self.out = str(self.out) if storage.is_remote(self.out) else Path(self.out)
        if self.task is None:
            self.task = importer.tasks[0]  # type: ignore[assignment]
        if self.task not in ("single", "multi", "hier"):
            raise ValueError(f"task: {self.task!r} is not single, multi or hier")
        if self.task not in importer.tasks:
            raise ValueError(
                f"task: {self.source} supports only {' or '.join(importer.tasks)}, not {self.task!r}"
            )
        if self.options is None:
            self.options = importer.options()
        if type(self.options) is not importer.options:
            raise ValueError(
                f"options: {self.source} takes {importer.options.__name__}, got {type(self.options).__name__}"
            )
        self.options.check(self)
        if not 4000 <= self.sample_rate <= 192000:
            raise ValueError(f"sample_rate: {self.sample_rate} outside 4000..192000")
        if self.codec not in ("pcm16", "flac", "ogg"):
            raise ValueError(f"codec: {self.codec!r} is not pcm16, flac or ogg")
        if not self.shard_size_mb > 0:
            raise ValueError(f"shard_size_mb: must be > 0, got {self.shard_size_mb}")
        if self.workers < 0:
            raise ValueError(f"workers: must be >= 0 (0 = all cores), got {self.workers}")
        if self.min_seconds < 0:
            raise ValueError(f"min_seconds: must be >= 0, got {self.min_seconds}")
        if not self.segment_seconds * self.sample_rate >= 1:
            raise ValueError(f"segment_seconds: must be positive, got {self.segment_seconds}")
        self._check_run_options()

    def _check_run_options(self) -> None:
        """The options of how (not what) to build."""
        if self.executor not in ("local", "ray"):
            raise ValueError(f"executor: {self.executor!r} is not local or ray")
        if self.ray_address is not None and self.executor != "ray":
            warnings.warn("ray_address has no effect unless executor = ray", stacklevel=3)
        if not self.max_seconds >= 0:
            raise ValueError(f"max_seconds: must be >= 0 (0 = no limit), got {self.max_seconds}")
        if not self.decode_timeout >= 0:
            raise ValueError(f"decode_timeout: must be >= 0 (0 = no limit), got {self.decode_timeout}")
        if self.part is not None:
            _ = self.part_slice  # parses and checks I/N
            if self.executor != "local":
                raise ValueError("part: an array part builds with this machine's pool (executor = local)")
            if self.force:
                raise ValueError(
                    "part: --force would wipe the other parts' shards; re-plan with `python -m shards plan --force` first"
                )

    @property
    def part_slice(self) -> tuple[int, int]:
        """``part`` as (I, N); (0, 1) when the whole plan is built."""
        if self.part is None:
            return 0, 1
        m = re.fullmatch(r"(\d+)/(\d+)", self.part.strip())
        if not m or not int(m[1]) < int(m[2]):
            raise ValueError(f"part: expected I/N with 0 <= I < N (e.g. 3/16), got {self.part!r}")
        return int(m[1]), int(m[2])

    @property
    def local_out(self) -> Path:
        """``out`` as a local folder (for what cannot live in an object store)."""
        if not isinstance(self.out, Path):
            raise ValueError(f"out: {self.source} needs a local build folder here, got {self.out}")
        return self.out

    def importer_options(self, cls: type[OptionsT]) -> OptionsT:
        """``options`` as the importer's own class (what its ``load`` reads)."""
        assert isinstance(self.options, cls), f"{self.source}: options are {type(self.options).__name__}"
        return self.options

    @property
    def num_workers(self) -> int:
        """Resolved worker count (0 means every core this process may use)."""
        return self.workers or len(os.sched_getaffinity(0))

    @property
    def segment_samples(self) -> int:
        """Samples per full segment at ``sample_rate``."""
        return round(self.segment_seconds * self.sample_rate)

    @property
    def shard_bytes(self) -> int:
        return int(self.shard_size_mb * (1 << 20))

    def provenance(self) -> dict[str, Any]:
        """The config as the manifest records it: what shaped the shards, not how or where they
        were built (so every executor writes the same manifest)."""
        d = to_dict(self)
        for k in RUN_FIELDS:
            d.pop(k)
        return d

    def fingerprint_fields(self) -> dict[str, Any]:
        """Fields that change the shards' bytes (resume only reuses shards built with the same)."""
        d = self.provenance()
        return d | d.pop("options")  # the importer's options as top-level keys


RUN_FIELDS = (
    "workers",
    "force",
    "strict",
    "out",
    "executor",
    "ray_address",
    "decode_timeout",
    "max_seconds",
    "part",
)
"""Fields that say how and where to build, never what: outside the fingerprint and the manifest."""


COMMON_FIELDS = frozenset(f.name for f in dataclasses.fields(BuildConfig)) - {"options"}


def build_config_from_table(table: dict[str, Any], where: str) -> BuildConfig:
    """A ``[shards]`` table (plus CLI values): the shared keys go to ``BuildConfig``, the rest
    to the importer's own options, which refuse keys they do not declare (naming ``where``)."""
    missing = [k for k in ("source", "root", "out") if k not in table]
    if missing:
        raise ValueError(
            f"{where}: missing {', '.join(missing)} (give them on the command line or in [shards])"
        )
    importer = get_importer(str(table["source"]))
    own = {k: v for k, v in table.items() if k not in COMMON_FIELDS}
    options = from_dict(importer.options, own, f"{where} ({importer.name} options)")
    common = {k: v for k, v in table.items() if k in COMMON_FIELDS}
    return from_dict(BuildConfig, {**common, "options": options}, where)


def load_build_config(path: str | Path | None, cli: dict[str, Any]) -> BuildConfig:
    """CLI values (already without unset ones) over the TOML file's ``[shards]`` table over defaults."""
    where = f"{path} [shards]" if path is not None else "command line"
    tree = load_toml(path) if path is not None else {}
    extra = sorted(set(tree) - {"shards"})
    if extra:
        raise ValueError(f"{path}: unknown section(s) {extra}; a build config has only [shards]")
    return build_config_from_table({**section_table(tree, "shards", str(path)), **cli}, where)
