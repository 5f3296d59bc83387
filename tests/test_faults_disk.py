"""A full disk (and other refused writes) during a build, a checkpoint and an eval report: one
``error:`` line naming the folder, what was written and the room it needs; exit 2; no temporary
file left; what was committed before kept unchanged; a re-run after freeing space continues.

Each disk-full case runs twice: with writes that fail with ENOSPC (always) and on a real,
size-limited tmpfs (where this machine lets the test mount one).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from helpers.faults import FailingWrites, error_lines, free_bytes, resize_tmpfs, temp_files, tmpfs

from shards.base.atomic import WriteError, atomic_write_text, human_bytes
from shards.base.errors import run_cli
from shards.bench.synth import make_synth
from shards.builder.build_files import PARTS
from shards.cli import main as shards_main
from shards.format.writer import ShardWriter

ROOT = Path(__file__).resolve().parents[1]
SHARD = 0.2  # MiB: one 3-s track per shard
TINY = [
    "--features.sample_rate=8000", "--features.n_fft=256", "--features.hop_length=256",
    "--features.n_mels=32", "--features.n_mfcc=16", "--loader.batch_size=8", "--loader.chunks_per_track=2",
    "--loader.chunk_seconds=1.0", "--loader.num_threads=1", "--loader.eval_tracks_per_batch=4",
    "--loader.initial_fill=8", "--model.family=customcnn", "--model.preset=tiny", "--train.amp=none",
    "--train.device=cpu", "--train.threads=2", "--train.log_every=1", "--checkpoint.every_steps=1",
]  # fmt: skip


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synth(tmp_path_factory.mktemp("raw"), tracks=8, seconds=3.0, formats=["wav"]).parent


@pytest.fixture(scope="module")
def reference(raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same build with room to spare: what a resumed build must equal."""
    out = tmp_path_factory.mktemp("ref") / "out"
    assert _build(raw, out) == 0
    return out


def _build(raw: Path, out: Path) -> int:
    argv = ["build", "folder", "--root", str(raw), "--out", str(out), "--quiet", "--workers", "1"]
    return run_cli(shards_main, [*argv, "--shard-size", str(SHARD)])


def _splits(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())["splits"]


def _check_build_fault(out: Path, err: str, free: int, raw: Path, reference: Path) -> None:
    """The one line, no temp file, the finished shards intact; then a re-run completes."""
    lines = error_lines(err)
    assert len(lines) == 1, err
    k = int(lines[0].split("shard train/")[1][:6])
    assert lines[0] == (
        f"error: {out / 'train'}: no space left on device while writing shard train/{k:06d}.tar "
        f"(needs up to {human_bytes(int(SHARD * 2**20))}, {human_bytes(free)} free); free some space and "
        f"run the same command again (the {k} finished shard{'s' if k != 1 else ''} of train before it are kept)"
    )
    assert temp_files(out) == []
    assert not (out / "manifest.json").exists()
    ref = _splits(reference)["train"]["shards"]
    on_disk = sorted(p.name for p in (out / "train").iterdir())
    files = ("tar", "index", "ids")  # with the sha256 each is recorded under
    assert on_disk == sorted(Path(s[f]).name for s in ref[:k] for f in files)
    for s in ref[:k]:  # committed before the fault: unchanged, the bytes an uninterrupted build writes
        assert [sha(out / s[f]) for f in files] == [s["sha256"], s["index_sha256"], s["ids_sha256"]]
    # the commit markers (the builder's bookkeeping) name only shards that match the reference
    state = [json.loads(p.read_text())["shard"] for p in sorted((out / PARTS / "train").glob("*.done"))]
    assert [s["sha256"] for s in state] == [s["sha256"] for s in ref[: len(state)]] and len(state) <= k


