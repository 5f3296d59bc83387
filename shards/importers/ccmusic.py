"""``ccmusic`` importer: a local copy of Hugging Face ``ccmusic-database/music_genre``.

Any layout ``shards.importers.hf_layout`` reads (save_to_disk / snapshot Arrow, auto-converted
parquet, push_to_hub parquet), either config:
- ``eval``: 11.4 s segments as three spectrogram ``Image`` columns ``mel``, ``cqt``, ``chroma``
  -> image samples (bytes unchanged, decode-checked at build time);
- ``default`` (older revisions): whole pieces in an ``Audio`` column -> audio samples.
``--media`` picks when a dataset has both. Labels: ClassLabel columns ``fst_level_label`` (2),
``sec_level_label`` (9), ``thr_level_label`` (16), names from the features. A label of -1
(HF's "missing") is a reject. Older revisions: string labels (``3_Symphony``, ordered by
their number), a ``None`` / null third level (it takes the second level's class, as today's
revision does) import; integer ids without names, or ids beyond the names, fail in one line.

hier (default): three levels, parent links derived from the rows and checked (a class
with two parents is an error; a class never seen takes the same-named class one level
up, else it is an error). single: ``sec_level_label``.

Media bytes are extracted once, streaming, to ``OUT/.ccmusic-media/`` (kept for resume,
removed by ``--force``) so workers read files and memory stays flat.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from shards.base.atomic import atomic_path
from shards.base.tasks import TaskSpec
from shards.importers import Importer, ImporterOptions, ImportSettings, register_importer
from shards.importers.hf_layout import HfFile, columns_of_type, discover, features
from shards.importers.records import Dataset, Record, Reject, hash_split, hierarchy_levels, require_dir

LEVELS = ["fst_level_label", "sec_level_label", "thr_level_label"]
EXTRACT_DIR = ".ccmusic-media"
_NUMBERED = re.compile(r"^(\d+)_")


def class_names(f: HfFile, feats: dict[str, Any]) -> dict[str, list[str] | None]:
    """ClassLabel names per level column; None for a string column (names come from the rows)."""
    out: dict[str, list[str] | None] = {}
    missing = [c for c in LEVELS if c not in feats]
    if missing:
        raise ValueError(f"{f.path}: missing column(s) {missing}; has {sorted(feats)}")
    for c in LEVELS:
        ft = feats[c] if isinstance(feats[c], dict) else {}
        if ft.get("_type") == "ClassLabel" and ft.get("names"):
            out[c] = [str(n) for n in ft["names"]]
        elif ft.get("_type") == "Value" and ft.get("dtype") in ("string", "large_string"):
            out[c] = None
        else:
            raise ValueError(
                f"{f.path}: {c} is {ft.get('_type')}({ft.get('dtype', '')}) without ClassLabel names, "
                "so its ids cannot be named (an unsupported revision)"
            )
    return out


def label_names(
    item: dict[str, Any], names: dict[str, list[str] | None], where: str
) -> tuple[list[str] | None, str | None]:
    """One row's class name per level, or (None, reject reason). A None / 'None' third level
    takes the second level's name; an id beyond the names fails the build."""
    out: list[str] = []
    for d, c in enumerate(LEVELS):
        v, vocab = item[c], names[c]
        if vocab is not None and v is not None:
            if v == -1:
                return None, f"label missing: {c} is -1"
            if not 0 <= v < len(vocab):
                raise ValueError(
                    f"{where}: {c} id {v} outside its {len(vocab)} ClassLabel names "
                    "(ids of another revision?)"
                )
            v = vocab[v]
        if v is None or (d == len(LEVELS) - 1 and v == "None"):
            if d != len(LEVELS) - 1:
                return None, f"label missing: {c} is null"
            v = out[-1]
        out.append(str(v))
    return out, None


def ordered(found: set[str], declared: list[str] | None) -> list[str]:
    """A level's vocabulary: declared ClassLabel order (+ fill-ins), else numbered names by number."""
    if declared is not None:
        base = [n for n in declared if n != "None"]
        return base + sorted(found - set(base))
    if all(_NUMBERED.match(n) for n in found):
        return sorted(found, key=lambda n: (int(_NUMBERED.match(n).group(1)), n))  # type: ignore[union-attr]
    return sorted(found)


