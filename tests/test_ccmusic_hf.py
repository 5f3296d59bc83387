"""ccmusic as it ships: tiny datasets written by the ``datasets`` library itself, in every layout.

Layouts: ``DatasetDict.save_to_disk`` (what ``snapshot_download`` gives: Arrow stream files),
the hub's auto-converted parquet (``eval/SPLIT/0000.parquet``), push_to_hub names
(``data/SPLIT-00000-of-00001.parquet``); configs ``eval`` (three Image columns) and ``default``
(an Audio column). Each has a truncated JPEG / undecodable audio and a -1 label.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
from PIL import Image

from shards.cli import main
from shards.format.manifest import read_manifest

datasets.disable_progress_bars()  # keeps stderr to our CLI's own lines
FST = ["Classic", "Non_classic"]
SEC = ["Symphony", "Opera", "Pop", "Rock"]  # Symphony/Opera repeat one level down, as in the real card
THR = ["Symphony", "Opera", "Teen_pop", "Soft_rock", "Dance_pop"]
LEVELS = ["fst_level_label", "sec_level_label", "thr_level_label"]
# (fst, sec, thr, broken media): train has one truncated/undecodable sample and one -1 label
ROWS = {
    "train": [
        (0, 0, 0, 0),
        (0, 1, 1, 0),
        (1, 2, 2, 0),
        (1, 3, 3, 1),
        (1, 2, 4, 0),
        (1, 3, 3, 0),
        (1, -1, 3, 0),
    ],
    "validation": [(0, 0, 0, 0), (1, 2, 4, 0), (1, 3, 3, 0)],
    "test": [(0, 1, 1, 0), (1, 2, 2, 0), (1, 3, 3, 0)],
}
WRITTEN = {"train": 5, "validation": 3, "test": 3}


def _jpg(seed: int, broken: bool = False) -> bytes:
    a = (np.random.default_rng(seed).random((24, 40)) * 255).astype("uint8")
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="JPEG")
    data = buf.getvalue()
    return data[: len(data) // 2] if broken else data


def _wav(seed: int, broken: bool = False) -> bytes:
    if broken:
        return b"RIFF\x00\x00\x00\x00WAVEjunk"
    buf = io.BytesIO()
    sf.write(buf, np.random.default_rng(seed).normal(0, 0.1, 22050 * 2), 22050, format="WAV")
    return buf.getvalue()


def _split(config: str, rows: list[tuple[int, int, int, int]], seed: int) -> datasets.Dataset:
    labels = {c: datasets.ClassLabel(names=n) for c, n in zip(LEVELS, (FST, SEC, THR))}
    cols = {c: [r[k] for r in rows] for k, c in enumerate(LEVELS)}
    if config == "eval":
        feats = datasets.Features(
            {"mel": datasets.Image(), "cqt": datasets.Image(), "chroma": datasets.Image(), **labels}
        )
        for c in ("mel", "cqt", "chroma"):  # the cqt of the broken row is a truncated JPEG
            cols[c] = [
                {"bytes": _jpg(seed + i, r[3] == 1 and c == "cqt"), "path": f"{seed + i}.jpg"}
                for i, r in enumerate(rows)
            ]
    else:
        feats = datasets.Features({"audio": datasets.Audio(sampling_rate=22050, decode=False), **labels})
        cols["audio"] = [
            {"bytes": _wav(seed + i, r[3] == 1), "path": f"{seed + i}.wav"} for i, r in enumerate(rows)
        ]
    return _dataset(cols, feats)


def _dataset(cols: dict[str, list], feats: datasets.Features) -> datasets.Dataset:
    """A Dataset of ``cols`` typed by ``feats``. Built from an Arrow table: ``from_dict`` would encode
    Audio cells with torchcodec (not installed); the stored struct and schema metadata are the same."""
    table = pa.Table.from_pydict(cols, schema=feats.arrow_schema)
    return datasets.Dataset(table, info=datasets.DatasetInfo(features=feats))


def write_ccmusic(root: Path, config: str, layout: str) -> None:
    """The dataset as ``layout`` stores it: save_to_disk | parquet (auto-converted) | push_to_hub."""
    dd = datasets.DatasetDict({s: _split(config, rows, 100 * i) for i, (s, rows) in enumerate(ROWS.items())})
    if layout == "save_to_disk":
        dd.save_to_disk(str(root / config), num_shards={"train": 2, "validation": 1, "test": 1})
    for split, ds in dd.items():
        if layout == "parquet":
            ds.to_parquet(str(root / config / split / "0000.parquet"))
        elif layout == "push_to_hub":
            ds.to_parquet(str(root / config / "data" / f"{split}-00000-of-00001.parquet"))


def _build(root: Path, out: Path, *extra: str) -> int:
    return main(
        ["build", "ccmusic", "--root", str(root), "--out", str(out), "--quiet", "--workers", "1", *extra]
    )


def _rejects(out: Path) -> dict[str, str]:
    return {r["path"]: r["reason"] for r in map(json.loads, (out / "rejects.jsonl").read_text().splitlines())}


# where train rows 3 (broken media) and 6 (label -1) are, by layout (save_to_disk: 2 files of 4 + 3 rows)
WHERE = {
    "save_to_disk": ("train/data-00000-of-00002.arrow#3", "train/data-00001-of-00002.arrow#2"),
    "parquet": ("train/0000.parquet#3", "train/0000.parquet#6"),
    "push_to_hub": ("data/train-00000-of-00001.parquet#3", "data/train-00000-of-00001.parquet#6"),
}


def _members(out: Path, split: str) -> list[set[str]]:
    tars, _ = read_manifest(out).paths(split)
    keys: dict[str, set[str]] = {}
    for t in tars:
        with tarfile.open(t) as tf:
            for name in tf.getnames():
                key, ext = name.split(".", 1)
                keys.setdefault(key, set()).add(ext)
    return list(keys.values())


@pytest.mark.parametrize("layout", ["save_to_disk", "parquet", "push_to_hub"])
@pytest.mark.parametrize("config", ["eval", "default"])
def test_every_layout_and_config(tmp_path: Path, config: str, layout: str) -> None:
    root, out = tmp_path / "music_genre", tmp_path / "out"
    write_ccmusic(root, config, layout)
    assert _build(root, out) == 0
    m = read_manifest(out)
    assert {s: i.num_samples for s, i in m.splits.items()} == WRITTEN
    assert m.totals == {"input": 13, "written": 11, "rejected": 2}
    l1, l2, l3 = m.task.levels
    assert (l1.classes, l2.classes, l3.classes) == (FST, SEC, THR)
    assert l2.parent == [0, 0, 1, 1] and l3.parent == [0, 1, 2, 3, 2]
    broken = (
        "image decode failed: cqt: image file is truncated"
        if config == "eval"
        else "no audio frames (16 bytes)"
    )
    rejects = _rejects(out)
    media, label = (f"{config}/{w}" for w in WHERE[layout])
    assert (
        sorted(rejects) == sorted([media, label]) and rejects[label] == "label missing: sec_level_label is -1"
    )
    assert rejects[media].startswith(broken), rejects[media]
    if config == "eval":
        assert m.kind == "image" and list(m.images) == ["mel", "cqt", "chroma"]
        assert m.images["mel"].exts == ["mel.jpg"] and m.images["cqt"].max_size == [24, 40]
        assert m.codec == "none" and m.sample_rate == 0
        assert all(e == {"mel.jpg", "cqt.jpg", "chroma.jpg", "ids", "json"} for e in _members(out, "train"))
    else:
        assert m.kind == "audio" and m.codec == "pcm16" and m.splits["test"].max_seconds == 2.0
        assert "kind" not in json.loads((out / "manifest.json").read_text())  # absent = audio


def test_second_run_resumes_and_single_task(tmp_path: Path) -> None:
    root, out = tmp_path / "music_genre", tmp_path / "out"
    write_ccmusic(root, "eval", "save_to_disk")
    assert _build(root, out) == 0
    tars = sorted(out.rglob("*.tar"))
    stamps = [t.stat().st_mtime_ns for t in tars]
    tars[-1].unlink()  # a lost shard: rebuilt, the others kept untouched
    assert _build(root, out) == 0
    assert [t.stat().st_mtime_ns for t in tars[:-1]] == stamps[:-1] and tars[-1].is_file()
    assert read_manifest(out).totals["written"] == 11
    assert _build(root, tmp_path / "single", "--task", "single") == 0
    assert read_manifest(tmp_path / "single").task.classes == SEC


def test_older_revisions(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """String labels numbered with gaps (1_Classic, 10_Soul_or_r_and_b), renamed classes and a
    None third level for classical pieces import; ids without names fail in one line."""
    rows = [("1_Classic", "3_Symphony", None), ("1_Classic", "4_Opera", "None"), ("2_Non_classic", "10_Soul_or_r_and_b", "10_Soul_or_r_and_b"),
            ("2_Non_classic", "7_Pop", "14_Teen_pop"), ("2_Non_classic", "7_Pop", "12_Pop_vocal_ballad")]  # fmt: skip
    feats = datasets.Features(
        {"audio": datasets.Audio(decode=False), **{c: datasets.Value("string") for c in LEVELS}}
    )
    cols = {c: [r[k] for r in rows] for k, c in enumerate(LEVELS)}
    cols["audio"] = [{"bytes": _wav(i), "path": f"{i}.wav"} for i in range(len(rows))]
    root = tmp_path / "old"
    _dataset(cols, feats).to_parquet(str(root / "data" / "train-00000-of-00001.parquet"))
    assert _build(root, tmp_path / "o") == 0
    l1, l2, l3 = read_manifest(tmp_path / "o").task.levels
    assert l1.classes == ["1_Classic", "2_Non_classic"]
    assert l2.classes == ["3_Symphony", "4_Opera", "7_Pop", "10_Soul_or_r_and_b"]
    assert l3.classes == ["3_Symphony", "4_Opera", "10_Soul_or_r_and_b", "12_Pop_vocal_ballad", "14_Teen_pop"]
    assert l3.parent == [0, 1, 3, 2, 2]

    feats = datasets.Features(
        {"audio": datasets.Audio(decode=False), **{c: datasets.Value("int64") for c in LEVELS}}
    )
    cols = {c: [1, 3, 12] for c in LEVELS} | {"audio": [{"bytes": _wav(0), "path": "0.wav"}] * 3}
    bad = tmp_path / "ids"
    _dataset(cols, feats).to_parquet(str(bad / "data" / "train-00000-of-00001.parquet"))
    assert _build(bad, tmp_path / "o2") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fst_level_label is Value(int64) without ClassLabel names" in err[0]


def test_ids_beyond_the_names_and_several_configs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "mixed"
    write_ccmusic(root, "eval", "push_to_hub")
    write_ccmusic(root, "default", "parquet")
    assert _build(root, tmp_path / "o") == 2
    assert (
        "several dataset configs ['default', 'eval']; choose one with --hf-config" in capsys.readouterr().err
    )
    assert _build(root, tmp_path / "o", "--hf-config", "default") == 0
    assert read_manifest(tmp_path / "o").kind == "audio"

    ds = _split("default", [(0, 0, 0, 0)], 0)  # then an id no ClassLabel of this revision has
    table = ds.data.table.set_column(3, "thr_level_label", pa.array([7], pa.int64()))
    bad = tmp_path / "bad" / "data"
    bad.mkdir(parents=True)
    meta = {b"huggingface": json.dumps({"info": {"features": ds.features.to_dict()}}).encode()}
    pq.write_table(table.replace_schema_metadata(meta), bad / "train-00000-of-00001.parquet")
    assert _build(bad.parent, tmp_path / "o3") == 2
    err = capsys.readouterr().err
    assert "train-00000-of-00001.parquet#0: thr_level_label id 7 outside its 5 ClassLabel names" in err

    junk = tmp_path / "junk" / "train"
    junk.mkdir(parents=True)
    (junk / "data-00000-of-00001.arrow").write_bytes(b"not arrow at all")
    assert _build(junk.parent, tmp_path / "o4") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "data-00000-of-00001.arrow: unreadable arrow file" in err


def test_folder_of_precomputed_spectrogram_pngs(tmp_path: Path) -> None:
    """The seeds' PNG route: a CSV whose ``path`` names mel images and a ``cqt`` column; a missing
    and a truncated image are rejects with reasons, sizes land in the manifest."""
    root = tmp_path / "pngs"
    (root / "img").mkdir(parents=True)
    rows = []
    for i in range(6):
        for ch, h in (("mel", 20), ("cqt", 30)):
            a = (np.random.default_rng(i).random((h, 50 + i)) * 255).astype("uint8")
            buf = io.BytesIO()
            Image.fromarray(a).save(buf, format="PNG")
            data = buf.getvalue()
            (root / "img" / f"{i}_{ch}.png").write_bytes(data[:60] if (i, ch) == (4, "cqt") else data)
        rows.append(f"img/{i}_mel.png,img/{i}_cqt.png,{'ab'[i % 2]},{['train', 'test'][i // 3]}")
    (root / "img" / "5_cqt.png").unlink()
    (root / "labels.csv").write_text("path,cqt,label,split\n" + "\n".join(rows) + "\n")
    out = tmp_path / "out"
    assert main(["build", "folder", "--root", str(root), "--out", str(out), "--quiet", "--workers", "1"]) == 0
    m = read_manifest(out)
    assert m.kind == "image" and list(m.images) == ["mel", "cqt"]
    assert m.images["mel"].exts == ["mel.png"] and m.images["mel"].min_size == [20, 50]
    assert m.images["cqt"].max_size == [30, 53] and m.task.classes == ["a", "b"]
    assert {s: i.num_samples for s, i in m.splits.items()} == {"train": 3, "test": 1}
    rejects = _rejects(out)
    assert rejects["img/5_mel.png"] == "missing file: cqt"
    assert rejects["img/4_mel.png"].startswith("image decode failed: cqt: ")
    assert all(e == {"mel.png", "cqt.png", "ids", "json"} for e in _members(out, "train"))


def test_a_saved_dataset_without_splits_is_split_by_hash(tmp_path: Path) -> None:
    """``Dataset.save_to_disk`` (no DatasetDict): Arrow files that name no split -> seeded 80/10/10."""
    rows = [(0, 0, 0, 0), (0, 1, 1, 0), (1, 2, 2, 0), (1, 3, 3, 0), (1, 2, 4, 0)] * 4
    root = tmp_path / "flat"
    _split("eval", rows, 0).save_to_disk(str(root), num_shards=2)
    assert sorted(p.name for p in root.glob("*.arrow")) == [
        "data-00000-of-00002.arrow",
        "data-00001-of-00002.arrow",
    ]
    assert _build(root, tmp_path / "o", "--task", "single") == 0
    m = read_manifest(tmp_path / "o")
    assert m.totals == {"input": 20, "written": 20, "rejected": 0} and set(m.splits) <= {
        "train",
        "validation",
        "test",
    }
    assert m.splits["train"].num_samples >= 10