def test_build_disk_full_injected(raw: Path, reference: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    out = tmp_path / "out"
    with monkeypatch.context() as m:
        disk = FailingWrites(out, ".000002.tar.*.tmp", after=5000, free=3000).install(m)
        assert _build(raw, out) == 2
    assert disk.hits
    _check_build_fault(out, capsys.readouterr().err, 3000, raw, reference)
    assert _build(raw, out) == 0  # room again: the build resumes after the kept shards
    assert _splits(out) == _splits(reference)


def test_build_disk_full_tmpfs(raw: Path, reference: Path, tmp_path: Path, capsys) -> None:
    shards = _splits(reference)["train"]["shards"]
    page = 4096
    pages = sum(-(-s["bytes"] // page) + 1 for s in shards[:3]) + 2 + -(-shards[3]["bytes"] // page) // 2
    with tmpfs(tmp_path / "disk", pages * page) as disk:
        out = disk / "out"
        assert _build(raw, out) == 2
        # the message counts the space free while the build still held its lease (.build/locks/,
        # one tmpfs page), released on the way out
        _check_build_fault(out, capsys.readouterr().err, free_bytes(disk) - page, raw, reference)
        resize_tmpfs(disk, 16 << 20)
        assert _build(raw, out) == 0
        assert _splits(out) == _splits(reference)


def test_writer_abort_never_raises_a_second_time(tmp_path: Path, monkeypatch) -> None:
    """The issue's 52-line trace: the writer's cleanup closed a stream that could not flush."""
    FailingWrites(tmp_path, ".000000.tar.*.tmp", after=0).install(monkeypatch)
    w = ShardWriter(tmp_path, "train", max_bytes=1 << 20)
    with pytest.raises(WriteError) as e, w:
        w.write("a", {"pcm": b"x" * 10000})
    assert str(e.value) == (
        f"{tmp_path / 'train'}: no space left on device while writing shard train/000000.tar (needs up to "
        "1.0 MiB, 2.9 KiB free); free some space and run the same command again"
    )
    assert e.value.errno == errno.ENOSPC and isinstance(e.value.__context__, OSError)  # the first fault only
    assert temp_files(tmp_path) == [] and not list((tmp_path / "train").iterdir())


def test_a_full_disk_at_the_ids_file_keeps_neither_the_index_nor_the_tar(tmp_path: Path, monkeypatch) -> None:
    """The index and ids file are written before the tar is committed: a fault at the ids file
    removes the index just written and the tar's temporary file (a committed tar always has both)."""
    disk = FailingWrites(tmp_path, ".000000.ids.*.tmp", after=0, free=10).install(monkeypatch)
    w = ShardWriter(tmp_path, "train", max_bytes=1 << 20)
    with pytest.raises(WriteError) as e, w:
        w.write("a", {"pcm": b"x" * 10000, "ids": bytes(56)})
    assert disk.hits
    assert str(e.value).startswith(
        f"{tmp_path / 'train'}: no space left on device while writing shard train/000000.ids (needs 56 B"
    ), str(e.value)
    assert temp_files(tmp_path) == [] and not list((tmp_path / "train").iterdir())


@pytest.mark.parametrize(
    ("err", "text"),
    [
        (errno.EIO, "input/output error (a failing disk or a dropped network mount) while writing a.txt; "
         "check the disk or the mount (dmesg), then run the same command again"),
        (errno.EROFS, "read-only file system while writing a.txt; write to a writable folder"),
        (errno.EDQUOT, "disk quota exceeded while writing a.txt (needs 5 B, 2.9 KiB free); free some of "
         "your quota and run the same command again"),
    ],
)  # fmt: skip
def test_other_refused_writes_are_one_line_too(tmp_path: Path, monkeypatch, err: int, text: str) -> None:
    (tmp_path / "a.txt").write_text("before")
    FailingWrites(tmp_path, ".a.txt.*.tmp", err=err).install(monkeypatch)
    with pytest.raises(WriteError) as e:
        atomic_write_text(tmp_path / "a.txt", "after")
    assert str(e.value) == f"{tmp_path}: {text}" and e.value.errno == err
    assert (tmp_path / "a.txt").read_text() == "before" and temp_files(tmp_path) == []


# ------------------------------------------------------------------ checkpoints


def _train(shards: Path, out: Path, *extra: str) -> int:
    from train.__main__ import main as train_main

    cfg = str(ROOT / "configs" / "demo_customcnn.toml")
    over = [f"--data.shards={shards}", f"--train.out={out}", "--data.val_split=''", *TINY]
    return run_cli(train_main, ["--config", cfg, *over, *extra])


def _tensor_bytes(path: Path) -> int:
    """What a checkpoint's tensors take (an independent count from the file on disk)."""
    state = torch.load(path, weights_only=True)

    def walk(v: object) -> int:
        if torch.is_tensor(v):
            return v.numel() * v.element_size()
        if isinstance(v, dict):
            return sum(walk(x) for x in v.values())
        return sum(walk(x) for x in v) if isinstance(v, (list, tuple)) else 0

    return walk(state)


@pytest.fixture(scope="module")
def shards8k(synth_shards: Callable[..., Path]) -> Path:
    return synth_shards(task="single", tracks=24, seconds=3.0, sample_rate=8000)


def _checkpoint_fault(
    shards8k: Path, out: Path, capsys, fail: Callable[[], int], free: Callable[[], int]
) -> None:
    ckpts = out / "checkpoints"
    assert _train(shards8k, out, "--train.max_steps=1") == 0
    first = ckpts / "step_00000001.pt"
    before = sha(first)
    capsys.readouterr()
    assert fail() == 2
    lines = error_lines(capsys.readouterr().err)
    assert lines == [
        f"error: {ckpts}: no space left on device while writing checkpoint step_00000002.pt (needs "
        f"{human_bytes(_tensor_bytes(first))}, {human_bytes(free())} free); free some space and run the same "
        f"command again (the checkpoints written before it are kept)"
    ]
    assert temp_files(out) == [] and sorted(p.name for p in ckpts.iterdir()) == ["step_00000001.pt"]
    assert sha(first) == before and torch.load(first, weights_only=True)["step"] == 1  # intact, readable


@pytest.mark.slow
def test_checkpoint_disk_full_injected(shards8k: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    out = tmp_path / "run"

    def fail() -> int:
        with monkeypatch.context() as m:
            FailingWrites(out, ".step_00000002.pt.*.tmp", after=1000, free=3000).install(m)
            return _train(shards8k, out, "--train.max_steps=3")

    _checkpoint_fault(shards8k, out, capsys, fail, lambda: 3000)
    assert _train(shards8k, out, "--train.max_steps=3") == 0  # room again: resumes from step 1
    assert torch.load(out / "checkpoints" / "step_00000003.pt", weights_only=True)["step"] == 3


@pytest.mark.slow
def test_checkpoint_disk_full_tmpfs(shards8k: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setattr("train.trainer.plot_run_curves", lambda *a: None)  # the free space stays as reported
    with tmpfs(tmp_path / "disk", 64 << 20) as disk:
        out = disk / "run"
        holder = {}

        def fail() -> int:
            used = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
            size = -(-(used + (out / "checkpoints" / "step_00000001.pt").stat().st_size // 2) // 4096) * 4096
            resize_tmpfs(disk, size + 64 * 4096)  # metrics and curves fit, a second checkpoint does not
            rc = _train(shards8k, out, "--train.max_steps=3")
            holder["free"] = free_bytes(disk)
            return rc

        _checkpoint_fault(shards8k, out, capsys, fail, lambda: holder["free"])


# ------------------------------------------------------------------ eval report


@pytest.fixture(scope="module")
def trained(shards8k: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("trained")
    assert _train(shards8k, out, "--train.max_steps=1") == 0
    return out / "checkpoints" / "step_00000001.pt"


def _eval(ckpt: Path, shards: Path, out: Path) -> int:
    from eval.cli import main as eval_main

    return run_cli(eval_main, ["--checkpoint", str(ckpt), "--shards", str(shards), "--out", str(out),
                               "--eval.device=cpu"])  # fmt: skip


@pytest.mark.slow
def test_eval_report_disk_full_injected(
    trained: Path, shards8k: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    out = tmp_path / "report"
    assert _eval(trained, shards8k, out) == 0
    before = {p.name: sha(p) for p in out.iterdir()}
    need = (out / "report.md").stat().st_size
    capsys.readouterr()
    with monkeypatch.context() as m:
        FailingWrites(out, ".report.md.*.tmp", after=100, free=3000).install(m)
        assert _eval(trained, shards8k, out) == 2
    assert error_lines(capsys.readouterr().err) == [
        f"error: {out}: no space left on device while writing report.md (needs {human_bytes(need)}, "
        "2.9 KiB free); free some space and run the same command again"
    ]
    assert temp_files(out) == [] and {p.name: sha(p) for p in out.iterdir()} == before


@pytest.mark.slow
def test_eval_report_disk_full_tmpfs(trained: Path, shards8k: Path, tmp_path: Path, capsys) -> None:
    ref = tmp_path / "ref"
    assert _eval(trained, shards8k, ref) == 0
    png = next(ref.glob("*_confusion.png"))
    csv = png.with_suffix(".csv")
    capsys.readouterr()
    with tmpfs(tmp_path / "disk", (-(-csv.stat().st_size // 4096) + 1) * 4096) as disk:
        out = disk / "report"
        assert _eval(trained, shards8k, out) == 2
        assert error_lines(capsys.readouterr().err) == [
            f"error: {out}: no space left on device while writing plot {png.name} (needs "
            f"{human_bytes(png.stat().st_size)}, {human_bytes(free_bytes(disk))} free); free some space and run "
            "the same command again"
        ]
        assert temp_files(out) == [] and [p.name for p in out.iterdir()] == [csv.name]
        assert (out / csv.name).read_bytes() == csv.read_bytes()  # written before the fault: kept


@pytest.mark.slow
def test_a_refused_checkpoint_stops_every_rank_with_one_line(tmp_path: Path) -> None:
    """Rank 0 writes; under torchrun the other rank learns it failed instead of waiting forever."""
    from test_train_ddp import _free_port

    out = tmp_path / "run"
    with tmpfs(out / "checkpoints", 1 << 20, read_only=True):
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
            f"--master_port={_free_port()}", "-m", "train", "--data.synthetic=true", "--data.val_split=''",
            "--data.synthetic_batches=2", "--data.synthetic_batch_size=4", "--model.family=customcnn",
            "--model.preset=tiny", "--train.amp=none", "--train.epochs=1", "--train.device=cpu",
            f"--train.out={out}",
        ]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode != 0
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert errors == [
        f"error: {out / 'checkpoints'}: read-only file system while writing checkpoint step_00000002.pt; "
        "write to a writable folder (the checkpoints written before it are kept)"
    ], proc.stderr[-3000:]
    assert "exitcode  : 2" in proc.stderr  # both ranks raised the same user error (rank 1 silently)
