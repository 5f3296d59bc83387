"""Synthetic dataset + folder importer: labels stay aligned with audio through the whole build."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from shards.bench.synth import GENRE_BANDS, GENRES, TAGS, class_of_signal, make_synth, synth_track
from shards.format.manifest import SEGMENT_FIELDS, read_manifest
from shards.format.writer import read_index


def _members(tar: Path) -> dict[str, dict[str, bytes]]:
    out: dict[str, dict[str, bytes]] = {}
    with tarfile.open(tar) as tf:
        for m in tf.getmembers():
            key, ext = m.name.split(".", 1)
            out.setdefault(key, {})[ext] = tf.extractfile(m).read()  # type: ignore[union-attr]
    return out


def test_class_of_signal_recovers_every_genre_at_every_rate() -> None:
    rng = np.random.default_rng(1)
    for sr in (16000, 22050, 44100):
        for g in range(len(GENRES)):
            for variant in (0, 1):
                y = synth_track(g, variant, TAGS, 2.0, sr, rng)  # every tag on: the hardest case
                assert class_of_signal(y, sr) == g
                assert class_of_signal((y * 32767).astype(np.int16), sr) == g


def test_class_of_signal_rejects_empty() -> None:
    with pytest.raises(ValueError, match="1-D signal"):
        class_of_signal(np.zeros(3), 22050)
    assert len(GENRE_BANDS) == len(GENRES) == 4


def test_make_synth_layout(tmp_path: Path) -> None:
    csv = make_synth(tmp_path, tracks=8, seconds=1.0, seed=3)
    df = pd.read_csv(csv, keep_default_na=False)
    assert list(df.columns) == ["path", "label", "tags", "level1", "level2", "level3", "split"]
    assert df["split"].value_counts().to_dict() == {"train": 4, "validation": 2, "test": 2}
    assert sorted({p.rsplit(".", 1)[1] for p in df["path"]}) == ["flac", "mp3", "ogg", "wav"]
    rates, chans = set(), set()
    for row in df.itertuples():
        info = sf.info(tmp_path / row.path)
        rates.add(info.samplerate)
        chans.add(info.channels)
        x, sr = sf.read(tmp_path / row.path)
        assert GENRES[class_of_signal(x, sr)] == row.label, row.path
        assert row.level3.startswith(row.level2) and row.level2 == row.label
    assert rates == {16000, 22050, 44100} and chans == {1, 2}
    with pytest.raises(ValueError, match="tracks"):
        make_synth(tmp_path / "x", tracks=5)


def test_synth_shards_single_aligned(synth_shards) -> None:
    root = synth_shards()
    m = read_manifest(root)
    assert m.task.kind == "single" and m.task.classes == GENRES
    assert {s: i.num_samples for s, i in m.splits.items()} == {"train": 16, "validation": 4, "test": 4}
    assert m.totals == {"input": 24, "written": 24, "rejected": 0}
    assert len(m.splits["train"].shards) == 4
    csv = pd.read_csv(root.parent / "raw" / "labels.csv", keep_default_na=False)
    by_key = {p.rsplit(".", 1)[0].replace("/", "_"): lab for p, lab in zip(csv["path"], csv["label"])}
    for split in m.splits:
        tids = []
        tars, idxs = m.paths(split)
        for tar, idx in zip(tars, idxs):
            samples = _members(tar)
            assert len(read_index(idx)) == len(samples)
            for key, comp in samples.items():
                pcm = np.frombuffer(comp["pcm"], dtype="<i2")
                assert pcm.size == 8 * 22050
                ids = np.frombuffer(comp["ids"], dtype="<i8")  # [tid, label, *SEGMENT_FIELDS]
                assert sorted(comp) == ["ids", "json", "pcm"] and ids.size == 7
                label = ids[1]
                assert class_of_signal(pcm, 22050) == label
                assert GENRES[label] == by_key[key]
                meta = json.loads(comp["json"])
                assert meta["labels"] == by_key[key] and meta["seconds"] == 8.0
                tids.append(int(ids[0]))
                assert ids[2:].tolist() == [meta["segment"][f] for f in SEGMENT_FIELDS]
        assert sorted(tids) == list(range(m.splits[split].num_samples))


def test_synth_shards_multi_and_hier_vocab(synth_shards) -> None:
    multi = read_manifest(synth_shards(task="multi", tracks=8, seconds=2.0))
    assert multi.task.kind == "multi" and multi.task.classes == TAGS and multi.task.label_width == 6
    hier = read_manifest(synth_shards(task="hier", tracks=8, seconds=2.0))
    l1, l2, l3 = hier.task.levels
    assert (l1.classes, l2.classes) == (["calm", "loud"], GENRES)
    assert l2.parent == [0, 0, 1, 1]
    assert l3.classes[:2] == ["ambient_plain", "ambient_rich"] and l3.parent == [0, 0, 1, 1, 2, 2, 3, 3]
    assert hier.task.head_sizes == [2, 4, 8]


def test_synth_shards_flac_codec_decodes(synth_shards) -> None:
    root = synth_shards(codec="flac", tracks=6, seconds=2.0)
    m = read_manifest(root)
    assert m.audio_ext == "flac"
    (tar,), _ = m.paths("validation")
    for comp in _members(tar).values():
        y, sr = sf.read(io.BytesIO(comp["flac"]), dtype="int16")
        assert sr == 22050 and y.shape == (2 * 22050,)
        assert class_of_signal(y, sr) == int(np.frombuffer(comp["ids"], dtype="<i8")[1])  # [tid, label, ...]


def test_synth_and_bench_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from shards.cli import main

    assert (
        main(["synth", "--out", str(tmp_path / "s"), "--tracks", "6", "--seconds", "1", "--formats", "wav"])
        == 0
    )
    assert sorted(p.suffix for p in (tmp_path / "s" / "audio").iterdir()) == [".wav"] * 6
    capsys.readouterr()
    assert (
        main(["bench", "--tracks", "6", "--seconds", "2", "--workers", "1", "--dir", str(tmp_path / "b")])
        == 0
    )
    res = json.loads(capsys.readouterr().out)
    (only,) = res["builds"]
    assert only["workers"] == 1 and only["audio_s"] == 12.0 and only["x_realtime_per_core"] > 0
    assert set(res["stage_x_realtime_one_file"]) == {"decode", "resample", "encode"}
