"""What every importer yields: ``Record``s (and import-time ``Reject``s) in one ``Dataset``.

Importers only parse their source's metadata; one builder (shards/builder/driver.py) decodes,
shuffles and writes. Sharing these types is what keeps the four importers small.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shards.base.errors import first_line
from shards.base.tasks import Level, TaskSpec

if TYPE_CHECKING:
    import pandas as pd

SPLITS = ("train", "validation", "test")
_SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "validation": "validation",
    "valid": "validation",
    "val": "validation",
    "test": "test",
    "testing": "test",
}

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
"""File suffixes read as images (the folder importer's image rows; the builder's image encoding)."""


@dataclass(kw_only=True)
class Record:
    """One input track/clip: where its audio is, its labels by name, its split."""

    key: str
    """Unique id within the dataset (sanitised into the shard key)."""
    audio: Path | bytes | None
    """Audio file, or the encoded bytes; None for an image record."""
    labels: Any
    """single: class name; multi: list of tag names; hier: one class name per level."""
    split: str
    """train, validation or test."""
    path: str
    """Human-readable origin (for rejects.jsonl and the sample's .json)."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Extra metadata copied into the sample's .json."""
    images: dict[str, Path | bytes] = field(default_factory=dict)
    """Image records: one image file (or its bytes) per channel, stored unchanged."""


@dataclass(kw_only=True)
class Reject:
    path: str
    reason: str
    key: str | None = None


@dataclass(kw_only=True)
class Dataset:
    """An imported source: the task with its vocabulary, the records, import-time rejects."""

    source: str
    task: TaskSpec
    records: list[Record]
    rejects: list[Reject] = field(default_factory=list)
    kind: str = "audio"
    """Sample kind: "audio" (tracks) or "image" (precomputed spectrogram images)."""
    channels: list[str] = field(default_factory=list)
    """Image kind: the channel names each record carries an image for, in order."""

    @property
    def num_inputs(self) -> int:
        return len(self.records) + len(self.rejects)


def normalize_split(value: Any, where: str) -> str:
    """Map split spellings (training, val, ...) onto train/validation/test; anything else is an error."""
    s = _SPLIT_ALIASES.get(str(value).strip().lower())
    if s is None:
        raise ValueError(f"{where}: unknown split {value!r} (expected train, validation or test)")
    return s


def hash_split(text: str, seed: int, fractions: tuple[float, float] = (0.8, 0.9)) -> str:
    """Seeded, order-independent 80/10/10 split from a stable hash of ``text``."""
    h = int.from_bytes(hashlib.sha1(f"{seed}:{text}".encode()).digest()[:8], "little") / 2**64
    return "train" if h < fractions[0] else "validation" if h < fractions[1] else "test"


def read_table(path: Path, **kwargs: Any) -> pd.DataFrame:
    """``pd.read_csv`` whose failures are one error line naming the file."""
    import pandas as pd  # here, not at the top: build workers unpickle Records without pandas

    if not path.is_file():
        raise FileNotFoundError(f"{path}: label file not found")
    try:
        return pd.read_csv(path, **kwargs)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError, IndexError) as e:
        msg = first_line(e)
        raise ValueError(f"{path}: malformed CSV: {msg}") from None


def require_columns(df: pd.DataFrame, columns: list[str], path: Path) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: malformed CSV: missing column(s) {missing}; has {list(df.columns)[:12]}")


def require_dir(path: Path, what: str) -> None:
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: {what} not found (no such folder)")


def single_task(name: str, labels: list[str]) -> TaskSpec:
    return TaskSpec(kind="single", name=name, classes=sorted(set(labels)))


def hierarchy_levels(
    paths: Sequence[Sequence[str]], levels: Sequence[tuple[str, list[str]]], where: str
) -> list[Level]:
    """Levels with parent links observed in label ``paths`` (one class name per level, root
    first); ``levels`` is (level name, its classes in index order). A class with two
    parents is an error; a class that never occurs takes the class of the same name one
    level up as its parent (a leaf that repeats its parent), else it is an error."""
    out = [Level(name=levels[0][0], classes=list(levels[0][1]))]
    for d in range(1, len(levels)):
        name, classes = levels[d]
        up = {c: i for i, c in enumerate(levels[d - 1][1])}
        seen: dict[str, str] = {}
        for p in paths:
            if seen.setdefault(p[d], p[d - 1]) != p[d - 1]:
                raise ValueError(
                    f"{where}: {name} {p[d]!r} has two parents ({seen[p[d]]!r} and {p[d - 1]!r})"
                )
        parent = []
        for c in classes:
            if c not in seen and c not in up:
                raise ValueError(f"{where}: {name} {c!r} never occurs, so its parent is unknown")
            parent.append(up[seen.get(c, c)])
        out.append(Level(name=name, classes=list(classes), parent=parent))
    return out
