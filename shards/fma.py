"""``fma`` importer: Free Music Archive ``fma_metadata/tracks.csv`` + ``fma_SUBSET/XYZ/XYZ###.mp3``.

tracks.csv is read as FMA ships it (two header rows, ``track_id`` index). A track is an
input when its ``('set', 'subset')`` is <= ``--subset`` (small < medium < large); its
split is ``('set', 'split')`` (training/validation/test) and its single label
``('track', 'genre_top')``. Tracks without genre_top are rejected at import; missing,
empty or too-short MP3s (some real FMA files are) are rejected by the builder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pandas as pd

from shards.config import BuildConfig
from shards.importers import Importer, LabelFileOptions, register_importer
from shards.records import Dataset, Record, Reject, normalize_split, read_table, require_dir, single_task

DEFAULT_CSV = "fma_metadata/tracks.csv"
FMA_SUBSETS = ("small", "medium", "large")


@dataclass(kw_only=True)
class FMAOptions(LabelFileOptions):
    """``[shards]`` keys only the fma importer reads (``csv`` default: fma_metadata/tracks.csv)."""

    subset: Literal["small", "medium", "large"] = "small"
    """Take tracks whose subset is <= this (small < medium < large); audio under fma_SUBSET/."""

    def __post_init__(self) -> None:
        if self.subset not in FMA_SUBSETS:
            raise ValueError(f"subset: {self.subset!r} is not one of {list(FMA_SUBSETS)}")


COLUMNS = [("set", "subset"), ("set", "split"), ("track", "genre_top")]


def audio_path(track_id: int, subset: str) -> str:
    """FMA's layout: 6-digit zero-padded id, its first three digits name the folder."""
    tid = f"{int(track_id):06d}"
    return f"fma_{subset}/{tid[:3]}/{tid}.mp3"


def load(cfg: BuildConfig) -> Dataset:
    opts = cfg.importer_options(FMAOptions)
    require_dir(cfg.root, "FMA root")
    path = cfg.root / (opts.csv or DEFAULT_CSV)
    df = read_table(path, index_col=0, header=[0, 1], low_memory=False)
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(
            f"{path}: malformed CSV: missing column(s) {missing} (expected FMA's two-level header)"
        )
    rank = {s: i for i, s in enumerate(FMA_SUBSETS)}
    subset = df[("set", "subset")].astype(str).str.strip().map(rank)
    bad = df.index[subset.isna()]
    if len(bad):
        raise ValueError(
            f"{path}: malformed CSV: track {bad[0]} has subset {df.at[bad[0], ('set', 'subset')]!r}"
        )
    df = df.loc[subset <= rank[opts.subset], [("set", "split"), ("track", "genre_top")]]
    records, rejects = [], []
    for track_id, split_name, genre in df.itertuples(name=None):  # 100k+ rows: no iterrows
        rel = audio_path(int(track_id), opts.subset)
        if pd.isna(genre) or not str(genre).strip():
            rejects.append(Reject(path=rel, reason="no genre_top", key=str(track_id)))
            continue
        split = normalize_split(split_name, f"{path} track {track_id}")
        records.append(
            Record(
                key=f"{int(track_id):06d}",
                audio=cfg.root / rel,
                labels=str(genre).strip(),
                split=split,
                path=rel,
            )
        )
    if not records:
        raise ValueError(f"{path}: no track with a genre_top in subset <= {opts.subset!r}")
    task = single_task("genre", [r.labels for r in records])
    return Dataset(source="fma", task=task, records=records, rejects=rejects)


register_importer(Importer(name="fma", load=load, options=FMAOptions, tasks=("single",)))
