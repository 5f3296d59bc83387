"""A small raw dataset for the scale-out tests (several shards per split, two rejects, a file
named ``killme``) and the one-machine reference build every other executor must reproduce."""

from __future__ import annotations

import filecmp
import json
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

from helpers.datasets import add_rows, synth_row
from shards.bench.synth import make_synth
from shards.cli import main

SHARD_MB = "0.035"  # ~2 tracks of 2 s per shard (OGG; estimated 13.5 KiB each with their ids and json)


def make_raw(root: Path) -> Path:
    """12 synthetic tracks of 2 s (WAV, FLAC, OGG), one renamed ``killme``, plus an empty file
    and a too-short one (two rejects)."""
    csv = make_synth(root, tracks=12, seconds=2.0, seed=5, formats=["wav", "flac", "ogg"])
    df = pd.read_csv(csv, keep_default_na=False)
    first = root / df.loc[0, "path"]
    first.rename(first.with_name("killme" + first.suffix))
    df.loc[0, "path"] = f"audio/killme{first.suffix}"
    (root / "audio" / "empty.wav").write_bytes(b"")
    sf.write(root / "audio" / "short.wav", np.zeros(400, dtype=np.float32), 16000)
    rows = [synth_row("audio/empty.wav", "blues", "train"), synth_row("audio/short.wav", "disco", "test")]
    add_rows(csv, df, rows)
    return root


def build_args(raw: Path, out: str | Path, *extra: str) -> list[str]:
    """``python -m shards build folder ...`` arguments of every build in these tests."""
    return [
        "build",
        "folder",
        "--root",
        str(raw),
        "--out",
        str(out),
        "--codec",
        "ogg",
        "--shard-size",
        SHARD_MB,
        "--quiet",
        *extra,
    ]


def reference(raw: Path, out: Path) -> Path:
    """The local process-pool build (2 workers) that every other executor must reproduce."""
    assert main([*build_args(raw, out), "--workers", "2"]) == 0
    return out


def build_files(out: Path) -> list[str]:
    """The build's files a reader sees (manifest, rejects, tars, indexes), relative names."""
    names = [p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()]
    return sorted(n for n in names if not n.startswith("."))


def assert_same_build(got: Path, want: Path) -> None:
    """Same files, byte for byte (manifest, rejects.jsonl, every tar and index)."""
    assert build_files(got) == build_files(want)
    assert json.loads((got / "manifest.json").read_text())["splits"]  # something was written
    for name in build_files(want):
        assert filecmp.cmp(got / name, want / name, shallow=False), name
