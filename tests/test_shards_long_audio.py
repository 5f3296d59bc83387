"""5-minute tracks through the shard builder: OGG Vorbis written in blocks (one long
libsndfile write segfaults), and a build worker that dies becomes a reject, never a hang."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from shards.builder.workers import process_indexed as real_process_indexed

# light imports only at the top: the build's spawned workers import this module for die_on_crash_file

SR = 8000


@pytest.mark.slow
def test_five_minute_ogg_synth_and_build(tmp_path: Path) -> None:
    from shards.builder.config import BuildConfig
    from shards.builder.driver import build

    raw = tmp_path / "raw"
    code = (
        "from shards.bench.synth import make_synth; "
        f"make_synth({str(raw)!r}, tracks=6, seconds=300, formats=['ogg'], sample_rates=[{SR}])"
    )
    # a subprocess: the unfixed write kills its process with SIGSEGV (exit 139), not a test error
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    for f in sorted((raw / "audio").iterdir()):
        assert sf.info(str(f)).frames == 300 * SR
    cfg = BuildConfig(source="folder", root=raw, out=tmp_path / "out", codec="ogg", sample_rate=SR, workers=2)
    m = build(cfg, progress=False)
    assert m.totals == {"input": 6, "written": 6, "rejected": 0}
    assert sum(s.num_tracks for s in m.splits.values()) == 6  # type: ignore[misc]
    assert sum(s.num_samples for s in m.splits.values()) == 60  # ten 30-s segments each


def die_on_crash_file(job):  # type: ignore[no-untyped-def]
    """Stands in for a codec that segfaults on one file (runs in the build's worker processes)."""
    if "crash" in str(job[1]):
        os.kill(os.getpid(), signal.SIGSEGV)
    return real_process_indexed(job)


@pytest.mark.slow
def test_a_dead_worker_is_a_reject_not_a_hang(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pandas as pd
    from helpers.tars import read_tracks

    import shards.builder.driver as builder
    import shards.builder.workers as workers
    from shards.builder.config import BuildConfig
    from shards.format.manifest import read_manifest

    raw = tmp_path / "raw"
    (raw / "audio").mkdir(parents=True)
    names = ["a", "b", "crash", "c", "d", "e"]
    for i, name in enumerate(names):
        sf.write(raw / f"audio/{name}.wav", np.full(300 * SR, 0.1 * (i + 1), dtype=np.float32), SR)
    rows = [
        {"path": f"audio/{n}.wav", "label": "x" if i % 2 else "y", "split": "train"}
        for i, n in enumerate(names)
    ]
    pd.DataFrame(rows).to_csv(raw / "labels.csv", index=False)
    monkeypatch.setattr(workers, "process_indexed", die_on_crash_file)
    cfg = BuildConfig(source="folder", root=raw, out=tmp_path / "out", sample_rate=SR, workers=2)
    m = builder.build(cfg, progress=False)
    assert m.totals == {"input": 6, "written": 5, "rejected": 1}
    rejects = [json.loads(line) for line in (cfg.out / "rejects.jsonl").read_text().splitlines()]
    assert [(r["path"], r["reason"]) for r in rejects] == [("audio/crash.wav", workers.WORKER_DIED)]
    info = read_manifest(cfg.out).split("train")
    assert (info.num_tracks, info.num_samples) == (5, 50)  # 5-minute tracks: ten 30-s segments each
    levels = sorted(round(float(t.signal.mean()), 2) for t in read_tracks(cfg.out, "train").values())
    assert levels == [0.1, 0.2, 0.4, 0.5, 0.6]  # the other five, whole (one level per file)


def test_resume_keeps_whole_tracks_of_segments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A shard ends only between tracks, so a resumed build equals a fresh one, segment for segment."""
    import pandas as pd

    import shards.builder.driver as builder
    import shards.builder.workers as workers
    from shards.builder.config import BuildConfig

    raw = tmp_path / "raw"
    (raw / "audio").mkdir(parents=True)
    rows = []
    for i in range(5):
        sf.write(raw / f"audio/t{i}.wav", np.full(70 * SR, 0.1 * (i + 1), dtype=np.float32), SR)
        rows.append({"path": f"audio/t{i}.wav", "label": "ab"[i % 2], "split": "train"})
    pd.DataFrame(rows).to_csv(raw / "labels.csv", index=False)
    # 0.6 MiB shards: one 70-s track (3 segments, 1.07 MiB) per shard
    cfg = BuildConfig(
        source="folder", root=raw, out=tmp_path / "o", sample_rate=SR, workers=1, shard_size_mb=0.6
    )
    real, calls = workers.process_indexed, []

    def crash_on_fourth(job):  # type: ignore[no-untyped-def]
        calls.append(job[0])
        if calls == [0, 1, 2, 3]:
            raise RuntimeError("killed")
        return real(job)

    monkeypatch.setattr(workers, "process_indexed", crash_on_fourth)
    with pytest.raises(RuntimeError, match="killed"):
        builder.build(cfg, progress=False)
    # one track per planned shard: the third's shard was committed before the fourth was decoded
    assert len(list((cfg.out / "train").glob("*.tar"))) == 3
    calls.clear()
    m = builder.build(cfg, progress=False)
    assert calls == [3, 4]
    fresh = builder.build(BuildConfig(**{**vars(cfg), "out": tmp_path / "fresh"}), progress=False)
    assert m.splits == fresh.splits and m.split("train").num_samples == 15
