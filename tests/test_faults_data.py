"""Inputs and shards that exist but are not what they should be: special files in a label CSV,
bit rot in a shard's payload or index, a shard truncated (before or while a run reads it), a
truncated newest checkpoint. Each is one line naming the file, with the exit status a script
can act on; nothing on disk is changed by finding it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from helpers.faults import error_lines, temp_files

from shards.base.atomic import human_bytes
from shards.base.errors import first_line, run_cli
from shards.bench.synth import make_synth
from shards.cli import main as shards_main
from shards.format.manifest import read_manifest
from shards.format.verify import BadShard, LocalFiles, verify_first_open
from shards.format.writer import read_index
from shards.importers import reasons

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(task="single", tracks=24, seconds=3.0, sample_rate=8000, shard_size_mb=0.12)  # 2 tracks a shard
TINY = [
    "--features.sample_rate=8000", "--features.n_fft=256", "--features.hop_length=256",
    "--features.n_mels=32", "--features.n_mfcc=16", "--loader.batch_size=8", "--loader.chunks_per_track=2",
    "--loader.chunk_seconds=1.0", "--loader.num_threads=1", "--loader.eval_tracks_per_batch=4",
    "--loader.initial_fill=2", "--loader.prefetch=1", "--model.family=customcnn", "--model.preset=tiny",
    "--train.amp=none", "--train.device=cpu", "--train.threads=2", "--checkpoint.every_steps=1",
    "--checkpoint.keep_last=5", "--data.val_split=''",
]  # fmt: skip


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): sha(p) for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------ inputs


def test_fifo_and_directory_in_a_label_csv_say_what_they_are(tmp_path: Path, capsys) -> None:
    raw = make_synth(tmp_path / "raw", tracks=6, seconds=2.0, formats=["wav"]).parent
    os.mkfifo(raw / "audio" / "pipe.wav")
    (raw / "audio" / "folder.wav").mkdir()
    with open(raw / "labels.csv", "a") as f:
        f.write("audio/pipe.wav,blues,,calm,blues,blues_plain,train\n")
        f.write("audio/folder.wav,blues,,calm,blues,blues_plain,train\n")
    out = tmp_path / "out"
    argv = ["build", "folder", "--root", str(raw), "--out", str(out), "--quiet", "--workers", "1", "--strict"]
    assert run_cli(shards_main, argv) == 1  # --strict: rejects are a failure a script sees
    assert error_lines(capsys.readouterr().err) == [
        f"error: 2 input(s) rejected (--strict); see {out / 'rejects.jsonl'}"
    ]
    rejects = {
        r["path"]: r["reason"] for r in map(json.loads, (out / "rejects.jsonl").read_text().splitlines())
    }
    assert rejects == {"audio/pipe.wav": "not a regular file: FIFO", "audio/folder.wav": "a directory"}
    assert read_manifest(out).totals == {"input": 8, "written": 6, "rejected": 2}
    assert temp_files(out) == []


@pytest.mark.parametrize(
    ("fault", "reason"),
    [(PermissionError(errno.EACCES, "Permission denied"), "permission denied"),
     (OSError(errno.EIO, "Input/output error"), "unreadable: I/O error")],
)  # fmt: skip
def test_unreadable_inputs_say_why(tmp_path: Path, monkeypatch, fault: OSError, reason: str) -> None:
    """Root reads any file, so the refusal is injected where the file is opened."""
    bad = tmp_path / "a.wav"
    bad.write_bytes(b"RIFF" + bytes(100))
    real = Path.open

    def refusing_open(self: Path, *a, **kw):  # type: ignore[no-untyped-def]
        if self == bad:
            raise fault
        return real(self, *a, **kw)

    monkeypatch.setattr(Path, "open", refusing_open)
    assert reasons.file_fault(bad) == reason
    assert reasons.file_fault(tmp_path / "gone.wav") == "missing file"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file whatever its mode")
def test_unreadable_file_mode_is_permission_denied(tmp_path: Path) -> None:
    bad = tmp_path / "a.wav"
    bad.write_bytes(b"RIFF" + bytes(100))
    bad.chmod(0)
    assert reasons.file_fault(bad) == "permission denied"


# ------------------------------------------------------------------ shards at rest


@pytest.fixture
def damaged(synth_shards: Callable[..., Path], tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A copy of a build with a flipped payload byte, a flipped index byte and a truncated tar."""
    out = tmp_path / "shards"
    shutil.copytree(synth_shards(**SMALL), out)
    pcm_offset = read_index(out / "train" / "000001.idx")[0]["pcm"][0]
    _flip(out / "train" / "000001.tar", pcm_offset + 100)  # one sample of audio: DALI would read it silently
    _flip(out / "train" / "000002.idx", 20)  # a digit of an offset
    os.truncate(out / "validation" / "000000.tar", 5000)
    return out, snapshot(out)


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def _verify_lines(out: Path, capsys) -> list[str]:
    m = read_manifest(out, check_files=False)
    shard = {s.tar: s for info in m.splits.values() for s in info.shards}
    tar1, idx2 = out / "train" / "000001.tar", out / "train" / "000002.idx"
    return [
        f"{tar1}: tar sha256 {sha(tar1)[:12]}... differs from the manifest's "
        f"{shard['train/000001.tar'].sha256[:12]}... (corrupt: bit rot or a bad copy)",
        f"{out / 'train' / '000002.tar'}: index 000002.idx sha256 {sha(idx2)[:12]}... differs from the "
        f"manifest's {shard['train/000002.tar'].index_sha256[:12]}... (corrupt: bit rot or a bad copy)",
        f"{out / 'validation' / '000000.tar'}: tar has 5000 bytes, the manifest says "
        f"{shard['validation/000000.tar'].bytes} (truncated)",
    ]


