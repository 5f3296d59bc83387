"""Shard building as plan -> idempotent shard tasks -> merge, on one machine: array parts, a
driver SIGKILLed mid-build, a hung decoder, two drivers on one output, output to s3://.

Every executor must write the reference build (the local pool's) byte for byte."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from helpers import decode_faults as faults
from helpers.scale import assert_same_build, build_args, build_files, make_raw, reference

import shards.builder.estimate as estimate
import shards.builder.workers as workers
from shards.builder.lock import hold_lease
from shards.builder.output import BuildOutput
from shards.builder.plan import PlannedRecord, ShardPlan
from shards.cli import main
from shards.format.storage import list_files, read_bytes
from shards.importers.records import Record

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_raw(tmp_path_factory.mktemp("scale") / "raw")


@pytest.fixture(scope="module")
def ref(raw: Path) -> Path:
    return reference(raw, raw.parent / "reference")


def _one_error(capsys: pytest.CaptureFixture, *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert all(n in err for n in needles), err
    return err


def test_reference_build_accounts_for_every_input(ref: Path) -> None:
    m = json.loads((ref / "manifest.json").read_text())
    assert m["totals"] == {"input": 14, "written": 12, "rejected": 2}
    assert sum(len(s["shards"]) for s in m["splits"].values()) >= 5  # several shards per split
    rejects = {
        json.loads(x)["path"]: json.loads(x)["reason"]
        for x in (ref / "rejects.jsonl").read_text().splitlines()
    }
    assert rejects == {
        "audio/empty.wav": "empty file (0 bytes)",
        "audio/short.wav": "too short: 0.02 s < min_seconds 1",
    }
    assert "out" not in m["build"] and "executor" not in m["build"]  # how and where: not in the manifest


def test_array_parts_then_merge_equal_the_one_shot_build(
    raw: Path, ref: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "parts"
    assert main(["plan", *build_args(raw, out)[1:]]) == 0
    assert "6 shards planned" in capsys.readouterr().out
    for i in (0, 2):
        assert main([*build_args(raw, out), "--workers", "2", "--part", f"{i}/3"]) == 0
    assert "2 of 6 planned shards still to build" in capsys.readouterr().out
    assert main(["merge", str(out)]) == 2  # part 1/3 has not run
    _one_error(capsys, "2 of 6 planned shards are not built yet", "train/000001")
    assert main([*build_args(raw, out), "--workers", "1", "--part", "1/3"]) == 0
    assert f"all shards built: run `python -m shards merge {out}`" in capsys.readouterr().out
    assert main(["merge", str(out), "--strict"]) == 1  # two rejects
    assert_same_build(out, ref)
    before = {n: (out / n).stat().st_mtime_ns for n in build_files(out) if n.endswith(".tar")}
    assert main([*build_args(raw, out), "--part", "1/3"]) == 0  # a rerun part: nothing to build
    assert "0 of its 2 shards built now" in capsys.readouterr().out
    assert {n: (out / n).stat().st_mtime_ns for n in before} == before


def test_driver_killed_mid_build_then_rerun(
    raw: Path, ref: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A second driver started while the first runs refuses; the first SIGKILLed mid-build;
    the same command again continues from the committed shards to the reference bytes."""
    out = tmp_path / "killed"
    args = [*build_args(raw, out), "--workers", "2"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    code = "import sys; from helpers.decode_faults import slow_cli; sys.exit(slow_cli(sys.argv[1:]))"
    proc = subprocess.Popen([sys.executable, "-c", code, *args], env=env, start_new_session=True)
    markers = out / ".build" / "shards"
    deadline = time.monotonic() + 120
    while not list(markers.rglob("*.done")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert main(args) == 2  # a second driver on the same output, by mistake
    _one_error(capsys, "another build is writing here", f"pid {proc.pid}")
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its decode processes, mid-build
    proc.wait()
    committed = sorted(markers.rglob("*.done"))
    assert committed and not (out / "manifest.json").exists()
    tars = [out / m.parent.name / m.name.replace(".done", ".tar") for m in committed]
    kept = {p: p.stat().st_mtime_ns for p in tars if p.exists()}  # a shard of rejects only has no tar
    assert kept
    assert main(args) == 0  # the same command: continues from the committed shards
    assert_same_build(out, ref)
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # committed shards were not rebuilt
    assert not list(out.rglob("*.tmp"))


def test_a_hung_decoder_is_a_reject_with_a_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = tmp_path / "raw"
    (raw / "audio").mkdir(parents=True)
    names = ["a", "b", "hang", "c"]
    for i, name in enumerate(names):
        sf.write(raw / f"audio/{name}.wav", np.full(8000, 0.1 * (i + 1), dtype=np.float32), 8000)
    rows = [{"path": f"audio/{n}.wav", "label": "xy"[i % 2], "split": "train"} for i, n in enumerate(names)]
    pd.DataFrame(rows).to_csv(raw / "labels.csv", index=False)
    monkeypatch.setattr(workers, "process_indexed", faults.hang_on_named)  # in the decode processes
    monkeypatch.setattr(estimate, "estimate_record", faults.hanging_header)  # the plan's header read
    args = ["build", "folder", "--root", str(raw), "--out", str(tmp_path / "o"), "--quiet"]
    assert main([*args, "--workers", "2", "--decode-timeout", "3"]) == 0
    rejects = [json.loads(x) for x in (tmp_path / "o" / "rejects.jsonl").read_text().splitlines()]
    assert [(r["path"], r["reason"]) for r in rejects] == [("audio/hang.wav", workers.timed_out(3))]
    m = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert m["totals"] == {"input": 4, "written": 3, "rejected": 1}
    assert not mp.active_children()  # the hung process was killed, not left behind


def test_a_second_driver_on_the_same_output_refuses(
    raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "o"
    with hold_lease(BuildOutput(out), "driver"):  # a build running (this process holds its lease)
        assert main([*build_args(raw, out), "--workers", "1"]) == 2
        _one_error(capsys, "another build is writing here", f"pid {os.getpid()}")
        assert main([*build_args(raw, out), "--part", "0/2"]) == 2
        _one_error(capsys, "another build is writing here")
    assert main(["plan", *build_args(raw, out)[1:]]) == 0
    with hold_lease(BuildOutput(out), "part-0-of-2", alongside=("part-",)):
        with hold_lease(BuildOutput(out), "part-1-of-2", alongside=("part-",)):  # parts coexist
            assert main(["merge", str(out)]) == 2
            _one_error(capsys, "another build is writing here")
            assert main(["plan", *build_args(raw, out)[1:], "--force"]) == 2  # re-planning under them
            _one_error(capsys, "another build is writing here")
    assert not list((out / ".build" / "locks").iterdir())  # every lease released


def test_missing_ray_extra_is_one_line(
    raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a)
    )
    assert main([*build_args(raw, tmp_path / "o"), "--executor", "ray"]) == 2
    _one_error(capsys, "pip install .[ray]")


def test_ids_beyond_the_estimate_never_clash() -> None:
    """A track that decodes into more segments than its header promised numbers the extra ones
    above every estimated id, distinct for every (track, extra segment)."""
    rec = Record(key="k", audio=Path("k"), labels="x", split="train", path="k")
    planned = [
        PlannedRecord(record=rec, key=f"k{t}", tid=t, first_sample=2 * t, segments=2, bytes=0)
        for t in range(50)
    ]
    shard = ShardPlan(split="train", index=0, records=planned, extra_ids=100)
    ids = [shard.sample_id(p, i) for p in planned for i in range(7)]
    assert len(set(ids)) == len(ids) and sorted(ids)[:100] == list(range(100)) and min(ids[2::7]) >= 100


def test_build_to_s3_equals_the_local_build(raw: Path, ref: Path, s3, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    url = s3.url("scale-out")
    assert main([*build_args(raw, url), "--workers", "2"]) == 0
    objects = list_files(url)
    want = build_files(ref)
    assert sorted(n for n in objects if not n.startswith(".")) == want
    for name in want:
        assert read_bytes(f"{url}/{name}") == (ref / name).read_bytes(), name
    puts = s3.server.requests(under=url)["PUT"]
    assert main([*build_args(raw, url), "--workers", "2"]) == 0  # up to date: no shard written again
    assert s3.server.requests(under=url)["PUT"] - puts <= 2  # the lease, nothing else
