"""``fma`` importer: Free Music Archive ``fma_metadata/tracks.csv`` + ``fma_SUBSET/XYZ/XYZ###.mp3``.

tracks.csv is read as FMA ships it: 52 columns under a three-row header (top level,
column name, then a ``track_id`` row naming the index), one row per track. Only the
three columns used are parsed (``('set', 'subset')``, ``('set', 'split')``,
``('track', 'genre_top')``), found by name, so the other 49 (free text, lists, dates)
can hold anything. A track is an input when its subset is <= ``--subset`` (small <
medium < large); its split is ``('set', 'split')`` and its single label
``('track', 'genre_top')``. Tracks without genre_top are rejected at import; missing,
empty, audio-less or too-short mp3s (real FMA has each kind) are rejected by the builder.
``--verify`` checks each mp3 against the subset's ``checksums`` file (``verify_records`` below).
"""

from __future__ import annotations

import csv
import hashlib
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pandas as pd

from shards.base.progress import progress
from shards.importers import Importer, ImportSettings, LabelFileOptions, reasons, register_importer
from shards.importers.records import (
    Dataset,
    Record,
    Reject,
    normalize_split,
    read_table,
    require_dir,
    single_task,
)

# ``--verify`` for FMA: check each mp3 against the ``checksums`` file of its subset folder.
#
# Every FMA archive (fma_small.zip, ...) has ``fma_SUBSET/checksums`` in ``sha1sum`` format:
# one line per mp3, 40 hex digits, two spaces, the path relative to the subset folder
# (``000/000002.mp3``); ``cd fma_small && sha1sum -c checksums`` is FMA's own check. A
# mismatch is nearly always a truncated or half-extracted download, which decodes to a
# shorter track without any error, so it is worth catching before training on it.
# Files are hashed in threads (hashlib releases the GIL on large updates), with a progress bar.
LISTING = "checksums"
_LINE = re.compile(r"^([0-9a-fA-F]{40}) [ *](.+)$")
_BLOCK = 1 << 20


def read_checksums(path: Path) -> dict[str, str]:
    """``sha1sum`` lines -> {relative path: lowercase sha1}; a malformed line is an error naming it."""
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: checksums file not found (--verify needs the one FMA ships in each fma_SUBSET folder)"
        )
    out = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        m = _LINE.match(line.rstrip("\r"))
        if m is None:
            raise ValueError(f"{path}: line {n} is not '<sha1>  <path>' (sha1sum format): {line[:80]!r}")
        out[m.group(2).strip()] = m.group(1).lower()
    return out


def sha1_of(path: Path) -> str | None:
    """The file's sha1, or None when it cannot be read (the builder then reports it; a FIFO is
    never opened: that would wait for a writer)."""
    if reasons.file_fault(path) not in (None, reasons.empty_file()):
        return None
    h = hashlib.sha1()
    try:
        with path.open("rb") as f:
            while block := f.read(_BLOCK):
                h.update(block)
    except OSError:
        return None
    return h.hexdigest()


def verify_records(
    records: list[Record], subset_dir: Path, workers: int
) -> tuple[list[Record], list[Reject]]:
    """Records whose mp3 matches ``subset_dir/checksums`` (or is missing: the builder says so),
    and a reject for each mismatch or unlisted file."""
    sums = read_checksums(subset_dir / LISTING)
    listing = f"{subset_dir.name}/{LISTING}"
    paths = [r.audio for r in records]
    assert all(isinstance(p, Path) for p in paths)
    with ThreadPoolExecutor(max(1, workers)) as pool:
        got = list(
            progress(
                pool.map(sha1_of, paths), total=len(paths), desc="verify sha1", unit="file", enabled=None
            )
        )
    kept, rejects = [], []
    for rec, digest in zip(records, got):
        rel = Path(rec.path).relative_to(subset_dir.name).as_posix()
        expected = sums.get(rel)
        if digest is None:  # missing or unreadable: the builder rejects it as such
            kept.append(rec)
        elif expected is None:
            rejects.append(Reject(path=rec.path, reason=reasons.not_in_checksums(listing), key=rec.key))
        elif digest != expected:
            rejects.append(
                Reject(
                    path=rec.path, reason=reasons.checksum_mismatch(digest, expected, listing), key=rec.key
                )
            )
        else:
            kept.append(rec)
    return kept, rejects


DEFAULT_CSV = "fma_metadata/tracks.csv"
FMA_SUBSETS = ("small", "medium", "large")


