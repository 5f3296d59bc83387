"""``ccmusic`` importer: a local copy of Hugging Face ``ccmusic-database/music_genre`` (parquet).

Layout: ``*.parquet`` files anywhere under ROOT with an ``audio`` column (struct of
``bytes`` and ``path``) and integer ClassLabel columns ``fst_level_label`` (2),
``sec_level_label`` (9), ``thr_level_label`` (16). Class names come from the
``huggingface`` key of the parquet schema metadata (``info.features.COL.names``).
Splits come from the file names (``train``/``validation``/``test`` in the path); with a
single file that names no split, a seeded 80/10/10 split by hash of the key.

hier (default): three levels, parent links derived from the rows and checked (a class
with two parents is an error; a class never seen takes the same-named class one level
up, as ``3_Symphony`` does, else it is an error). single: ``sec_level_label``.

The audio bytes are extracted once, streaming, to ``OUT/.ccmusic-audio/`` (kept for
resume, removed by ``--force``) so workers read files and memory stays flat.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from shards.atomic import atomic_path
from shards.config import BuildConfig
from shards.importers import Importer, register_importer
from shards.manifest import Level, TaskSpec
from shards.records import SPLITS, Dataset, Record, Reject, hash_split, hierarchy_levels, require_dir

LEVELS = ["fst_level_label", "sec_level_label", "thr_level_label"]
EXTRACT_DIR = ".ccmusic-audio"
_SPLIT_WORD = re.compile(r"(?<![a-z])(train|validation|valid|test)(?![a-z])")


def class_names(path: Path, schema: Any) -> dict[str, list[str]]:
    """ClassLabel names per level column from the parquet's ``huggingface`` metadata."""
    raw = (schema.metadata or {}).get(b"huggingface")
    if raw is None:
        raise ValueError(f"{path}: no 'huggingface' key in the parquet schema metadata (not a HF export?)")
    try:
        feats = json.loads(raw)["info"]["features"]
        return {c: list(feats[c]["names"]) for c in LEVELS}
    except (KeyError, TypeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: huggingface metadata lacks ClassLabel names for {LEVELS}: {e!r}") from None


def file_split(path: Path, root: Path) -> str | None:
    m = _SPLIT_WORD.findall(path.relative_to(root).as_posix().lower())
    return {"valid": "validation"}.get(m[-1], m[-1]) if m else None


def _levels(rows: list[tuple[int, ...]], names: dict[str, list[str]], where: str) -> list[Level]:
    """The hierarchy of the rows' ClassLabel indexes (one per level)."""
    paths = [tuple(names[lv][i] for lv, i in zip(LEVELS, r)) for r in rows]
    return hierarchy_levels(paths, [(lv, names[lv]) for lv in LEVELS], where)


def _extract(audio: dict | None, dest: Path) -> str | None:
    """Write one row's audio bytes to ``dest`` (skipped when already there); None or a reject reason."""
    if not audio or not audio.get("bytes"):
        return "no audio bytes in the parquet row"
    data = audio["bytes"]
    if not (dest.is_file() and dest.stat().st_size == len(data)):
        with atomic_path(dest) as tmp:
            tmp.write_bytes(data)
    return None


def load(cfg: BuildConfig) -> Dataset:
    require_dir(cfg.root, "ccmusic root")
    files = sorted(cfg.root.rglob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"{cfg.root}: no *.parquet files (expected the Hugging Face parquet layout)")
    splits = {f: file_split(f, cfg.root) for f in files}
    if len(files) > 1 and None in splits.values():
        f = next(f for f, s in splits.items() if s is None)
        raise ValueError(f"{f}: file name names no split (train/validation/test) and there are several files")
    names: dict[str, list[str]] | None = None
    extract = cfg.out / EXTRACT_DIR
    if cfg.force and extract.exists():
        shutil.rmtree(extract)
    rows: list[tuple[int, ...]] = []
    records, rejects = [], []
    for f in files:
        pf = pq.ParquetFile(f)
        cols = set(pf.schema_arrow.names)
        missing = [c for c in ["audio", *LEVELS] if c not in cols]
        if missing:
            raise ValueError(f"{f}: missing column(s) {missing}; has {sorted(cols)}")
        file_names = class_names(f, pf.schema_arrow)
        if names is not None and file_names != names:
            raise ValueError(f"{f}: ClassLabel names differ from {files[0]}")
        names = file_names
        row = 0
        for batch in pf.iter_batches(batch_size=16, columns=["audio", *LEVELS]):
            for item in batch.to_pylist():
                src = (item["audio"] or {}).get("path") or f"{f.stem}_{row}"
                key = f"{f.stem}_{row}_{Path(src).stem}"
                where = f"{f.relative_to(cfg.root)}#{row}"
                row += 1
                labels = tuple(item[c] for c in LEVELS)
                if any(v is None or not 0 <= v < len(names[c]) for v, c in zip(labels, LEVELS)):
                    rejects.append(Reject(path=where, reason=f"label out of range: {labels}", key=key))
                    continue
                dest = extract / f.stem / f"{row - 1:06d}{Path(src).suffix.lower() or '.bin'}"
                reason = _extract(item["audio"], dest)
                if reason:
                    rejects.append(Reject(path=where, reason=reason, key=key))
                    continue
                rows.append(labels)
                split = splits[f] or hash_split(key, cfg.seed)
                lab = [names[c][v] for c, v in zip(LEVELS, labels)]
                records.append(
                    Record(
                        key=key,
                        audio=dest,
                        labels=lab if cfg.task == "hier" else lab[1],
                        split=split,
                        path=f"{where} {src}",
                    )
                )
    assert names is not None
    if cfg.task == "hier":
        task = TaskSpec(kind="hier", name="genre", levels=_levels(rows, names, str(files[0])))
    else:
        task = TaskSpec(kind="single", name="genre", classes=names[LEVELS[1]])
    assert all(r.split in SPLITS for r in records)
    return Dataset(source="ccmusic", task=task, records=records, rejects=rejects)


register_importer(Importer(name="ccmusic", load=load, tasks=("hier", "single")))
