"""``--split-files DIR``: the published MagnaTagATune "clean" split of Lee et al. / Won et al.

Two layouts are read, as their authors publish them (both sit in
minzwon/sota-music-tagging-models ``split/mtat/``):

- Won et al.: ``train.npy``, ``valid.npy``, ``test.npy``, numpy string arrays whose entries
  are ``"<row>\\t<mp3_path>"``; ``<row>`` is the 0-based data row of annotations_final.csv
  (not the clip_id: clip ids start at 2 and skip numbers).
- Lee et al. (jongpillee/music_dataset_split ``MTAT_split``): ``train_list_pub.cP``,
  ``valid_list_pub.cP``, ``test_list_pub.cP``, pickled lists of paths ``"<dir>/<name>.npy"``
  (the mp3_path with the extension changed); matched to rows by mp3_path.

The tag vocabulary comes from ``tags.npy`` (numpy string array, CSV spellings) when
present, else ``top50_tags.txt`` (one per line; some spelled in camelCase: ``noVocals`` is
the column ``no vocals``). Names map to columns exactly, else by lowercased letters and
digits. Any name or row that matches nothing is one error naming them.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import numpy as np

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