@dataclass(kw_only=True)
class CCMusicOptions(ImporterOptions):
    """``[shards]`` keys only the ccmusic importer reads."""

    media: Literal["auto", "audio", "image"] = "auto"
    """Store the spectrogram image columns or the audio column (auto: images when present)."""
    hf_config: str | None = None
    """The Hugging Face config folder to read (eval, default) when ROOT holds several."""

    def __post_init__(self) -> None:
        if self.media not in ("auto", "audio", "image"):
            raise ValueError(f"media: {self.media!r} is not auto, audio or image")


def _extract(data: Any, dest: Path) -> Path | None:
    """Write one cell's bytes to ``dest`` + the cell's own suffix (skipped when already there);
    None when the cell has no bytes."""
    if not isinstance(data, dict) or not data.get("bytes"):
        return None
    raw = data["bytes"]
    dest = dest.with_name(dest.name + (Path(data.get("path") or "").suffix.lower() or ".bin"))
    if not (dest.is_file() and dest.stat().st_size == len(raw)):
        with atomic_path(dest) as tmp:
            tmp.write_bytes(raw)
    return dest


def media_columns(f: HfFile, feats: dict[str, Any], media: str) -> tuple[str, list[str]]:
    """("image", image columns) or ("audio", [audio column]) as ``media`` and the features allow."""
    images, audio = columns_of_type(feats, "Image"), columns_of_type(feats, "Audio")
    if media in ("auto", "image") and images:
        return "image", images
    if media in ("auto", "audio") and audio:
        return "audio", audio[:1]
    want = {"auto": "Image or Audio", "image": "Image", "audio": "Audio"}[media]
    raise ValueError(f"{f.path}: no {want} column; has {sorted(feats)}")


def load(cfg: ImportSettings) -> Dataset:
    opts = cfg.importer_options(CCMusicOptions)
    require_dir(cfg.root, "ccmusic root")
    files = discover(cfg.root, opts.hf_config)
    extract = cfg.local_out / EXTRACT_DIR
    if cfg.force and extract.exists():
        shutil.rmtree(extract)
    feats = features(files[0])
    kind, cols = media_columns(files[0], feats, opts.media)
    names = class_names(files[0], feats)
    rows: list[list[str]] = []
    records, rejects = [], []
    for f in files:
        if f is not files[0] and class_names(f, features(f)) != names:
            raise ValueError(f"{f.path}: ClassLabel names differ from {files[0].path}")
        rel = f.path.relative_to(cfg.root)
        row = 0
        for batch in f.batches([*cols, *LEVELS]):
            for item in batch:
                where = f"{rel}#{row}"
                key = f"{f.path.parent.name}_{f.path.stem}_{row}"
                dest = extract / rel.parent / f.path.stem / f"{row:06d}"
                row += 1
                labels, reason = label_names(item, names, where)
                if labels is None:
                    rejects.append(Reject(path=where, reason=str(reason), key=key))
                    continue
                media = {c: _extract(item[c], dest.with_name(f"{dest.name}_{c}")) for c in cols}
                rec = Record(
                    key=key,
                    audio=None,
                    labels=labels if cfg.task == "hier" else labels[1],
                    split=f.split or hash_split(key, cfg.seed),
                    path=where,
                )
                if kind == "image":
                    rec.images = {c: p for c, p in media.items() if p is not None}
                elif media[cols[0]] is None:
                    rejects.append(Reject(path=where, reason="no audio bytes in the row", key=key))
                    continue
                else:
                    rec.audio = media[cols[0]]
                rows.append(labels)
                records.append(rec)
    return Dataset(
        source="ccmusic",
        task=_task(cfg, rows, names, files[0]),
        records=records,
        rejects=rejects,
        kind=kind,
        channels=cols if kind == "image" else [],
    )


register_importer(Importer(name="ccmusic", load=load, options=CCMusicOptions, tasks=("hier", "single")))


def _task(
    cfg: ImportSettings, rows: list[list[str]], names: dict[str, list[str] | None], first: HfFile
) -> TaskSpec:
    """The 3-level hierarchy (``--task hier``) or the second level alone, named as the data names them."""
    vocab = [ordered({r[d] for r in rows}, names[c]) for d, c in enumerate(LEVELS)]
    if cfg.task != "hier":
        return TaskSpec(kind="single", name="genre", classes=vocab[1])
    levels = hierarchy_levels(rows, list(zip(LEVELS, vocab)), str(first.path))
    return TaskSpec(kind="hier", name="genre", levels=levels)
