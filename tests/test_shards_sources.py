"""fma, mtat and ccmusic importers on tiny datasets written in each publisher's on-disk format."""

from __future__ import annotations

import csv
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from shards.cli import main
from shards.manifest import read_manifest
from shards.mtat import main_genre
from shards.synth import TAGS, synth_track

SR = 22050


def _mp3(seconds: float = 1.5, seed: int = 0) -> bytes:
    y = synth_track(seed % 4, 0, TAGS[:2], seconds, SR, np.random.default_rng(seed))
    buf = io.BytesIO()
    sf.write(buf, y, SR, format="MP3", subtype="MPEG_LAYER_III")
    return buf.getvalue()


def _build(source: str, root: Path, out: Path, *extra: str) -> int:
    return main(
        ["build", source, "--root", str(root), "--out", str(out), "--quiet", "--workers", "1", *extra]
    )


def _rejects(out: Path) -> dict[str, str]:
    return {r["path"]: r["reason"] for r in map(json.loads, (out / "rejects.jsonl").read_text().splitlines())}


def _labels(out: Path) -> dict[str, object]:
    """source_id -> labels by name, read back from every sample's .json in every shard."""
    m = read_manifest(out)
    got = {}
    for split in m.splits:
        for tar in m.paths(split)[0]:
            with tarfile.open(tar) as tf:
                for mem in tf.getmembers():
                    if mem.name.endswith(".json"):
                        meta = json.loads(tf.extractfile(mem).read())  # type: ignore[union-attr]
                        got[meta["source_id"]] = (split, meta["labels"])
    return got


# ---------------------------------------------------------------- FMA
FMA_ROWS = [  # track_id, subset, split, genre_top, audio: "ok" | "empty" | "short" | None (no file)
    (2, "small", "training", "Hip-Hop", "ok"),
    (3, "small", "training", "Rock", "ok"),
    (5, "small", "validation", "Hip-Hop", "ok"),
    (10, "small", "test", "Rock", "empty"),
    (20, "small", "training", "Rock", "short"),
    (1030, "small", "test", "Folk", "ok"),
    (40, "small", "training", None, "ok"),
    (50, "small", "validation", "Folk", None),
    (60, "medium", "training", "Rock", "ok"),
    (70, "large", "test", "Rock", "ok"),
]


@pytest.fixture(scope="module")
def fma_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fma")
    cols = pd.MultiIndex.from_tuples(
        [("set", "subset"), ("set", "split"), ("track", "genre_top"), ("track", "title")]
    )
    df = pd.DataFrame(
        [[s, sp, g, f"t{t}"] for t, s, sp, g, _ in FMA_ROWS],
        columns=cols,
        index=pd.Index([r[0] for r in FMA_ROWS], name="track_id"),
    )
    (root / "fma_metadata").mkdir()
    df.to_csv(root / "fma_metadata" / "tracks.csv")
    for t, _, _, _, kind in FMA_ROWS:
        if kind is None:
            continue
        p = root / "fma_small" / f"{t:06d}"[:3] / f"{t:06d}.mp3"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"" if kind == "empty" else _mp3(0.3 if kind == "short" else 1.5, seed=t))
    return root


