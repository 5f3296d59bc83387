"""``folder`` importer: any folder of audio files plus a label CSV.

CSV (default ``ROOT/labels.csv``, ``--csv`` to change), one row per file, ``path``
relative to ROOT, and by task:
- single: ``label`` column (one class name);
- multi: ``tags`` column, ``;``-separated tag names (empty = no tag);
- hier: ``level1,level2,...,levelK`` columns (K >= 2), coarse to fine; every class must
  have one parent (checked), vocabularies are sorted per level.
An optional ``split`` column (train/validation/test) fixes the split; otherwise a seeded
80/10/10 split by a hash of the path. Vocabularies are the sorted distinct names.

Images instead of audio (precomputed spectrograms, e.g. the seeds' PNGs): when ``path``
names image files, the build stores image samples; ``path`` is the ``mel`` channel and
optional columns ``mfcc``, ``chroma``, ``cqt`` name each row's image of that channel.
"""

from __future__ import annotations

import re

import pandas as pd

from shards.base.tasks import TaskSpec
from shards.importers import Importer, ImportSettings, LabelFileOptions, register_importer
from shards.importers.records import (
    IMAGE_SUFFIXES,
    Dataset,
    Record,
    hash_split,
    hierarchy_levels,
    normalize_split,
    read_table,
    require_columns,
    require_dir,
)

DEFAULT_CSV = "labels.csv"
EXTRA_IMAGE_CHANNELS = ("mfcc", "chroma", "cqt")  # columns beside ``path`` (= mel) in an image CSV
_LEVEL = re.compile(r"^level(\d+)$")


def level_columns(df: pd.DataFrame) -> list[str]:
    """``level1..levelK`` columns in order; they must be numbered without gaps."""
    out = []
    for k, (n, c) in enumerate(
        sorted((int(m.group(1)), c) for c in df.columns if (m := _LEVEL.match(str(c))))
    ):
        if n != k + 1:
            break
        out.append(str(c))
    return out


def hierarchy(rows: list[list[str]], names: list[str], where: str) -> TaskSpec:
    """Levels with parent links from observed label paths; a class with two parents is an error."""
    levels = [(name, sorted({r[d] for r in rows})) for d, name in enumerate(names)]
    return TaskSpec(kind="hier", name="hierarchy", levels=hierarchy_levels(rows, levels, where))


def load(cfg: ImportSettings) -> Dataset:
    opts = cfg.importer_options(LabelFileOptions)
    require_dir(cfg.root, "folder dataset root")
    path = cfg.root / (opts.csv or DEFAULT_CSV)
    df = read_table(path, dtype=str, keep_default_na=False)
    require_columns(df, ["path"], path)
    if cfg.task == "single":
        require_columns(df, ["label"], path)
        labels: list = [str(v).strip() for v in df["label"]]
        if any(not v for v in labels):
            raise ValueError(f"{path}: malformed CSV: empty label in row {labels.index('') + 2}")
        task = TaskSpec(kind="single", name="genre", classes=sorted(set(labels)))
    elif cfg.task == "multi":
        require_columns(df, ["tags"], path)
        labels = [sorted({t.strip() for t in str(v).split(";") if t.strip()}) for v in df["tags"]]
        vocab = sorted({t for tags in labels for t in tags})
        if not vocab:
            raise ValueError(f"{path}: malformed CSV: no tags in column 'tags'")
        task = TaskSpec(kind="multi", name="tags", classes=vocab)
    else:
        cols = level_columns(df)
        if len(cols) < 2:
            raise ValueError(f"{path}: malformed CSV: hier needs columns level1, level2[, level3...]")
        labels = [[str(r[c]).strip() for c in cols] for _, r in df[cols].iterrows()]
        if any(not v for r in labels for v in r):
            raise ValueError(f"{path}: malformed CSV: empty hierarchy label")
        task = hierarchy(labels, cols, str(path))
    has_split = "split" in df.columns
    is_image = [str(p).lower().endswith(IMAGE_SUFFIXES) for p in df["path"]]
    image = bool(is_image) and all(is_image)
    if any(is_image) and not image:
        raise ValueError(
            f"{path}: column 'path' mixes image and audio files (row {is_image.index(not is_image[0]) + 2})"
        )
    channels = ["mel", *(c for c in EXTRA_IMAGE_CHANNELS if c in df.columns)] if image else []
    records = []
    for row, (rel, lab) in enumerate(zip(df["path"], labels)):
        where = f"{path} row {row + 2}"
        split = normalize_split(df["split"].iat[row], where) if has_split else hash_split(rel, cfg.seed)
        key = rel.rsplit(".", 1)[0]
        rec = Record(key=key, audio=None if image else cfg.root / rel, labels=lab, split=split, path=rel)
        if image:
            cells = {"mel": rel, **{c: str(df[c].iat[row]).strip() for c in channels[1:]}}
            rec.images = {c: cfg.root / v for c, v in cells.items() if v}
        records.append(rec)
    kind = "image" if image else "audio"
    return Dataset(source="folder", task=task, records=records, kind=kind, channels=channels)


register_importer(
    Importer(name="folder", load=load, options=LabelFileOptions, tasks=("single", "multi", "hier"))
)
