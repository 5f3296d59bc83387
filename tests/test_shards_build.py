"""The builder through the CLI on a tiny folder dataset: resume, force, errors, DALI and webdataset readers."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers.datasets import add_rows, synth_row
from helpers.tars import read_members

from shards.bench.synth import GENRES, class_of_signal, make_synth
from shards.cli import main
from shards.format.manifest import read_manifest


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 synthetic tracks plus a broken mp3 and a too-short wav, with a weird file name."""
    root = tmp_path_factory.mktemp("raw")
    csv = make_synth(root, tracks=6, seconds=1.5, seed=2)
    df = pd.read_csv(csv, keep_default_na=False)
    (root / "audio" / "broken.mp3").write_bytes(b"")
    import soundfile as sf

    sf.write(root / "audio" / "short file.v2.wav", np.zeros(800, dtype=np.float32), 16000)
    rows = [
        synth_row("audio/broken.mp3", "blues", "train", tags="bass"),
        synth_row("audio/short file.v2.wav", "disco", "test"),
    ]
    add_rows(csv, df, rows)
    return root


def _run(*args: str) -> int:
    return main(["build", "folder", *args, "--quiet", "--workers", "1"])


def test_build_counts_rejects_and_resume(raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    assert _run("--root", str(raw), "--out", str(out), "--shard-size", "0.05") == 0
    m = read_manifest(out)
    assert m.totals == {"input": 8, "written": 6, "rejected": 2}
    assert {s: i.num_samples for s, i in m.splits.items()} == {"train": 2, "validation": 2, "test": 2}
    assert [len(i.shards) for i in m.splits.values()] == [2, 2, 2]  # 66 KB per track > 0.05 MiB shard
    rejects = [json.loads(x) for x in (out / "rejects.jsonl").read_text().splitlines()]
    by_path = {r["path"]: r["reason"] for r in rejects}
    assert by_path["audio/broken.mp3"] == "empty file (0 bytes)"
    assert by_path["audio/short file.v2.wav"] == "too short: 0.05 s < min_seconds 1"
    files = sorted(out.rglob("*.tar")) + sorted(out.rglob("*.idx")) + [out / "manifest.json"]
    before = {f: f.stat().st_mtime_ns for f in files}
    assert _run("--root", str(raw), "--out", str(out), "--shard-size", "0.05") == 0
    assert {f: f.stat().st_mtime_ns for f in files} == before  # up to date: nothing rewritten
    # a lost shard is rebuilt, the others are kept
    lost = out / "train" / "000001.tar"
    lost.unlink()
    assert _run("--root", str(raw), "--out", str(out), "--shard-size", "0.05") == 0
    assert lost.is_file()
    after = {f: f.stat().st_mtime_ns for f in files}
    changed = sorted(f.relative_to(out).as_posix() for f in files if after[f] != before[f])
    assert changed == ["manifest.json", "train/000001.idx", "train/000001.tar"]
    assert read_manifest(out).splits == m.splits  # same bytes, same checksums
    assert read_manifest(out).totals == m.totals
    assert sorted((out / "rejects.jsonl").read_text().splitlines()) == sorted(map(json.dumps, rejects))
    # --force rewrites everything; --strict exits 1 on rejects
    assert _run("--root", str(raw), "--out", str(out), "--shard-size", "0.05", "--force", "--strict") == 1
    assert all(f.stat().st_mtime_ns != before[f] for f in files if f.suffix == ".tar")
    assert "2 input(s) rejected" in capsys.readouterr().err


def test_dali_reader_accepts_index(raw: Path, tmp_path: Path) -> None:
    from nvidia.dali import fn, pipeline_def, types

    out = tmp_path / "out"
    assert _run("--root", str(raw), "--out", str(out), "--shard-size", "0.05") == 0
    m = read_manifest(out)
    (train_tars, train_idxs), (test_tars, test_idxs) = m.paths("train"), m.paths("test")
    tars, idxs = train_tars + test_tars, train_idxs + test_idxs

    @pipeline_def(batch_size=2, num_threads=1, device_id=None)
    def pipe():
        pcm, ids = fn.readers.webdataset(
            paths=[str(p) for p in tars],
            index_paths=[str(p) for p in idxs],
            ext=["pcm", "ids"],
            dtypes=[types.INT16, types.INT64],
            missing_component_behavior="error",
            name="r",
        )
        return pcm, ids

    p = pipe()
    p.build()
    assert p.reader_meta("r")["epoch_size"] == 4
    seen = []
    for _ in range(2):
        pcm, ids = p.run()
        for k in range(2):
            # version 3: ids = [tid, label, sample, segment index, count, start, track samples]
            x, row = np.array(pcm.at(k)), np.array(ids.at(k))
            assert x.dtype == np.int16 and x.size == int(1.5 * 22050)
            assert row.shape == (7,) and row[3:6].tolist() == [0, 1, 0] and row[6] == x.size
            assert class_of_signal(x, 22050) == int(row[1])
            seen.append(int(row[0]))
    # a tid is the track's position in its split's plan (a rejected track leaves its number
    # unused): the two written tracks of train and of test, as their .json members say
    tids = {
        s: sorted(json.loads(p["json"])["tid"] for p in read_members(m, s).values())
        for s in ("train", "test")
    }
    assert all(len(set(t)) == 2 and max(t) < 3 for t in tids.values())
    assert sorted(seen) == sorted(tids["train"] + tids["test"])


def test_webdataset_reads_tars(raw: Path, tmp_path: Path) -> None:
    import webdataset as wds

    out = tmp_path / "out"
    assert _run("--root", str(raw), "--out", str(out), "--task", "multi") == 0
    m = read_manifest(out)
    tars, _ = m.paths("validation")
    rows = list(wds.WebDataset([str(t) for t in tars], shardshuffle=False))
    assert len(rows) == 2
    csv = pd.read_csv(raw / "labels.csv", keep_default_na=False).set_index("path")
    for r in rows:
        assert set(r) - {"__key__", "__url__", "__local_path__"} == {"pcm", "ids", "json"}
        vec = np.frombuffer(r["ids"], dtype="<i8")[1 : 1 + m.task.label_width]  # [tid, *label, *seg]
        meta = json.loads(r["json"])
        assert int(np.frombuffer(r["ids"], dtype="<i8")[0]) == meta["tid"]
        assert [m.task.classes[i] for i in np.flatnonzero(vec)] == meta["labels"]
        assert meta["labels"] == [t for t in csv.at[meta["path"], "tags"].split(";") if t]
        genre = GENRES[class_of_signal(np.frombuffer(r["pcm"], "<i2"), 22050)]
        assert genre == csv.at[meta["path"], "label"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--root", "{tmp}/nope", "--out", "{tmp}/o"], "nope: folder dataset root not found"),
        (
            ["--root", "{raw}", "--out", "{tmp}/o", "--csv", "missing.csv"],
            "missing.csv: label file not found",
        ),
        (
            ["--root", "{raw}", "--out", "{tmp}/o", "--csv", "bad.csv"],
            "bad.csv: malformed CSV: missing column(s) ['path']",
        ),
        (
            ["--root", "{raw}", "--out", "{tmp}/o", "--csv", "ragged.csv"],
            "ragged.csv: malformed CSV: Error tokenizing",
        ),
        (
            ["--root", "{raw}", "--out", "{tmp}/o", "--csv", "badsplit.csv"],
            "badsplit.csv row 2: unknown split 'dev'",
        ),
        (["--root", "{raw}", "--out", "{tmp}/o", "--sample-rate", "100"], "sample_rate: 100 outside"),
        (["--root", "{raw}"], "command line: missing out"),
        (
            ["--root", "{raw}", "--out", "{tmp}/o", "--task", "hier", "--csv", "twoparents.csv"],
            "has two parents",
        ),
    ],
)
def test_clear_errors(
    raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture, args: list[str], message: str
) -> None:
    (raw / "bad.csv").write_text("file,label\na.wav,x\n")
    (raw / "twoparents.csv").write_text("path,level1,level2\na.wav,x,y\nb.wav,z,y\n")
    (raw / "ragged.csv").write_text("path,label\na.wav,x\nb.wav,y,z,w\n")
    (raw / "badsplit.csv").write_text("path,label,split\na.wav,x,dev\n")
    argv = [a.format(tmp=tmp_path, raw=raw) for a in args]
    assert main(["build", "folder", *argv, "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1


def test_toml_config_and_cli_override(raw: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "b.toml"
    cfg.write_text(
        f'[shards]\nsource = "folder"\nroot = "{raw}"\nout = "{tmp_path}/o"\ncodec = "flac"\nsample_rate = 16000\n'
    )
    assert main(["build", "--config", str(cfg), "--sample-rate", "8000", "--quiet", "--workers", "1"]) == 0
    m = read_manifest(tmp_path / "o")
    assert (m.codec, m.sample_rate, m.build["sample_rate"]) == ("flac", 8000, 8000)
    cfg.write_text('[shards]\nsource = "folder"\ncodex = "flac"\n')
    assert main(["build", "--config", str(cfg), "--quiet"]) == 2


def test_manifest_pointing_outside_is_refused(raw: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    assert _run("--root", str(raw), "--out", str(out)) == 0
    data = json.loads((out / "manifest.json").read_text())
    data["splits"]["train"]["shards"][0]["tar"] = "../../etc/passwd"
    (out / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="points outside the build folder"):
        read_manifest(out)
    assert os.path.exists(out / "train" / "000000.tar")


def test_interrupted_build_resumes_after_last_finished_shard(
    raw: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shards.builder.driver as builder
    import shards.builder.workers as workers
    from shards.builder.config import BuildConfig

    cfg = BuildConfig(source="folder", root=raw, out=tmp_path / "o", workers=1, shard_size_mb=0.01)
    real, calls = workers.process_indexed, []

    def crash_on_fifth(job):  # one sample per shard; train: 2 ok + broken.mp3, then validation
        calls.append(job[0])
        if calls == [0, 1, 2, 0, 1]:  # only in the first run
            raise RuntimeError("killed")
        return real(job)

    monkeypatch.setattr(workers, "process_indexed", crash_on_fifth)
    with pytest.raises(RuntimeError, match="killed"):
        builder.build(cfg, progress=False)
    assert not (cfg.out / "manifest.json").exists() and not list(cfg.out.rglob("*.tmp"))
    done = sorted(cfg.out.rglob("*.tar"))
    # the plan cut one track per shard (broken.mp3, 0 bytes, joins one): validation/000000 was
    # committed before its second record was decoded
    assert [p.relative_to(cfg.out).as_posix() for p in done] == [
        "train/000000.tar",
        "train/000001.tar",
        "validation/000000.tar",
    ]
    mtimes = {p: p.stat().st_mtime_ns for p in done}
    calls.clear()
    m = builder.build(cfg, progress=False)
    assert len(calls) == 4  # validation's 1 + test's 3 records; committed shards are not decoded again
    assert {p: p.stat().st_mtime_ns for p in done} == mtimes
    fresh = builder.build(BuildConfig(**{**vars(cfg), "out": tmp_path / "fresh"}), progress=False)
    assert m.splits == fresh.splits and m.totals == fresh.totals == {"input": 8, "written": 6, "rejected": 2}


def test_hash_split_without_split_column(tmp_path: Path) -> None:
    from shards.builder.config import BuildConfig
    from shards.importers.folder import load

    rows = "".join(f"audio/x{i}.wav,a\n" for i in range(400))  # load() does not open the audio
    (tmp_path / "labels.csv").write_text("path,label\n" + rows)
    cfg = BuildConfig(source="folder", root=tmp_path, out=tmp_path / "o")
    a = [r.split for r in load(cfg).records]
    assert a == [r.split for r in load(cfg).records]  # deterministic
    counts = pd.Series(a).value_counts().to_dict()
    assert 290 <= counts["train"] <= 350 and 20 <= counts["validation"] <= 60 and 20 <= counts["test"] <= 60
    assert [r.split for r in load(BuildConfig(**{**vars(cfg), "seed": 1})).records] != a


@pytest.mark.parametrize("codec", ["flac", "ogg"])
def test_dali_decodes_compressed_codecs(raw: Path, tmp_path: Path, codec: str) -> None:
    from nvidia.dali import fn, pipeline_def, types

    out = tmp_path / "o"
    assert _run("--root", str(raw), "--out", str(out), "--codec", codec, "--sample-rate", "16000") == 0
    m = read_manifest(out)
    tars, idxs = m.paths("validation")

    @pipeline_def(batch_size=2, num_threads=1, device_id=None)
    def pipe():
        enc, ids = fn.readers.webdataset(
            paths=[str(p) for p in tars],
            index_paths=[str(p) for p in idxs],
            ext=[codec, "ids"],
            dtypes=[types.UINT8, types.INT64],
            missing_component_behavior="error",
        )
        audio, rate = fn.decoders.audio(enc, dtype=types.INT16, downmix=True)
        return audio, rate, ids[1:2]  # [tid, label, *seg]

    p = pipe()
    p.build()
    audio, rate, lbl = p.run()
    for k in range(2):
        x = np.array(audio.at(k)).reshape(-1)
        assert float(np.array(rate.at(k))) == 16000.0
        assert abs(x.size - 1.5 * 16000) < 2000  # vorbis may pad a little
        assert class_of_signal(x, 16000) == int(np.array(lbl.at(k))[0])


def test_keys_are_sanitised_and_unique() -> None:
    from shards.base.tasks import TaskSpec
    from shards.builder.plan import order_records
    from shards.importers.records import Dataset, Record

    recs = [
        Record(key=k, audio=Path(k), labels="x", split="train", path=k)
        for k in ["a.b", "a b", "a/b", "ü.mp3"]
    ]
    planned = order_records(
        Dataset(source="folder", task=TaskSpec(kind="single", classes=["x"]), records=recs), seed=0
    )
    keys = sorted(k for k, _ in planned["train"])
    assert keys == ["a_b", "a_b_2", "a_b_3", "mp3"]
    assert sorted(r.key for _, r in planned["train"]) == sorted(r.key for r in recs)  # a permutation


def test_long_keys_stay_sanitised_when_made_unique(tmp_path: Path) -> None:
    """Two paths alike in their first 80 key characters (deep folders, long titles): the
    de-duplicated key must still be one the writer accepts (it refused ``<80 chars>_2``)."""
    from shards.base.tasks import TaskSpec
    from shards.builder.plan import order_records
    from shards.format.writer import MAX_KEY, ShardWriter, sanitize_key
    from shards.importers.records import Dataset, Record

    recs = [
        Record(key=k, audio=Path(k), labels="x", split="train", path=k)
        for k in ["a" * 90 + "1", "a" * 90 + "2", "a" * 90 + "3"]
    ]
    planned = order_records(
        Dataset(source="folder", task=TaskSpec(kind="single", classes=["x"]), records=recs), seed=0
    )
    keys = [k for k, _ in planned["train"]]
    assert len(set(keys)) == 3 and all(k == sanitize_key(k) and len(k) <= MAX_KEY for k in keys)
    with ShardWriter(tmp_path, "train") as w:
        for k in keys:
            w.write(k, {"pcm": b"\0\0"})


def test_track_resampled_to_nothing_is_rejected() -> None:
    """With min_seconds=0, two samples at 48 kHz become none at 8 kHz: a reject, never an
    empty audio member (the pipeline cannot cut a chunk from zero samples)."""
    import io

    import numpy as np
    import soundfile as sf

    from shards.builder.audio import AudioSpec, transcode

    buf = io.BytesIO()
    sf.write(buf, np.ones(2, dtype=np.float32) * 0.1, 48000, format="WAV")
    assert transcode(buf.getvalue(), AudioSpec(8000, "pcm16", 0.0)) == "too short: no samples left at 8000 Hz"


def test_each_shard_has_its_ids_members_back_to_back_and_verify_checks_them(
    raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """``NNNNNN.ids`` is every sample's ``ids`` member in index order (read here from the tar with
    ``tarfile``), recorded in the manifest with its size and sha256; ``shards verify`` names a
    damaged one, and the build command rewrites it once its shard's tar is deleted."""
    import hashlib

    from helpers.tars import tar_samples

    out = tmp_path / "out"
    assert _run("--root", str(raw), "--out", str(out), "--shard-size", "0.05") == 0
    shards = [s for info in read_manifest(out).splits.values() for s in info.shards]
    for s in shards:
        data = (out / s.ids).read_bytes()
        assert s.ids == s.tar.removesuffix(".tar") + ".ids"
        assert data == b"".join(m["ids"] for m in tar_samples(out / s.tar).values())
        assert (len(data), hashlib.sha256(data).hexdigest()) == (s.ids_bytes, s.ids_sha256)
    s = shards[0]
    original = (out / s.ids).read_bytes()
    damaged = bytearray(original)
    damaged[8] ^= 1  # the first sample's first label
    (out / s.ids).write_bytes(bytes(damaged))
    capsys.readouterr()
    assert main(["verify", str(out), "--quiet"]) != 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and f"ids file {Path(s.ids).name} sha256" in lines[0], lines
    (out / s.tar).unlink()
    assert _run("--root", str(raw), "--out", str(out), "--shard-size", "0.05") == 0
    assert (out / s.ids).read_bytes() == original
    assert main(["verify", str(out), "--quiet"]) == 0
