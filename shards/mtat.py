"""``mtat`` importer: MagnaTagATune ``annotations_final.csv`` + clips under ``0``..``f``.

The annotations file is tab-separated and quoted: ``clip_id``, 188 binary tag columns,
``mp3_path`` (e.g. ``f/artist-album-01-title-30-59.mp3``). Split by the standard folder
rule: ``0``-``b`` train, ``c`` validation, ``d``-``f`` test; or, with ``--split-files``, by a
published split list (shards/mtat_split.py: its clips, its top-50 tags, nothing else).
The three clips MTAT ships as 0-byte files (``KNOWN_EMPTY``) are rejected at import.

- multi (default): the ``--top-n`` most frequent tags over all clips (ties: file order);
  ``--clean`` rejects clips carrying none of them (else they stay with an all-zero label).
- single: the seed's 9 "main genres" (``MAIN_GENRES``). Rule: each genre owns the tags in
  ``GENRE_TAGS``; a clip's genre is the one with the most of its tags, ties broken by
  ``PRIORITY`` (specific styles before broad ones: metal > hiphop > jazz > folk > ambient >
  electronic > classical > rock > pop). Clips with no such tag are rejected
  ("no main-genre tag").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shards import reasons
from shards.base.tasks import TaskSpec
from shards.config import BuildConfig
from shards.importers import Importer, LabelFileOptions, register_importer
from shards.mtat_split import read_split
from shards.records import Dataset, Record, Reject, read_table, require_columns, require_dir

DEFAULT_CSV = "annotations_final.csv"
MAIN_GENRES = ["classical", "electronic", "rock", "ambient", "folk", "jazz", "pop", "hiphop", "metal"]
GENRE_TAGS: dict[str, list[str]] = {
    "classical": ["classical", "clasical", "classic", "baroque", "opera", "orchestra", "orchestral"],
    "electronic": ["electronic", "electro", "electronica", "techno", "trance", "house", "dance", "disco"],
    "rock": ["rock", "hard rock", "soft rock", "punk"],
    "ambient": ["ambient", "new age"],
    "folk": ["folk", "country", "celtic", "irish"],
    "jazz": ["jazz", "jazzy", "blues"],
    "pop": ["pop"],
    "hiphop": ["hip hop", "rap"],
    "metal": ["metal", "heavy metal", "heavy"],
}
"""Each genre's tags, all real columns of annotations_final.csv (``clasical`` is the file's own
spelling); tests check the map against shards.mtat_columns."""
PRIORITY = ["metal", "hiphop", "jazz", "folk", "ambient", "electronic", "classical", "rock", "pop"]
KNOWN_EMPTY = {"35644", "55753", "57881"}
"""clip_ids whose mp3 is 0 bytes in every MTAT copy (6/norine_braun-..., 8/jacob_heringman-...,
9/american_baroque-...)."""
SPLIT_OF_FOLDER = {**{c: "train" for c in "0123456789ab"}, "c": "validation", **{c: "test" for c in "def"}}


@dataclass(kw_only=True)
class MTATOptions(LabelFileOptions):
    """``[shards]`` keys only the mtat importer reads (``csv`` default: annotations_final.csv)."""

    top_n: int = 50
    """Multi-label: keep the N most frequent tags."""
    clean: bool = False
    """Multi-label: reject clips that carry none of the top-N tags."""
    split_files: str | None = None
    """Folder with a published split (train/valid/test.npy or *_list_pub.cP + tag list),
    relative to root or absolute; builds exactly that split and its tags (docs/shard-format.md)."""

    def __post_init__(self) -> None:
        if self.top_n < 1:
            raise ValueError(f"top_n: must be >= 1, got {self.top_n}")

    def check(self, cfg: BuildConfig) -> None:
        if self.split_files is not None:
            if cfg.task != "multi":
                raise ValueError("split_files: a published MTAT split is a tagging split; use task 'multi'")
            if self.top_n != 50 or self.clean:
                raise ValueError(
                    "split_files: the published split fixes its tags and clips; drop top_n/clean"
                )


def main_genre(tags: list[str]) -> str | None:
    """The documented tag -> genre rule (see module docstring); None when no genre tag."""
    present = set(tags)
    counts = {g: sum(t in present for t in GENRE_TAGS[g]) for g in PRIORITY}
    best = max(counts.values())
    return next(g for g in PRIORITY if counts[g] == best) if best else None


def load(cfg: BuildConfig) -> Dataset:
    opts = cfg.importer_options(MTATOptions)
    require_dir(cfg.root, "MagnaTagATune root")
    path = cfg.root / (opts.csv or DEFAULT_CSV)
    df = read_table(path, sep="\t", dtype=str, keep_default_na=False)
    require_columns(df, ["clip_id", "mp3_path"], path)
    tag_cols = [c for c in df.columns if c not in ("clip_id", "mp3_path")]
    if not tag_cols:
        raise ValueError(f"{path}: malformed CSV: no tag columns between clip_id and mp3_path")
    try:
        hot = df[tag_cols].apply(lambda c: c.str.strip().replace("", "0").astype(int)).to_numpy() > 0
    except ValueError as e:
        raise ValueError(f"{path}: malformed CSV: tag values must be 0/1 ({e})") from None
    mp3_paths = df["mp3_path"].str.strip().tolist()
    published: dict[int, str] | None = None
    if opts.split_files is not None:
        vocab, published = read_split(cfg.root / opts.split_files, tag_cols, mp3_paths)
        task = TaskSpec(kind="multi", name="tags", classes=vocab)
    elif cfg.task == "multi":
        freq = hot.sum(axis=0)
        top = sorted(np.argsort(-freq, kind="stable")[: opts.top_n].tolist())
        vocab = [tag_cols[i] for i in top]
        task = TaskSpec(kind="multi", name="tags", classes=vocab)
    else:
        task = TaskSpec(kind="single", name="genre", classes=MAIN_GENRES)
    records, rejects = [], []
    for i, (clip, rel) in enumerate(zip(df["clip_id"].str.strip(), mp3_paths)):
        tags = [tag_cols[j] for j in np.flatnonzero(hot[i])]
        if published is not None:
            split = published.get(i)
            if split is None:
                rejects.append(
                    Reject(path=rel, reason="not in the published split (--split-files)", key=clip)
                )
                continue
        else:
            split = SPLIT_OF_FOLDER.get(rel[:1]) if "/" in rel else None
            if split is None:
                rejects.append(
                    Reject(path=rel or f"clip {clip}", reason="mp3_path not under a 0..f folder", key=clip)
                )
                continue
        if clip in KNOWN_EMPTY:
            rejects.append(Reject(path=rel, reason=reasons.empty_file(), key=clip))
            continue
        if cfg.task == "multi":
            labels: object = [t for t in vocab if t in tags]
            if opts.clean and not labels:
                rejects.append(Reject(path=rel, reason=f"no top-{opts.top_n} tag (--clean)", key=clip))
                continue
        else:
            labels = main_genre(tags)
            if labels is None:
                rejects.append(Reject(path=rel, reason="no main-genre tag", key=clip))
                continue
        records.append(
            Record(key=clip, audio=cfg.root / rel, labels=labels, split=split, path=rel, meta={"tags": tags})
        )
    return Dataset(source="mtat", task=task, records=records, rejects=rejects)


register_importer(Importer(name="mtat", load=load, options=MTATOptions, tasks=("multi", "single")))