@dataclass(kw_only=True)
class FMAOptions(LabelFileOptions):
    """``[shards]`` keys only the fma importer reads (``csv`` default: fma_metadata/tracks.csv)."""

    subset: Literal["small", "medium", "large"] = "small"
    """Take tracks whose subset is <= this (small < medium < large); audio under fma_SUBSET/."""
    verify: bool = False
    """Check every mp3 against ``fma_SUBSET/checksums`` (sha1) and reject mismatches."""

    def __post_init__(self) -> None:
        if self.subset not in FMA_SUBSETS:
            raise ValueError(f"subset: {self.subset!r} is not one of {list(FMA_SUBSETS)}")


COLUMNS = [("set", "subset"), ("set", "split"), ("track", "genre_top")]


def audio_path(track_id: int, subset: str) -> str:
    """FMA's layout: 6-digit zero-padded id, its first three digits name the folder."""
    tid = f"{int(track_id):06d}"
    return f"fma_{subset}/{tid[:3]}/{tid}.mp3"


def read_tracks(path: Path) -> pd.DataFrame:
    """The used columns of tracks.csv (named ``COLUMNS``, strings, index ``track_id`` int).

    pandas cannot combine a two-level header with ``usecols``, so the header rows are
    read here and only the needed column positions are parsed."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: label file not found")
    with path.open(newline="", encoding="utf-8") as f:
        head = [row for _, row in zip(range(3), csv.reader(f))]
    if len(head) < 2:
        raise ValueError(f"{path}: malformed CSV: fewer than the two header rows FMA's tracks.csv has")
    names = list(zip(head[0], head[1]))
    missing = [c for c in COLUMNS if c not in names]
    if missing:
        raise ValueError(
            f"{path}: malformed CSV: missing column(s) {missing} (expected FMA's two-level header)"
        )
    index_row = len(head) == 3 and head[2][:1] == ["track_id"] and not any(head[2][1:])
    pos = [names.index(c) for c in COLUMNS]
    df = read_table(
        path,
        header=None,
        skiprows=3 if index_row else 2,
        usecols=[0, *pos],
        dtype=str,
        keep_default_na=False,
    )
    df = df[[0, *pos]]  # usecols keeps file order: restore ours
    df.columns = ["track_id", *["/".join(c) for c in COLUMNS]]
    ids = pd.to_numeric(df["track_id"], errors="coerce")
    bad = df["track_id"][ids.isna() | (ids % 1 != 0)]
    if len(bad):
        raise ValueError(f"{path}: malformed CSV: track_id {bad.iloc[0]!r} is not an integer")
    return df.drop(columns="track_id").set_index(ids.astype("int64").rename("track_id"))


def load(cfg: ImportSettings) -> Dataset:
    opts = cfg.importer_options(FMAOptions)
    require_dir(cfg.root, "FMA root")
    path = cfg.root / (opts.csv or DEFAULT_CSV)
    df = read_tracks(path)
    subset_col, split_col, genre_col = ("/".join(c) for c in COLUMNS)
    rank = {s: i for i, s in enumerate(FMA_SUBSETS)}
    subset = df[subset_col].str.strip().map(rank)
    bad = df.index[subset.isna()]
    if len(bad):
        raise ValueError(f"{path}: malformed CSV: track {bad[0]} has subset {df.at[bad[0], subset_col]!r}")
    df = df.loc[subset <= rank[opts.subset], [split_col, genre_col]]
    records, rejects = [], []
    for track_id, split_name, genre in df.itertuples(name=None):  # 100k+ rows: no iterrows
        rel = audio_path(int(track_id), opts.subset)
        if not genre.strip():
            rejects.append(Reject(path=rel, reason="no genre_top", key=str(track_id)))
            continue
        split = normalize_split(split_name, f"{path} track {track_id}")
        records.append(
            Record(
                key=f"{int(track_id):06d}", audio=cfg.root / rel, labels=genre.strip(), split=split, path=rel
            )
        )
    if not records:
        raise ValueError(f"{path}: no track with a genre_top in subset <= {opts.subset!r}")
    task = single_task("genre", [r.labels for r in records])  # before --verify: same vocabulary
    if opts.verify:
        records, failed = verify_records(records, cfg.root / f"fma_{opts.subset}", cfg.num_workers)
        rejects += failed
    return Dataset(source="fma", task=task, records=records, rejects=rejects)


register_importer(Importer(name="fma", load=load, options=FMAOptions, tasks=("single",)))
