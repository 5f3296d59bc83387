"""``python -m eval.predict``: audio files in, the same track predictions as ``python -m eval``."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from eval.predict import Predictor, expand_inputs, main
from eval.prediction_report import describe, load_thresholds
from pipelines.bench.small import small_overrides
from shards.base.tasks import Level, TaskSpec
from shards.format.manifest import read_manifest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Synthetic MP3/FLAC/OGG/WAV files (mono and stereo, 16-44.1 kHz) -> 8 kHz shards -> one epoch
    of the tiny custom CNN (single-label genre)."""
    from shards.cli import main as shards_main
    from train.__main__ import main as train_main

    base = tmp_path_factory.mktemp("predict")
    raw, shards, run = base / "raw", base / "shards", base / "run"
    assert shards_main(["synth", "--out", str(raw), "--tracks", "24", "--seconds", "2.5"]) == 0
    build = ["build", "folder", "--root", str(raw), "--out", str(shards), "--quiet", "--workers", "1"]
    assert shards_main([*build, "--sample-rate", "8000"]) == 0
    over = [f"--data.shards={shards}", f"--train.out={run}", "--train.epochs=1", "--train.device=cpu"]
    over += small_overrides(batch_size=8, chunks_per_track=2, eval_tracks_per_batch=3)
    assert train_main(["--config", str(ROOT / "configs" / "demo_customcnn.toml"), *over]) == 0
    return {"raw": raw, "shards": shards, "ckpt": sorted((run / "checkpoints").glob("step_*.pt"))[-1]}


def _eval_track_probs(ckpt: Path, shards: Path, raw: Path) -> dict[str, np.ndarray]:
    """``python -m eval``'s track-level probabilities on the test split, by source file."""
    from eval.cli import parse_args, run

    cfg = parse_args(
        [
            "--checkpoint",
            str(ckpt),
            "--shards",
            str(shards),
            "--eval.device=cpu",
            "--out",
            str(shards.parent / "ev"),
        ]
    )
    res = next(iter(run(cfg).values()))
    by_tid = {}
    for tar in read_manifest(shards).paths("test")[0]:
        import tarfile

        with tarfile.open(tar) as tf:
            for m in tf.getmembers():
                if m.name.endswith(".json"):
                    meta = json.loads(tf.extractfile(m).read())  # type: ignore[union-attr]
                    by_tid[meta["tid"]] = str(raw / meta["path"])
    return {by_tid[int(t)]: p for t, p in zip(res.track.track, res.track.probs)}


@pytest.mark.slow
def test_predictions_equal_eval_track_results_and_bad_files_are_listed(
    trained: dict[str, Path], tmp_path: Path
) -> None:
    want = _eval_track_probs(trained["ckpt"], trained["shards"], trained["raw"])
    files = sorted(want)
    kinds = {(Path(f).suffix, sf.info(f).channels) for f in files} | {
        (Path(f).suffix, sf.info(f).channels) for f in sorted(trained["raw"].glob("audio/*"))
    }
    assert {s for s, _ in kinds} == {".mp3", ".flac", ".ogg", ".wav"} and {c for _, c in kinds} == {1, 2}
    broken = tmp_path / "broken.mp3"
    broken.write_bytes(b"this is not an MP3 file" * 50)
    inputs = [files[0], broken, *files[1:], tmp_path / "missing.wav"]
    preds = Predictor.from_checkpoint(trained["ckpt"], device="cpu", workers=1, progress=False)(inputs)
    assert [t["path"] for t in preds.tracks] == files  # input order, the bad ones left out of tracks ...
    reasons = {r["path"]: r["reason"] for r in preds.rejected}  # ... and listed with their reason
    assert set(reasons) == {str(broken), str(tmp_path / "missing.wav")}
    assert (
        reasons[str(broken)]
        == f"no audio frames ({broken.stat().st_size} bytes)"  # shards/importers/reasons.py
        and reasons[str(tmp_path / "missing.wav")] == "missing file"
    )
    got = np.stack([preds.probs[i] for i in range(len(files))])
    assert np.ptp(got, axis=0).max() > 1e-4  # tracks differ by 10x the tolerance and more: not vacuous
    np.testing.assert_allclose(got, np.stack([want[f] for f in files]), atol=1e-5, rtol=0)
    classes = read_manifest(trained["shards"]).task.classes
    for t, p in zip(preds.tracks, got):
        assert t["prediction"] == classes[int(p.argmax())] and t["top_k"][0]["prob"] == pytest.approx(p.max())


