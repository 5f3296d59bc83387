"""``mtat`` importer: MagnaTagATune ``annotations_final.csv`` + clips under ``0``..``f``.

The annotations file is tab-separated and quoted: ``clip_id``, 188 binary tag columns,
``mp3_path`` (e.g. ``f/artist-album-01-title-30-59.mp3``). Split by the standard folder
rule: ``0``-``b`` train, ``c`` validation, ``d``-``f`` test; or, with ``--split-files``, by a
published split list (``--split-files`` below: its clips, its top-50 tags, nothing else).
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

import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shards.base.tasks import TaskSpec
from shards.importers import Importer, ImportSettings, LabelFileOptions, reasons, register_importer
from shards.importers.records import Dataset, Record, Reject, read_table, require_columns, require_dir

# ``--split-files DIR``: the published MagnaTagATune "clean" split of Lee et al. / Won et al.
#
# Two layouts are read, as their authors publish them (both sit in
# minzwon/sota-music-tagging-models ``split/mtat/``):
#
# - Won et al.: ``train.npy``, ``valid.npy``, ``test.npy``, numpy string arrays whose entries
#   are ``"<row>\t<mp3_path>"``; ``<row>`` is the 0-based data row of annotations_final.csv
#   (not the clip_id: clip ids start at 2 and skip numbers).
# - Lee et al. (jongpillee/music_dataset_split ``MTAT_split``): ``train_list_pub.cP``,
#   ``valid_list_pub.cP``, ``test_list_pub.cP``, pickled lists of paths ``"<dir>/<name>.npy"``
#   (the mp3_path with the extension changed); matched to rows by mp3_path.
#
# The tag vocabulary comes from ``tags.npy`` (numpy string array, CSV spellings) when
# present, else ``top50_tags.txt`` (one per line; some spelled in camelCase: ``noVocals`` is
# the column ``no vocals``). Names map to columns exactly, else by lowercased letters and
# digits. Any name or row that matches nothing is one error naming them.
LIST_STEMS = {"train": "train", "validation": "valid", "test": "test"}
_SHOWN = 5


class _ListUnpickler(pickle.Unpickler):
    """A published list is plain strings: refuse any object a pickle could construct."""

    def find_class(self, module: str, name: str) -> type:
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a split list holds only strings")


def _strings(path: Path) -> list[str]:
    """A .npy string array, a pickled list of str/bytes, or a text file with one entry per line."""
    try:
        if path.suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
            if arr.dtype.kind not in "US":
                raise ValueError(f"dtype {arr.dtype} is not a string array")
            items: list = arr.reshape(-1).tolist()
        elif path.suffix == ".cP":
            with path.open("rb") as f:
                items = list(_ListUnpickler(f, encoding="latin1").load())
        else:
            items = path.read_text(encoding="utf-8").splitlines()
    except (OSError, ValueError, EOFError, TypeError, pickle.UnpicklingError) as e:
        raise ValueError(f"{path}: unreadable split file: {e}") from None
    out = []
    for x in items:
        if not isinstance(x, str | bytes):
            raise ValueError(f"{path}: unreadable split file: entry {x!r} is not a string")
        out.append((x.decode() if isinstance(x, bytes) else x).strip())
    return [x for x in out if x]


def _named(items: list[str], limit: int = _SHOWN) -> str:
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def map_tags(names: list[str], columns: list[str], where: Path) -> list[str]:
    """Published tag names -> the CSV's column names (same order); unmatched names are one error."""
    by_norm: dict[str, list[str]] = {}
    for c in columns:
        by_norm.setdefault(_norm(c), []).append(c)
    out, bad = [], []
    for n in names:
        hits = [n] if n in columns else by_norm.get(_norm(n), [])
        if len(hits) == 1:
            out.append(hits[0])
        else:
            bad.append(repr(n) + (f" (ambiguous: {hits})" if hits else ""))
    if bad:
        raise ValueError(f"{where}: tag(s) matching no annotations_final.csv column: {_named(bad)}")
    if len(set(out)) != len(out):
        raise ValueError(f"{where}: two names map to the same column: {out}")
    return out


def _tag_file(folder: Path) -> Path:
    for name in ("tags.npy", "top50_tags.txt"):
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"{folder}: no tag list (tags.npy or top50_tags.txt)")


def _list_files(folder: Path) -> dict[str, Path]:
    for pattern in ("{}.npy", "{}_list_pub.cP"):
        found = {s: folder / pattern.format(stem) for s, stem in LIST_STEMS.items()}
        if all(p.is_file() for p in found.values()):
            return found
    raise FileNotFoundError(
        f"{folder}: no split lists (expected train/valid/test.npy or train/valid/test_list_pub.cP)"
    )


def _rows_of(path: Path, entries: list[str], mp3_paths: list[str]) -> list[int]:
    """Entries of one list -> CSV data rows, each checked against the row's mp3_path."""
    row_of_stem = {p.rsplit(".", 1)[0]: i for i, p in enumerate(mp3_paths)}
    rows, bad = [], []
    for e in entries:
        if "\t" in e:  # Won et al.: "<row>\t<mp3_path>"
            idx, rel = e.split("\t", 1)
            ok = idx.strip().isdigit() and int(idx) < len(mp3_paths) and mp3_paths[int(idx)] == rel.strip()
            if not ok:
                held = mp3_paths[int(idx)] if idx.strip().isdigit() and int(idx) < len(mp3_paths) else None
                bad.append(
                    f"row {idx} {rel!r}" + (f" (the row holds {held!r})" if held else " (no such row)")
                )
                continue
            rows.append(int(idx))
        else:  # Lee et al.: the mp3_path with another extension
            i = row_of_stem.get(e.lstrip("./").rsplit(".", 1)[0])  # "./f/x.npy", "/f/x.npy" too
            if i is None:
                bad.append(repr(e))
                continue
            rows.append(i)
    if bad:
        raise ValueError(
            f"{path}: {len(bad)} entr{'y' if len(bad) == 1 else 'ies'} matching no annotations_final.csv "
            f"row: {_named(bad)}"
        )
    return rows


def read_split(folder: Path, columns: list[str], mp3_paths: list[str]) -> tuple[list[str], dict[int, str]]:
    """(vocabulary as CSV column names in published order, {data row: split}) for ``folder``."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: split folder not found (--split-files)")
    tag_file = _tag_file(folder)
    vocab = map_tags(_strings(tag_file), columns, tag_file)
    split_of: dict[int, str] = {}
    for split, path in _list_files(folder).items():
        for row in _rows_of(path, _strings(path), mp3_paths):
            if row in split_of:
                raise ValueError(
                    f"{path}: row {row} ({mp3_paths[row]!r}) is also in the {split_of[row]} list"
                )
            split_of[row] = split
    return vocab, split_of


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
spelling); tests check the map against helpers.mtat_columns."""
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

    def check(self, cfg: ImportSettings) -> None:
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


def load(cfg: ImportSettings) -> Dataset:
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
