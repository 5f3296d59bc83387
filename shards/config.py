"""``BuildConfig``: every knob of ``python -m shards build``, from TOML ``[shards]`` and the CLI.

One dataclass for the whole stage (style.md): the importers and the writer each read
the fields they need from it, and the build records it in the manifest for provenance.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from shards.configtools import from_dict, load_toml
from shards.manifest import Codec, TaskKind

Source = Literal["fma", "mtat", "ccmusic", "folder"]
SOURCES: tuple[str, ...] = ("fma", "mtat", "ccmusic", "folder")
DEFAULT_TASK: dict[str, str] = {"fma": "single", "mtat": "multi", "ccmusic": "hier", "folder": "single"}
FMA_SUBSETS = ("small", "medium", "large")


@dataclass(kw_only=True)
class BuildConfig:
    """How to turn one raw dataset into a shard folder (see docs/shard-format.md)."""

    source: Source
    """Which importer reads ``root``: fma, mtat, ccmusic or folder."""
    root: Path
    """Folder holding the raw dataset as its publisher ships it."""
    out: Path
    """Build folder to write (manifest.json, rejects.jsonl, SPLIT/%06d.tar + .idx)."""
    task: TaskKind | None = None
    """single, multi or hier; None = the source's natural task (fma single, mtat multi, ccmusic hier, folder single)."""
    sample_rate: int = 22050
    """Sample rate of the stored audio (band-limited soxr resampling)."""
    codec: Codec = "pcm16"
    """Stored audio: pcm16 (raw int16, GPU-decodable), flac or ogg."""
    shard_size_mb: float = 256.0
    """Upper bound of one tar shard in MiB (a larger single sample gets its own shard)."""
    workers: int = 0
    """Decoding processes; 0 = all cores, 1 = in-process."""
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
    csv: str | None = None
    """Label file relative to root (folder: labels.csv, fma: fma_metadata/tracks.csv, mtat: annotations_final.csv)."""
    subset: str = "small"
    """fma: take tracks whose subset is <= this (small < medium < large); audio under fma_SUBSET/."""
    top_n: int = 50
    """mtat multi-label: keep the N most frequent tags."""
    clean: bool = False
    """mtat multi-label: reject clips that carry none of the top-N tags."""
    verify: bool = False
    """fma: check every mp3 against ``fma_SUBSET/checksums`` (sha1) and reject mismatches."""
    split_files: str | None = None
    """mtat: folder with a published split (train/valid/test.npy or *_list_pub.cP + tag list),
    relative to root or absolute; builds exactly that split and its tags (docs/shard-format.md)."""
    media: Literal["auto", "audio", "image"] = "auto"
    """ccmusic: store the spectrogram image columns or the audio column (auto: images when present)."""
    hf_config: str | None = None
    """ccmusic: the Hugging Face config folder to read (eval, default) when ROOT holds several."""

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"source: {self.source!r} is not one of {list(SOURCES)}")
        self.root, self.out = Path(self.root), Path(self.out)
        if self.task is None:
            self.task = DEFAULT_TASK[self.source]  # type: ignore[assignment]
        if self.task not in ("single", "multi", "hier"):
            raise ValueError(f"task: {self.task!r} is not single, multi or hier")
        if self.source == "fma" and self.task != "single":
            raise ValueError(f"task: fma supports only 'single' (genre_top), got {self.task!r}")
        if self.source == "mtat" and self.task == "hier":
            raise ValueError("task: mtat supports 'multi' (top-N tags) or 'single' (main genre), not 'hier'")
        if self.source == "ccmusic" and self.task == "multi":
            raise ValueError("task: ccmusic supports 'hier' or 'single' (sec_level_label), not 'multi'")
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
        if self.subset not in FMA_SUBSETS:
            raise ValueError(f"subset: {self.subset!r} is not one of {list(FMA_SUBSETS)}")
        if self.media not in ("auto", "audio", "image"):
            raise ValueError(f"media: {self.media!r} is not auto, audio or image")
        if self.top_n < 1:
            raise ValueError(f"top_n: must be >= 1, got {self.top_n}")
        if self.split_files is not None and self.source == "mtat":
            if self.task != "multi":
                raise ValueError("split_files: a published MTAT split is a tagging split; use task 'multi'")
            if self.top_n != 50 or self.clean:
                raise ValueError(
                    "split_files: the published split fixes its tags and clips; drop top_n/clean"
                )
        self._warn_unused()

    def _warn_unused(self) -> None:
        """Source-specific options given to another source have no effect: say so once."""
        unused = []
        if self.source != "mtat" and (self.top_n != 50 or self.clean):
            unused.append("top_n/clean (mtat only)")
        if self.source != "ccmusic" and (self.media != "auto" or self.hf_config is not None):
            unused.append("media/hf_config (ccmusic only)")
        if self.source != "fma" and (self.subset != "small" or self.verify):
            unused.append("subset/verify (fma only)")
        if self.source != "mtat" and self.split_files is not None:
            unused.append("split_files (mtat only)")
        if unused:
            warnings.warn(f"{', '.join(unused)}: no effect with source {self.source!r}", stacklevel=4)

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

    def fingerprint_fields(self) -> dict[str, Any]:
        """Fields that change the shards' bytes (resume only reuses shards built with the same)."""
        skip = {"workers", "force", "strict", "out"}
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(self).items() if k not in skip}


def load_build_config(path: str | Path | None, cli: dict[str, Any]) -> BuildConfig:
    """CLI values (already without unset ones) over the TOML file's ``[shards]`` table over defaults."""
    table: dict[str, Any] = {}
    where = "command line"
    if path is not None:
        tree = load_toml(path)
        extra = sorted(set(tree) - {"shards"})
        if extra:
            raise ValueError(f"{path}: unknown section(s) {extra}; a build config has only [shards]")
        table = dict(tree.get("shards", {}))
        where = f"{path} [shards]"
    table.update(cli)
    missing = [k for k in ("source", "root", "out") if k not in table]
    if missing:
        raise ValueError(
            f"{where}: missing {', '.join(missing)} (give them on the command line or in [shards])"
        )
    return from_dict(BuildConfig, table, where)