@pytest.mark.slow
def test_cli_writes_csv_and_json_for_a_folder(
    trained: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = tmp_path / "songs"
    folder.mkdir()
    audio = sorted(trained["raw"].glob("audio/*"))[:3]
    for f in audio:
        (folder / f.name).write_bytes(f.read_bytes())
    (folder / "notes.txt").write_text("not audio")
    out = tmp_path / "out"
    rc = main(
        [
            str(folder),
            "--checkpoint",
            str(trained["ckpt"]),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--workers",
            "1",
            "--quiet",
            "--top-k",
            "2",
        ]
    )
    assert rc == 0
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert [r["status"] for r in rows] == ["ok"] * 3 + ["error"]
    assert (
        rows[-1]["path"].endswith("notes.txt") and rows[-1]["reason"] == "skipped: not an audio file (.txt)"
    )
    assert all(len(r["top_k"].split("; ")) == 2 for r in rows[:3])
    data = json.loads((out / "predictions.json").read_text())
    assert len(data["tracks"]) == 3 and data["rejected"][0]["path"].endswith("notes.txt")
    assert abs(sum(data["tracks"][0]["probs"]) - 1.0) < 1e-5  # single-label: one softmax
    assert "3 tracks predicted, 1 not" in capsys.readouterr().out


def test_expand_inputs_reads_csv_paths_relative_to_the_csv(tmp_path: Path) -> None:
    (tmp_path / "a.wav").write_bytes(b"")
    (tmp_path / "list.csv").write_text("path\na.wav\n/abs/b.flac\n")
    files, skipped = expand_inputs([tmp_path / "list.csv"])
    assert files == [tmp_path / "a.wav", Path("/abs/b.flac")] and skipped == []


def test_tags_use_the_thresholds_python_m_eval_searched(tmp_path: Path) -> None:
    task = TaskSpec(kind="multi", name="tags", classes=["bass", "drums", "noise"])
    metrics = tmp_path / "metrics.json"
    thr = {
        "split": "validation",
        "classes": task.classes,
        "global_threshold": 0.4,
        "per_class": [0.2, 0.6, 0.5],
    }
    metrics.write_text(
        json.dumps({"task": task.vocab(), "models": {"cnn:best.pt": {"metrics": {}, "thresholds": thr}}})
    )
    probs = np.array([[0.3, 0.55, 0.5]])
    per_class = describe(task, probs, thresholds=load_thresholds(metrics, task, "cnn:best.pt"))[0]
    assert per_class["prediction"] == "noise;bass"  # 0.5 >= 0.5, 0.3 >= 0.2; drums 0.55 < 0.6
    glob = describe(task, probs, thresholds=load_thresholds(metrics, task, "x", kind="global"))[0]
    assert glob["prediction"] == "drums;noise"  # the file's only model; 0.3 < 0.4
    assert describe(task, probs)[0]["prediction"] == "drums;noise"  # default 0.5
    other = TaskSpec(kind="multi", name="tags", classes=["a", "b", "c"])
    with pytest.raises(ValueError, match="another label vocabulary"):
        load_thresholds(metrics, other, "cnn:best.pt")


def test_hierarchical_prediction_is_a_consistent_path() -> None:
    task = TaskSpec(
        kind="hier",
        name="h",
        levels=[
            Level(name="l1", classes=["a", "b"]),
            Level(name="l2", classes=["a1", "b1", "b2"], parent=[0, 1, 1]),
        ],
    )
    # level-wise argmaxes disagree (l1 says a, l2 says b1); the best path is b/b1 (0.45*0.5 > 0.55*0.3)
    probs = np.array([[0.55, 0.45, 0.3, 0.5, 0.2]])
    d = describe(task, probs, top_k=1)[0]
    assert d["prediction"] == "b/b1" and [s["prob"] for s in d["path"]] == [0.45, 0.5]
    assert d["top_k"]["l1"] == [{"label": "a", "prob": 0.55}]