def test_verify_names_each_bad_shard(damaged: tuple[Path, dict[str, str]], capsys) -> None:
    out, before = damaged
    expected = _verify_lines(out, capsys)
    assert run_cli(shards_main, ["verify", str(out), "--quiet", "--workers", "2"]) == 1
    got = capsys.readouterr()
    assert got.out.splitlines() == expected
    assert error_lines(got.err) == [
        f"error: {out}: 3 of 12 shards differ from manifest.json; delete each bad .tar and run the same build "
        "command again (it rebuilds from there), or copy them again"
    ]
    assert snapshot(out) == before  # finding it changes nothing


def test_verify_an_older_build_compares_each_index_with_its_tar(damaged: tuple[Path, dict[str, str]], capsys):
    """Builds written before index checksums were recorded: the index must be the tar's own."""
    out, _ = damaged
    data = json.loads((out / "manifest.json").read_text())
    for info in data["splits"].values():
        for s in info["shards"]:
            del s["index_sha256"], s["index_bytes"]
    (out / "manifest.json").write_text(json.dumps(data))
    assert run_cli(shards_main, ["verify", str(out), "--quiet"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert (
        lines[1] == f"{out / 'train' / '000002.tar'}: index does not match the tar's members (corrupt index)"
    )
    assert len(lines) == 3


def test_verify_of_an_intact_build(synth_shards: Callable[..., Path], capsys) -> None:
    out = synth_shards(**SMALL)
    assert run_cli(shards_main, ["verify", str(out), "--quiet"]) == 0
    size = sum(s.bytes for i in read_manifest(out).splits.values() for s in i.shards)
    assert capsys.readouterr().out == f"{out}: all 12 shards ({human_bytes(size)}) match manifest.json\n"


def test_first_open_checks_each_rank_range_once(damaged: tuple[Path, dict[str, str]]) -> None:
    from pipelines.shard_checks import verify_on_first_open

    out, _ = damaged
    m = read_manifest(out, check_files=False)
    bad = out / "train" / "000001.tar"
    # evaluation: 16 train samples in 8 shards, rank 0 reads shards 0-3, rank 1 shards 4-7
    verify_on_first_open(m, "train", rank=1, world_size=2, workers=2)
    with pytest.raises(BadShard) as e:
        verify_on_first_open(m, "train", rank=0, world_size=2, workers=2)
    assert e.value.shard == str(bad) and e.value.every_rank  # only rank 0 reads it: rank 0 says so
    assert str(e.value).endswith(
        f"(loader.verify=first_open; `python -m shards verify {out}` lists every bad shard)"
    )
    good = [s for s in m.splits["train"].shards if s.tar not in ("train/000001.tar", "train/000002.tar")]
    verify_first_open(LocalFiles(out), good)
    _flip(out / good[0].tar, 700)  # checked once per process: a later change is not re-read at open
    verify_first_open(LocalFiles(out), good)


@pytest.mark.slow
def test_first_open_stops_training_before_a_corrupt_shard_is_read(
    synth_shards: Callable[..., Path], tmp_path: Path, capsys
) -> None:
    out = tmp_path / "shards"
    shutil.copytree(synth_shards(**SMALL), out)
    tar = out / "train" / "000001.tar"
    _flip(tar, read_index(tar.with_suffix(".idx"))[0]["pcm"][0] + 100)
    want = read_manifest(out).split("train").shards[1].sha256
    run = tmp_path / "run"
    assert _train(out, run, "--loader.verify=first_open", "--train.max_steps=1") == 2
    assert error_lines(capsys.readouterr().err) == [
        f"error: {tar}: tar sha256 {sha(tar)[:12]}... differs from the manifest's {want[:12]}... (corrupt: "
        f"bit rot or a bad copy) (loader.verify=first_open; `python -m shards verify {out}` lists every bad shard)"
    ]
    assert not list(run.rglob("*.pt"))  # stopped before a step


# ------------------------------------------------------------------ during a run


def _train(shards: Path, out: Path, *extra: str) -> int:
    from train.__main__ import main as train_main

    cfg = str(ROOT / "configs" / "demo_customcnn.toml")
    return run_cli(
        train_main, ["--config", cfg, f"--data.shards={shards}", f"--train.out={out}", *TINY, *extra]
    )


@pytest.mark.slow
def test_shard_truncated_during_training_stops_after_a_checkpoint(
    synth_shards: Callable[..., Path], tmp_path: Path, capsys, monkeypatch
) -> None:
    from train.trainer import Trainer

    shards = tmp_path / "shards"
    shutil.copytree(synth_shards(**SMALL), shards)
    tars = sorted((shards / "train").glob("*.tar"))
    saved = {t: t.read_bytes() for t in tars}
    real_step = Trainer.train_step

    def step_then_truncate(self: Trainer, batch):  # type: ignore[no-untyped-def]
        loss = real_step(self, batch)
        if self.step == 1:
            for t in tars:
                os.truncate(t, 3000)  # in place (a copy over it, a failing disk): the open files shrink
        return loss

    monkeypatch.setattr(Trainer, "train_step", step_then_truncate)
    run = tmp_path / "run"
    assert _train(shards, run, "--train.epochs=3", "--loader.mmap=false") == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1, lines
    tar = Path(lines[0].removeprefix("error: ").split(": ", 1)[0])
    step = int(lines[0].split("stopped at step ")[1].split(" ")[0])
    ckpt = run / "checkpoints" / f"step_{step:08d}.pt"
    assert tar in tars and step >= 1
    assert lines[0] == (
        f"error: {tar}: tar has 3000 bytes, the manifest says {len(saved[tar])} (truncated); the run stopped at "
        f"step {step} (checkpoint {ckpt} written): rebuild or copy the shard again (python -m shards verify "
        "lists every bad one), then resume with checkpoint.resume=auto"
    )
    assert torch.load(ckpt, weights_only=True)["step"] == step and temp_files(run) == []
    monkeypatch.setattr(Trainer, "train_step", real_step)
    for t, data in saved.items():  # the shards copied again: the run resumes from that checkpoint
        t.write_bytes(data)
    assert (
        _train(shards, run, "--train.epochs=3", "--loader.mmap=false", "--train.max_steps=" + str(step + 1))
        == 0
    )
    assert torch.load(run / "checkpoints" / f"step_{step + 1:08d}.pt", weights_only=True)["step"] == step + 1


@pytest.mark.slow
def test_resume_auto_skips_a_truncated_newest_checkpoint(
    synth_shards: Callable[..., Path], tmp_path: Path, capsys
) -> None:
    shards = synth_shards(**SMALL)
    run = tmp_path / "run"
    assert _train(shards, run, "--train.max_steps=2") == 0
    ckpts = run / "checkpoints"
    first, newest = ckpts / "step_00000001.pt", ckpts / "step_00000002.pt"
    before = sha(first)
    os.truncate(newest, newest.stat().st_size // 2)  # a kill during the write, no atomic rename
    half = newest.stat().st_size
    try:
        torch.load(newest, weights_only=True)
    except Exception as e:  # noqa: BLE001 - what torch says about it, whatever the type
        why = first_line(e)
    capsys.readouterr()
    assert _train(shards, run, "--train.max_steps=3") == 0
    assert error_lines(capsys.readouterr().err) == [
        f"warning: {newest}: not a loadable musicstream checkpoint ({half} bytes, truncated or damaged: {why}); "
        "skipped, resuming from an older checkpoint"
    ]
    assert sha(first) == before
    assert torch.load(ckpts / "step_00000003.pt", weights_only=True)["step"] == 3
    assert torch.load(newest, weights_only=True)["step"] == 2  # written again by the resumed run
