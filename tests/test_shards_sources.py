"""The ccmusic importer on tiny datasets in the Hugging Face parquet format (fma and mtat:
tests/test_shards_fma_mtat.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers.datasets import SR
from helpers.datasets import build_cli as _build
from helpers.datasets import mp3_bytes as _mp3
from helpers.datasets import read_labels as _labels
from helpers.datasets import read_rejects as _rejects

from shards.format.manifest import read_manifest

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
