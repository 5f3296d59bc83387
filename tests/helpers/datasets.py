"""Helpers for tests that build raw datasets in a publisher's on-disk format and run the CLI.

Shared by the importer tests (tests/test_shards_sources.py, tests/test_shards_fma_mtat.py)
so each test file only describes its dataset and what the build must report.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import soundfile as sf

from shards.bench.synth import GENRES, MOODS, TAGS, synth_track
from shards.cli import main
from shards.format.manifest import read_manifest

SR = 22050


def synth_row(path: str, genre: str, split: str, tags: str = "") -> dict[str, str]:
    """A label-CSV row as ``make_synth`` writes it (its hierarchy, the ``plain`` variant), for a
    file a test adds to a synthetic dataset: usually one the build must reject."""
    mood = MOODS[GENRES.index(genre) // 2]
    return dict(
        path=path, label=genre, tags=tags, level1=mood, level2=genre, level3=f"{genre}_plain", split=split
    )


def add_rows(csv: Path, df: pd.DataFrame, rows: list[dict[str, str]]) -> None:
    """Write ``df`` (the dataset's CSV as read, perhaps edited) with ``rows`` appended to ``csv``."""
    pd.concat([df, pd.DataFrame(rows)]).to_csv(csv, index=False)


def mp3_bytes(seconds: float = 1.5, seed: int = 0) -> bytes:
    """A real MP3 (libsndfile's LAME encoder) of a synthetic track."""
    y = synth_track(seed % 4, 0, TAGS[:2], seconds, SR, np.random.default_rng(seed))
    buf = io.BytesIO()
    sf.write(buf, y, SR, format="MP3", subtype="MPEG_LAYER_III")
    return buf.getvalue()


def build_cli(source: str, root: Path, out: Path, *extra: str) -> int:
    """``python -m shards build SOURCE --root --out --quiet --workers 1 [extra]`` in-process."""
    return main(
        ["build", source, "--root", str(root), "--out", str(out), "--quiet", "--workers", "1", *extra]
    )


def read_rejects(out: Path) -> dict[str, str]:
    """path -> reason of every line of the build's rejects.jsonl."""
    lines = (out / "rejects.jsonl").read_text().splitlines()
    return {r["path"]: r["reason"] for r in map(json.loads, lines)}


def read_labels(out: Path) -> dict[str, tuple[str, Any]]:
    """source_id -> (split, labels by name), read back from every sample's .json in every shard."""
    m = read_manifest(out)
    got = {}
    for split in m.splits:
        for tar in m.paths(split)[0]:
            with tarfile.open(tar) as tf:
                for mem in tf.getmembers():
                    f = tf.extractfile(mem) if mem.name.endswith(".json") else None
                    if f is not None:
                        meta = json.loads(f.read())
                        got[meta["source_id"]] = (split, meta["labels"])
    return got
