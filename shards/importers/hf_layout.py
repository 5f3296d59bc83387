"""Read a local copy of a Hugging Face dataset in any of the layouts the hub and ``datasets`` write.

Layouts (see docs/shard-format.md, "Sources", for where each is specified):

- ``save_to_disk`` / ``snapshot_download`` of a saved ``DatasetDict``: ``CONFIG/dataset_dict.json``
  (``{"splits": [...]}``), ``CONFIG/SPLIT/data-0000K-of-0000N.arrow`` (Arrow IPC **stream**
  files, read with ``pyarrow.ipc.open_stream``), ``SPLIT/state.json`` (``_data_files`` in order)
  and ``SPLIT/dataset_info.json`` (``features``);
- the hub's auto-converted parquet: ``CONFIG/SPLIT/0000.parquet``;
- ``push_to_hub`` parquet: ``[CONFIG/]data/SPLIT-0000K-of-0000N.parquet``.

The split comes from the folder or file name; the features (column types, ClassLabel names)
from the file schema's ``huggingface`` metadata key, else the ``dataset_info.json`` beside it.
Only pyarrow is used: the ``datasets`` library is not needed at run time.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from shards.importers.records import normalize_split

_SPLIT_WORD = re.compile(r"(?<![a-z])(train|training|validation|valid|val|test)(?![a-z])")
_SUFFIXES = (".arrow", ".parquet")


@dataclass(frozen=True)
class HfFile:
    """One data file: where it is, which split it holds, and the dataset folder it belongs to."""

    path: Path
    split: str | None
    group: str
    """The config's folder relative to ROOT ('.' for the root itself): files of one group are one dataset."""

    def read_schema(self) -> pa.Schema:
        try:
            if self.path.suffix == ".parquet":
                return pq.ParquetFile(self.path).schema_arrow
            with pa.memory_map(str(self.path)) as src:
                return ipc.open_stream(src).schema
        except (pa.ArrowException, OSError) as e:
            raise ValueError(f"{self.path}: unreadable {self.path.suffix[1:]} file: {e}") from None

    def batches(self, columns: list[str], rows: int = 16) -> Iterator[list[dict[str, Any]]]:
        """Rows as dicts, ``rows`` at a time (memory stays flat whatever the file size)."""
        try:
            yield from self._batches(columns, rows)
        except (pa.ArrowException, OSError) as e:
            raise ValueError(f"{self.path}: unreadable {self.path.suffix[1:]} file: {e}") from None

    def _batches(self, columns: list[str], rows: int) -> Iterator[list[dict[str, Any]]]:
        if self.path.suffix == ".parquet":
            for batch in pq.ParquetFile(self.path).iter_batches(batch_size=rows, columns=columns):
                yield batch.to_pylist()
            return
        with pa.memory_map(str(self.path)) as src:  # zero-copy: only the rows sliced below are read
            for batch in ipc.open_stream(src):
                batch = batch.select(columns)
                for start in range(0, batch.num_rows, rows):
                    yield batch.slice(start, rows).to_pylist()


def name_split(rel: str) -> str | None:
    """The split a path names (the last split word in it), or None."""
    m = _SPLIT_WORD.findall(rel.lower())
    return normalize_split(m[-1], rel) if m else None


def _group(rel: Path) -> str:
    """The config folder of a data file: the path above ``SPLIT/`` or ``data/``."""
    parts = list(rel.parent.parts)
    if parts and (parts[-1] == "data" or name_split(parts[-1]) is not None):
        parts = parts[:-1]
    return "/".join(parts) or "."


def _saved_files(split_dir: Path) -> list[Path]:
    """A saved split's Arrow files in ``state.json`` order (else sorted by name)."""
    state = split_dir / "state.json"
    if state.is_file():
        try:
            names = [d["filename"] for d in json.loads(state.read_text())["_data_files"]]
        except (KeyError, TypeError, json.JSONDecodeError) as e:
            raise ValueError(f"{state}: not a datasets state.json ({e!r})") from None
        missing = [n for n in names if not (split_dir / n).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{split_dir / missing[0]}: listed in {state} but missing (incomplete download?)"
            )
        return [split_dir / n for n in names]
    return sorted(split_dir.glob("*.arrow"))


def discover(root: Path, config: str | None = None) -> list[HfFile]:
    """Every data file of the one dataset config under ``root`` (``config`` picks among several)."""
    files: list[HfFile] = []
    seen: set[Path] = set()
    for dd in sorted(root.rglob("dataset_dict.json")):
        try:
            splits = json.loads(dd.read_text())["splits"]
        except (KeyError, TypeError, json.JSONDecodeError) as e:
            raise ValueError(f"{dd}: not a datasets dataset_dict.json ({e!r})") from None
        group = dd.parent.relative_to(root).as_posix() or "."
        for s in splits:
            for p in _saved_files(dd.parent / s):
                files.append(HfFile(path=p, split=normalize_split(s, str(dd)), group=group))
                seen.add(p)
    for p in sorted(q for q in root.rglob("*") if q.suffix in _SUFFIXES and q.is_file()):
        if p in seen or any(part.startswith(".") for part in p.relative_to(root).parts):
            continue
        rel = p.relative_to(root)
        files.append(HfFile(path=p, split=name_split(rel.as_posix()), group=_group(rel)))
    if not files:
        raise FileNotFoundError(
            f"{root}: no Hugging Face data files (dataset_dict.json + *.arrow, or *.parquet) found"
        )
    groups = sorted({f.group for f in files})
    if config is not None:
        files = [f for f in files if f.group == config or Path(f.group).name == config]
        if not files:
            raise ValueError(f"{root}: no dataset config {config!r}; found {groups}")
    elif len(groups) > 1:
        raise ValueError(f"{root}: several dataset configs {groups}; choose one with --hf-config")
    kinds = {f.path.suffix for f in files}
    if len(kinds) > 1:
        raise ValueError(
            f"{root}: both .arrow and .parquet files for config {files[0].group!r}; keep one copy"
        )
    named = [f for f in files if f.split is not None]
    if named and len(named) < len(files):  # none named (a saved Dataset): seeded split by the importer
        f = next(f for f in files if f.split is None)
        raise ValueError(f"{f.path}: names no split (train/validation/test) while {named[0].path.name} does")
    return files


def features(f: HfFile) -> dict[str, Any]:
    """The ``datasets`` Features of a file as plain JSON: schema metadata, else dataset_info.json."""
    raw = (f.read_schema().metadata or {}).get(b"huggingface")
    if raw is not None:
        try:
            return dict(json.loads(raw)["info"]["features"])
        except (KeyError, TypeError, json.JSONDecodeError) as e:
            raise ValueError(f"{f.path}: unreadable 'huggingface' schema metadata ({e!r})") from None
    for info in (f.path.parent / "dataset_info.json", f.path.parent.parent / "dataset_info.json"):
        if info.is_file():
            try:
                return dict(json.loads(info.read_text())["features"])
            except (KeyError, TypeError, json.JSONDecodeError) as e:
                raise ValueError(f"{info}: no 'features' in dataset_info.json ({e!r})") from None
    raise ValueError(
        f"{f.path}: no 'huggingface' key in the schema metadata and no dataset_info.json beside it "
        "(not a Hugging Face export?)"
    )


def columns_of_type(feats: dict[str, Any], kind: str) -> list[str]:
    """Columns whose feature ``_type`` is ``kind`` (e.g. Image, Audio, ClassLabel), in schema order."""
    return [c for c, v in feats.items() if isinstance(v, dict) and v.get("_type") == kind]
