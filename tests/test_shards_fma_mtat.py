"""FMA and MagnaTagATune as they really ship, through the CLI: the metadata files in their
real formats (tracks.csv's 52 columns under a three-row header, annotations_final.csv's
188 tag columns, the published split lists) and the faults real copies contain."""

from __future__ import annotations

import csv
import hashlib
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers.datasets import build_cli, mp3_bytes, read_labels, read_rejects
from helpers.mtat_columns import MTAT_COLUMNS

from shards.builder.audio import AudioSpec, transcode
from shards.format.manifest import read_manifest
from shards.importers.mtat import GENRE_TAGS, main_genre, map_tags

# ---------------------------------------------------------------- FMA
# tracks.csv as fma_metadata.zip ships it: 52 columns, sorted, under (album|artist|set|track).
FMA_COLUMNS = (
    [("album", c) for c in "comments date_created date_released engineer favorites id information listens producer tags title tracks type".split()]
    + [("artist", c) for c in "active_year_begin active_year_end associated_labels bio comments date_created favorites id latitude location longitude members name related_projects tags website wikipedia_page".split()]
    + [("set", "split"), ("set", "subset")]
    + [("track", c) for c in "bit_rate comments composer date_created date_recorded duration favorites genre_top genres genres_all information interest language_code license listens lyricist number publisher tags title".split()]
)  # fmt: skip
NO_AUDIO = b"ID3\x03\x00\x00\x00\x00\x0d\x5e" + bytes(1742)  # 1,752 bytes: an ID3 tag, no MPEG frame
FMA_ROWS = [  # track_id, subset, split, genre_top, audio
    (2, "small", "training", "Hip-Hop", "ok"),
    (3, "small", "training", "Rock", "unlisted"),  # fine, but absent from fma_small/checksums
    (5, "small", "validation", "Hip-Hop", "ok"),
    (10, "small", "test", "Rock", "empty"),
    (20, "small", "training", "Rock", "no-audio"),  # like fma_small 099134, 108925, 133297
    (30, "small", "training", "Folk", "3s"),  # like fma_small 098565, 098567, 098569
    (80, "small", "training", "Rock", "truncated"),  # half-downloaded: decodes, shorter
    (1030, "small", "test", "Folk", "ok"),
    (40, "small", "training", "", "ok"),
    (50, "small", "validation", "Folk", None),  # no file
    (60, "medium", "training", "Rock", "ok"),
    (70, "large", "test", "Rock", "ok"),
]


def _filler(col: tuple[str, str], tid: int) -> str:
    """Free text as the real file has it: commas, quotes, a line break inside quotes."""
    return {"bio": f'<p>Band {tid}, "live",\nsince 2008</p>', "tags": "['a', 'b']"}.get(
        col[1], f"{col[1]}{tid}"
    )


