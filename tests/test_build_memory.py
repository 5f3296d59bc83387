"""A small file that decodes to hours of audio: decoding streams, so every build process stays
under 1.5 GB, and ``--max-seconds`` refuses longer inputs from their header (issue 28)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
LIMIT_KB = int(1.5 * (1 << 20))  # ru_maxrss is in KiB on Linux
_MEASURED = (
    "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
    "print('maxrss_kb', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)"
)


def _silence_flac(path: Path, seconds: int, rate: int = 44100) -> None:
    """Stereo FLAC of silence, written a minute at a time (never the whole array in memory)."""
    block = np.zeros((rate * 60, 2), dtype=np.int16)
    with sf.SoundFile(path, "w", rate, 2, format="FLAC", subtype="PCM_16") as f:
        for start in range(0, seconds, 60):
            f.write(block[: rate * min(60, seconds - start)])


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("memory") / "raw"
    (root / "audio").mkdir(parents=True)
    _silence_flac(root / "audio" / "long.flac", 2 * 3600)
    t = np.arange(3 * 22050) / 22050
    sf.write(root / "audio" / "tone.wav", (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 22050)
    _rows(root, ("long.flac", "tone.wav"))
    return root


def _rows(root: Path, names: tuple[str, ...]) -> None:
    rows = [{"path": f"audio/{n}", "label": n[0], "split": "train"} for n in names]
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)


def _build(raw: Path, out: Path, *extra: str) -> tuple[subprocess.CompletedProcess[str], int]:
    """``python -m shards build`` in a fresh process: its result and the peak RSS (KiB) of the
    largest process it ran (the driver or a decode worker)."""
    argv = [sys.executable, "-m", "shards", "build", "folder", "--root", str(raw), "--out", str(out)]
    proc = subprocess.run(
        [sys.executable, "-c", _MEASURED, *argv, "--workers", "2", "--quiet", *extra],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=900,
    )
    line = [x for x in proc.stdout.splitlines() if x.startswith("maxrss_kb ")]
    return proc, int(line[-1].split()[1])


@pytest.mark.slow
def test_two_hours_of_silence_builds_in_bounded_memory(raw: Path, tmp_path: Path) -> None:
    assert (raw / "audio" / "long.flac").stat().st_size < 5 << 20  # ~1 MB decoding to 2.5 GB of float32
    proc, rss = _build(raw, tmp_path / "o")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    m = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert m["totals"] == {"input": 2, "written": 2, "rejected": 0}
    assert m["splits"]["train"]["max_seconds"] == pytest.approx(7200, abs=0.01)
    print(f"peak RSS of the largest build process: {rss / 1024:.0f} MiB")
    assert rss < LIMIT_KB, f"{rss / 1024:.0f} MiB"


def test_max_seconds_refuses_from_the_header(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    (raw / "audio").mkdir(parents=True)
    _silence_flac(raw / "audio" / "long.flac", 120)
    sf.write(raw / "audio" / "tone.wav", np.full(3 * 8000, 0.2, dtype=np.float32), 8000)
    _rows(raw, ("long.flac", "tone.wav"))
    proc, _ = _build(raw, tmp_path / "o", "--max-seconds", "60")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    rejects = [json.loads(x) for x in (tmp_path / "o" / "rejects.jsonl").read_text().splitlines()]
    assert [(r["path"], r["reason"]) for r in rejects] == [
        (
            "audio/long.flac",
            "too long: 120 s > max_seconds 60 (from its header; raise --max-seconds to keep it)",
        )
    ]