def test_fma_small(fma_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    assert _build("fma", fma_root, out, "--workers", "2") == 0  # the process pool path
    m = read_manifest(out)
    assert m.task.kind == "single" and m.task.classes == ["Folk", "Hip-Hop", "Rock"]
    assert m.totals == {"input": 8, "written": 4, "rejected": 4}
    assert {s: i.num_samples for s, i in m.splits.items()} == {"train": 2, "validation": 1, "test": 1}
    rej = _rejects(out)
    assert rej["fma_small/000/000010.mp3"].startswith("decode failed")
    assert rej["fma_small/000/000020.mp3"].startswith("too short: 0.3")
    assert rej["fma_small/000/000040.mp3"] == "no genre_top"
    assert rej["fma_small/000/000050.mp3"] == "missing file"
    assert _labels(out) == {
        "000002": ("train", "Hip-Hop"),
        "000003": ("train", "Rock"),
        "000005": ("validation", "Hip-Hop"),
        "001030": ("test", "Folk"),
    }


def test_fma_subset_and_malformed(fma_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert _build("fma", fma_root, tmp_path / "m", "--subset", "medium") == 0  # no fma_medium/ folder
    m = read_manifest(tmp_path / "m")
    assert m.totals == {"input": 9, "written": 0, "rejected": 9} and m.splits == {}
    (tmp_path / "bad.csv").write_text("track_id,genre\n1,Rock\n")
    assert _build("fma", fma_root, tmp_path / "x", "--csv", str(tmp_path / "bad.csv")) == 2
    err = capsys.readouterr().err
    assert "bad.csv: malformed CSV" in err and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------- MagnaTagATune
MTAT_TAGS = ["guitar", "classical", "rock", "techno", "metal", "pop", "quiet"]
MTAT_ROWS = [  # clip_id, mp3_path, tags, broken
    ("1", "0/artist-a-01-x-0-29.mp3", ["classical", "guitar"], False),
    ("2", "3/artist-b-02-y-30-59.mp3", ["rock", "metal"], False),
    ("3", "c/artist-c-03-z-0-29.mp3", ["techno"], False),
    ("4", "d/artist-d-04-w-0-29.mp3", ["quiet"], False),
    ("5", "f/artist-e-05-v-0-29.mp3", ["pop", "rock"], False),
    ("6", "e/artist-f-06-u-0-29.mp3", ["rock"], True),
    ("7", "b/artist-g-07-t-0-29.mp3", ["guitar", "rock"], False),
]


@pytest.fixture(scope="module")
def mtat_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mtat")
    rows = [[cid, *[int(t in tags) for t in MTAT_TAGS], rel] for cid, rel, tags, _ in MTAT_ROWS]
    pd.DataFrame(rows, columns=["clip_id", *MTAT_TAGS, "mp3_path"]).to_csv(
        root / "annotations_final.csv", sep="\t", index=False, quoting=csv.QUOTE_ALL
    )
    for cid, rel, _, broken in MTAT_ROWS:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"" if broken else _mp3(seed=int(cid)))
    return root


def test_mtat_file_is_quoted_tsv(mtat_root: Path) -> None:
    head = (mtat_root / "annotations_final.csv").read_text().splitlines()[0]
    assert head.startswith('"clip_id"\t"guitar"') and head.endswith('"mp3_path"')


def test_mtat_top_n_tags(mtat_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    assert _build("mtat", mtat_root, out, "--top-n", "3") == 0
    m = read_manifest(out)
    assert m.task.kind == "multi" and m.task.classes == ["guitar", "classical", "rock"]
    assert m.totals == {"input": 7, "written": 6, "rejected": 1}
    assert {s: i.num_samples for s, i in m.splits.items()} == {"train": 3, "validation": 1, "test": 2}
    assert _rejects(out)["e/artist-f-06-u-0-29.mp3"].startswith("decode failed")
    got = _labels(out)
    assert got["1"] == ("train", ["guitar", "classical"]) and got["3"] == ("validation", [])
    assert got["4"] == ("test", [])


def test_mtat_clean(mtat_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    assert _build("mtat", mtat_root, out, "--top-n", "3", "--clean") == 0
    m = read_manifest(out)
    assert m.totals == {"input": 7, "written": 4, "rejected": 3}
    assert {s: i.num_samples for s, i in m.splits.items()} == {"train": 3, "test": 1}
    rej = _rejects(out)
    assert rej["c/artist-c-03-z-0-29.mp3"] == rej["d/artist-d-04-w-0-29.mp3"] == "no top-3 tag (--clean)"


def test_mtat_main_genre(mtat_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    assert _build("mtat", mtat_root, out, "--task", "single") == 0
    m = read_manifest(out)
    assert m.task.classes == [
        "classical",
        "electronic",
        "rock",
        "ambient",
        "folk",
        "jazz",
        "pop",
        "hiphop",
        "metal",
    ]
    assert m.totals == {"input": 7, "written": 5, "rejected": 2}
    assert _rejects(out)["d/artist-d-04-w-0-29.mp3"] == "no main-genre tag"
    assert {k: v[1] for k, v in _labels(out).items()} == {
        "1": "classical",
        "2": "metal",
        "3": "electronic",
        "5": "rock",
        "7": "rock",
    }
    assert main_genre(["heavy metal", "metal", "rock"]) == "metal"
    assert main_genre(["rock", "hard rock", "metal"]) == "rock" and main_genre(["quiet"]) is None


# ---------------------------------------------------------------- ccmusic (Hugging Face parquet)
FST = ["1_Classic", "2_Non_classic"]
SEC = ["3_Symphony", "4_Opera", "7_Pop", "11_Rock"]
THR = ["3_Symphony", "4_Opera", "12_Pop_vocal_ballad", "14_Teen_pop", "21_Soft_rock"]
HF_META = {
    "info": {
        "features": {
            "audio": {"sampling_rate": SR, "_type": "Audio"},
            "fst_level_label": {"names": FST, "_type": "ClassLabel"},
            "sec_level_label": {"names": SEC, "_type": "ClassLabel"},
            "thr_level_label": {"names": THR, "_type": "ClassLabel"},
        }
    }
}


def _parquet(path: Path, rows: list[tuple[int, int, int] | None], seed: int = 0) -> None:
    """rows: label triples (None = a row without audio bytes, labelled 0/0/0)."""
    audio = [
        {"bytes": None if r is None else _mp3(seed=seed + i), "path": f"{seed + i:04d}.mp3"}
        for i, r in enumerate(rows)
    ]
    labels = [r or (0, 0, 0) for r in rows]
    table = pa.table(
        {
            "audio": pa.array(audio, type=pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
            **{
                c: pa.array([lab[k] for lab in labels], type=pa.int64())
                for k, c in enumerate(["fst_level_label", "sec_level_label", "thr_level_label"])
            },
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table.replace_schema_metadata({b"huggingface": json.dumps(HF_META).encode()}), path)


def test_ccmusic_hier_splits_from_file_names(tmp_path: Path) -> None:
    root = tmp_path / "cc"
    _parquet(root / "data" / "train-00000-of-00001.parquet", [(0, 0, 0), (1, 2, 2), (1, 2, 3), None], seed=0)
    _parquet(root / "data" / "validation-00000-of-00001.parquet", [(1, 3, 4), (0, 1, 1)], seed=10)
    _parquet(root / "data" / "test-00000-of-00001.parquet", [(0, 0, 0), (1, 3, 4)], seed=20)
    out = tmp_path / "o"
    assert _build("ccmusic", root, out) == 0
    m = read_manifest(out)
    assert m.totals == {"input": 8, "written": 7, "rejected": 1}
    assert {s: i.num_samples for s, i in m.splits.items()} == {"train": 3, "validation": 2, "test": 2}
    l1, l2, l3 = m.task.levels
    assert (l1.classes, l2.classes, l3.classes) == (FST, SEC, THR)
    assert l2.parent == [0, 0, 1, 1] and l3.parent == [0, 1, 2, 2, 3]
    assert list(_rejects(out).values()) == ["no audio bytes in the row"]
    labels = sorted(v[1] for v in _labels(out).values())
    assert labels[0] == ["1_Classic", "3_Symphony", "3_Symphony"] and len(labels) == 7


def test_ccmusic_single_file_and_bad_parents(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "cc"
    _parquet(
        root / "music_genre.parquet", [(1, 2, 2)] * 10 + [(0, 0, 0)] * 10 + [(0, 1, 1)] * 2 + [(1, 3, 4)] * 2
    )
    out = tmp_path / "o"
    assert _build("ccmusic", root, out, "--task", "single", "--min-seconds", "0.5") == 0
    m = read_manifest(out)
    assert m.task.classes == SEC and m.totals["written"] == 24
    assert sum(i.num_samples for i in m.splits.values()) == 24 and m.splits["train"].num_samples >= 12
    _parquet(root / "music_genre.parquet", [(0, 2, 2), (1, 2, 2), (0, 0, 0), (0, 1, 1), (1, 3, 4)])
    assert _build("ccmusic", root, tmp_path / "o2") == 2
    err = capsys.readouterr().err
    assert (
        "music_genre.parquet: sec_level_label '7_Pop' has two parents ('1_Classic' and '2_Non_classic')"
        in err
    )