@pytest.fixture(scope="module")
def fma_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fma")
    values = {("set", "subset"): 1, ("set", "split"): 2, ("track", "genre_top"): 3}
    rows = [[r[values[c]] if c in values else _filler(c, r[0]) for c in FMA_COLUMNS] for r in FMA_ROWS]
    df = pd.DataFrame(
        rows,
        columns=pd.MultiIndex.from_tuples(FMA_COLUMNS),
        index=pd.Index([r[0] for r in FMA_ROWS], name="track_id"),
    )
    (root / "fma_metadata").mkdir()
    df.to_csv(root / "fma_metadata" / "tracks.csv")
    sums = []
    for tid, _, _, _, kind in FMA_ROWS:
        if kind is None:
            continue
        rel = f"{tid:06d}"[:3] + f"/{tid:06d}.mp3"
        full = mp3_bytes(3.0 if kind == "3s" else 6.0, seed=tid)
        data = {"empty": b"", "no-audio": NO_AUDIO, "truncated": full[: len(full) // 2]}.get(kind, full)
        p = root / "fma_small" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        if kind != "unlisted":  # the checksum is of the published file: for 80, the full one
            sums.append(f"{hashlib.sha1(full if kind == 'truncated' else data).hexdigest()}  {rel}\n")
    (root / "fma_small" / "checksums").write_text("".join(sums))
    return root


def test_fma_tracks_csv_is_the_real_layout(fma_root: Path) -> None:
    head = (fma_root / "fma_metadata" / "tracks.csv").read_text().splitlines()[:3]
    assert head[0].startswith(",album,album") and head[1].startswith(",comments,date_created")
    assert head[2] == "track_id" + "," * 52 and len(FMA_COLUMNS) == 52


def test_fma_small_faults(fma_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    assert build_cli("fma", fma_root, out, "--workers", "2") == 0  # the transcode pool path
    m = read_manifest(out)
    assert m.task.kind == "single" and m.task.classes == ["Folk", "Hip-Hop", "Rock"]
    assert m.totals == {"input": 10, "written": 6, "rejected": 4}
    assert {s: i.num_samples for s, i in m.splits.items()} == {"train": 4, "validation": 1, "test": 1}
    assert read_rejects(out) == {
        "fma_small/000/000010.mp3": "empty file (0 bytes)",
        "fma_small/000/000020.mp3": "no audio frames (1752 bytes)",
        "fma_small/000/000040.mp3": "no genre_top",
        "fma_small/000/000050.mp3": "missing file",
    }
    assert read_labels(out) == {
        "000002": ("train", "Hip-Hop"),
        "000003": ("train", "Rock"),
        "000030": ("train", "Folk"),  # the 3 s clip is kept: the loader pads it
        "000080": ("train", "Rock"),  # truncated, yet it decodes: only --verify catches it
        "000005": ("validation", "Hip-Hop"),
        "001030": ("test", "Folk"),
    }
    assert m.splits["train"].min_seconds < 4.0  # the truncated and the short clip are in


def test_fma_verify_and_min_seconds(fma_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    assert build_cli("fma", fma_root, out, "--verify", "--min-seconds", "5") == 0
    m = read_manifest(out)
    assert m.task.classes == ["Folk", "Hip-Hop", "Rock"]  # the vocabulary does not depend on --verify
    assert m.totals == {"input": 10, "written": 3, "rejected": 7}
    full = hashlib.sha1(mp3_bytes(6.0, seed=80)).hexdigest()
    cut = hashlib.sha1((fma_root / "fma_small/000/000080.mp3").read_bytes()).hexdigest()
    assert read_rejects(out) == {
        "fma_small/000/000003.mp3": "not listed in fma_small/checksums",
        "fma_small/000/000010.mp3": "empty file (0 bytes)",
        "fma_small/000/000020.mp3": "no audio frames (1752 bytes)",
        "fma_small/000/000030.mp3": "too short: 3 s < min_seconds 5",
        "fma_small/000/000040.mp3": "no genre_top",
        "fma_small/000/000050.mp3": "missing file",
        "fma_small/000/000080.mp3": f"checksum mismatch: sha1 {cut} != {full} in fma_small/checksums "
        "(re-download the archive)",
    }
    assert set(read_labels(out)) == {"000002", "000005", "001030"}


def test_fma_subset_and_malformed(fma_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert build_cli("fma", fma_root, tmp_path / "m", "--subset", "medium") == 0  # no fma_medium/ folder
    m = read_manifest(tmp_path / "m")
    assert m.totals == {"input": 11, "written": 0, "rejected": 11} and m.splits == {}
    assert build_cli("fma", fma_root, tmp_path / "v", "--subset", "medium", "--verify") == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith(
            "fma_medium/checksums: checksums file not found (--verify needs the one FMA ships in each fma_SUBSET folder)"
        )
    )
    (tmp_path / "bad.csv").write_text("track_id,genre\n1,Rock\n")
    assert build_cli("fma", fma_root, tmp_path / "x", "--csv", str(tmp_path / "bad.csv")) == 2
    err = capsys.readouterr().err
    assert "bad.csv: malformed CSV" in err and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------- MagnaTagATune
# top50_tags.txt as published (jongpillee/music_dataset_split, minzwon/sota-music-tagging-models)
TOP50 = (
    "guitar classical slow techno strings drums electronic rock fast piano ambient beat violin vocal synth "
    "female indian opera male singing vocals noVocals harpsichord loud quiet flute woman maleVocal noVocal "
    "pop soft sitar solo man classic choir voice newAge dance maleVoice femaleVocal beats harp cello noVoice "
    "weird country femaleVoice metal choral"
).split()
EMPTY_CLIP = "6/norine_braun-now_and_zen-08-gently-117-146.mp3"  # clip 35644: 0 bytes in every copy
MTAT_ROWS = [  # clip_id (not the row index), mp3_path, tags
    ("2", "0/artist-a-01-x-0-29.mp3", ["classical", "guitar"]),
    ("6", "3/artist-b-02-y-30-59.mp3", ["rock", "metal"]),
    ("10", "c/artist-c-03-z-0-29.mp3", ["techno"]),
    ("11", "d/artist-d-04-w-0-29.mp3", ["quiet"]),
    ("12", "f/artist-e-05-v-0-29.mp3", ["pop", "rock"]),
    ("35644", EMPTY_CLIP, ["rock"]),
    ("15", "b/artist-g-07-t-0-29.mp3", ["guitar", "rock", "no vocals"]),
    ("20", "e/artist-h-08-s-0-29.mp3", ["no vocals", "piano"]),
]
PUBLISHED = {"train": [0, 6, 5], "valid": [2], "test": [1, 4]}  # rows; row 1 is in 3/ yet listed as test


@pytest.fixture(scope="module")
def mtat_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mtat")
    rows = [[cid, *[int(t in tags) for t in MTAT_COLUMNS], rel] for cid, rel, tags in MTAT_ROWS]
    pd.DataFrame(rows, columns=["clip_id", *MTAT_COLUMNS, "mp3_path"]).to_csv(
        root / "annotations_final.csv", sep="\t", index=False, quoting=csv.QUOTE_ALL
    )
    for cid, rel, _ in MTAT_ROWS:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"" if rel == EMPTY_CLIP else mp3_bytes(seed=int(cid)))
    won, lee = root / "split_won", root / "split_lee"
    for d in (won, lee):
        d.mkdir()
        (d / "top50_tags.txt").write_text("\n".join(TOP50) + "\n")
    for name, rows_ in PUBLISHED.items():
        np.save(won / f"{name}.npy", np.array([f"{i}\t{MTAT_ROWS[i][1]}" for i in rows_]))
        with (lee / f"{name}_list_pub.cP").open("wb") as f:
            pickle.dump([MTAT_ROWS[i][1][:-4] + ".npy" for i in rows_], f, protocol=2)
    return root


def test_mtat_names_are_real_columns(mtat_root: Path) -> None:
    head = (mtat_root / "annotations_final.csv").read_text().splitlines()[0].split("\t")
    assert head[0] == '"clip_id"' and head[-1] == '"mp3_path"' and len(head) == 190
    assert len(MTAT_COLUMNS) == len(set(MTAT_COLUMNS)) == 188
    assert [t for tags in GENRE_TAGS.values() for t in tags if t not in MTAT_COLUMNS] == []
    mapped = map_tags(TOP50, list(MTAT_COLUMNS), Path("top50_tags.txt"))
    assert {a: b for a, b in zip(TOP50, mapped) if a != b} == {
        "noVocals": "no vocals",
        "maleVocal": "male vocal",
        "noVocal": "no vocal",
        "newAge": "new age",
        "maleVoice": "male voice",
        "femaleVocal": "female vocal",
        "noVoice": "no voice",
        "femaleVoice": "female voice",
    }


def test_mtat_top_n_tags(mtat_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    assert build_cli("mtat", mtat_root, out, "--top-n", "3") == 0
    m = read_manifest(out)
    assert m.task.kind == "multi" and m.task.classes == ["guitar", "no vocals", "rock"]  # file order
    assert m.totals == {"input": 8, "written": 7, "rejected": 1}
    assert {s: i.num_samples for s, i in m.splits.items()} == {"train": 3, "validation": 1, "test": 3}
    assert read_rejects(out) == {EMPTY_CLIP: "empty file (0 bytes)"}  # the text FMA uses
    got = read_labels(out)
    assert got["2"] == ("train", ["guitar"]) and got["10"] == ("validation", [])
    assert got["15"] == ("train", ["guitar", "no vocals", "rock"]) and got["20"] == ("test", ["no vocals"])


def test_mtat_clean(mtat_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    assert build_cli("mtat", mtat_root, out, "--top-n", "3", "--clean") == 0
    m = read_manifest(out)
    assert m.totals == {"input": 8, "written": 5, "rejected": 3}
    assert {s: i.num_samples for s, i in m.splits.items()} == {"train": 3, "test": 2}
    rej = read_rejects(out)
    assert rej["c/artist-c-03-z-0-29.mp3"] == rej["d/artist-d-04-w-0-29.mp3"] == "no top-3 tag (--clean)"


def test_mtat_main_genre(mtat_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    assert build_cli("mtat", mtat_root, out, "--task", "single") == 0
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
    assert m.totals == {"input": 8, "written": 5, "rejected": 3}
    assert read_rejects(out) == {
        "d/artist-d-04-w-0-29.mp3": "no main-genre tag",
        EMPTY_CLIP: "empty file (0 bytes)",
        "e/artist-h-08-s-0-29.mp3": "no main-genre tag",
    }
    assert {k: v[1] for k, v in read_labels(out).items()} == {
        "2": "classical",
        "6": "metal",
        "10": "electronic",
        "12": "rock",
        "15": "rock",
    }
    assert main_genre(["heavy metal", "metal", "rock"]) == "metal" and main_genre(["clasical"]) == "classical"
    assert main_genre(["rock", "hard rock", "metal"]) == "rock" and main_genre(["quiet"]) is None


@pytest.mark.parametrize("layout", ["split_won", "split_lee"])
def test_mtat_published_split(mtat_root: Path, tmp_path: Path, layout: str) -> None:
    out = tmp_path / "o"
    assert build_cli("mtat", mtat_root, out, "--split-files", layout) == 0
    m = read_manifest(out)
    assert m.task.classes == map_tags(TOP50, list(MTAT_COLUMNS), Path("-"))  # published order, CSV spelling
    assert m.task.classes[21] == "no vocals" and len(m.task.classes) == 50
    assert m.totals == {"input": 8, "written": 5, "rejected": 3}
    assert {s: i.num_samples for s, i in m.splits.items()} == {"train": 2, "validation": 1, "test": 2}
    assert read_rejects(out) == {
        "d/artist-d-04-w-0-29.mp3": "not in the published split (--split-files)",
        EMPTY_CLIP: "empty file (0 bytes)",
        "e/artist-h-08-s-0-29.mp3": "not in the published split (--split-files)",
    }
    assert read_labels(out) == {
        "2": ("train", ["guitar", "classical"]),
        "15": ("train", ["guitar", "rock", "no vocals"]),
        "10": ("validation", ["techno"]),
        "6": ("test", ["rock", "metal"]),  # folder 3/ would say train: the list decides
        "12": ("test", ["rock", "pop"]),
    }


def test_mtat_split_files_errors(mtat_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in PUBLISHED:
        (bad / f"{name}.npy").write_bytes((mtat_root / "split_won" / f"{name}.npy").read_bytes())
    (bad / "top50_tags.txt").write_text("guitar\nfooBar\nnoVocals\nsymphonic\n")
    assert build_cli("mtat", mtat_root, tmp_path / "o", "--split-files", str(bad)) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err
        == f"error: {bad}/top50_tags.txt: tag(s) matching no annotations_final.csv column: 'fooBar', 'symphonic'"
    )
    (bad / "top50_tags.txt").write_text("guitar\nnoVocals\n")
    # clip ids taken for rows: clip 6 is row 1 (3/...), row 6 holds b/...; row 99 does not exist
    np.save(
        bad / "valid.npy",
        np.array(["6\t3/artist-b-02-y-30-59.mp3", "99\tx/y.mp3", "2\tc/artist-c-03-z-0-29.mp3"]),
    )
    assert build_cli("mtat", mtat_root, tmp_path / "o", "--split-files", str(bad)) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"error: {bad}/valid.npy: 2 entries matching no annotations_final.csv row: "
        "row 6 '3/artist-b-02-y-30-59.mp3' (the row holds 'b/artist-g-07-t-0-29.mp3'), row 99 'x/y.mp3' (no such row)"
    )
    np.save(bad / "valid.npy", np.array(["0\t0/artist-a-01-x-0-29.mp3"]))  # also in train.npy
    assert build_cli("mtat", mtat_root, tmp_path / "o", "--split-files", str(bad)) == 2
    assert "row 0 ('0/artist-a-01-x-0-29.mp3') is also in the train list" in capsys.readouterr().err


def test_reasons_for_files_that_exist(tmp_path: Path) -> None:
    """The decoder's reasons for every source (folder, ccmusic bytes too), never libsndfile's
    'File does not exist' for a file that does."""
    spec = AudioSpec(22050, "pcm16", 1.0)
    m4a = tmp_path / "song.m4a"
    m4a.write_bytes(b"\x00\x00\x00\x20ftypM4A " + bytes(500))
    assert (
        transcode(m4a, spec) == "unsupported format: MP4/M4A (512 bytes); convert it to FLAC, WAV, OGG or MP3"
    )
    assert transcode(NO_AUDIO, spec) == "no audio frames (1752 bytes)"
    assert transcode(b"", spec) == "empty file (0 bytes)"
    assert transcode(tmp_path / "absent.mp3", spec) == "missing file"
    assert transcode(mp3_bytes(2.4), AudioSpec(22050, "pcm16", 5.0)) == "too short: 2.4 s < min_seconds 5"
