"""The sample plan under torchrun (gloo ranks, the trainer's own resume): a run stopped on 2 ranks
and resumed on 1 trains on the uninterrupted run's chunks, with its LR schedule at the same share
of the run; a corrupted shard is skipped by both ranks and named, and the run finishes."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
from helpers.tars import tar_samples
from test_train_ddp import torchrun
from test_train_e2e import ROOT, TINY

from train.logger import read_metrics

CONFIG = str(ROOT / "configs" / "demo_customcnn.toml")
pytestmark = pytest.mark.slow


def run(shards: Path, out: Path, trace: Path, nproc: int, *extra: str) -> dict:
    args = ["--config", CONFIG, *[f"--{t}" for t in TINY], "--loader.batch_size=4", "--train.epochs=2",
            "--data.val_split=''", "--optim.warmup_steps=0", f"--data.shards={shards}", f"--train.out={out}",
            f"--loader.trace={trace}", *extra]  # fmt: skip
    return json.loads(torchrun(args, nproc=nproc).stdout)


def epoch_chunks(trace: Path, epoch: int) -> Counter:
    rows = [json.loads(ln) for f in trace.glob("rank*.jsonl") for ln in f.read_text().splitlines()]
    return Counter((r["pos"], r["tid"], r["start"]) for r in rows if r["epoch"] == epoch)


@pytest.fixture(scope="module")
def shards(synth_shards) -> Path:
    return synth_shards(tracks=24, seconds=1.5, sample_rate=8000, shard_size_mb=0.1)  # 16 train tracks


def test_stopped_on_two_ranks_resumed_on_one_trains_the_same_epochs(shards: Path, tmp_path: Path) -> None:
    run(shards, tmp_path / "ref", tmp_path / "ref-trace", 2)
    run(shards, tmp_path / "cut", tmp_path / "cut-trace", 2, "--train.max_steps=2")
    done = run(shards, tmp_path / "cut", tmp_path / "cut-trace", 1)
    for epoch in (0, 1):
        ref, cut = epoch_chunks(tmp_path / "ref-trace", epoch), epoch_chunks(tmp_path / "cut-trace", epoch)
        assert sum(ref.values()) == 32 and ref == cut  # 16 items x K=2, each once
    # 2 steps of 2 ranks, then epoch 0's other 8 items and epoch 1 in 1-rank steps of 2 items
    assert done["step"] == 2 + 4 + 8 and done["epoch"] == 2
    lrs = [r["train/lr"] for r in read_metrics(tmp_path / "cut") if "train/lr" in r]
    one = run(shards, tmp_path / "one", tmp_path / "one-trace", 1)
    one_lrs = [r["train/lr"] for r in read_metrics(tmp_path / "one") if "train/lr" in r]
    assert one["step"] == 16 and lrs[-1] == pytest.approx(
        one_lrs[-1]
    )  # the schedule ends where 1 rank's does
    assert lrs[-4:] == pytest.approx(one_lrs[-4:])


def test_a_corrupted_shard_is_skipped_by_both_ranks(shards: Path, tmp_path: Path) -> None:
    copy = tmp_path / "build"
    shutil.copytree(shards, copy)
    tar = sorted((copy / "train").glob("*.tar"))[1]
    lost = {json.loads(s["json"])["tid"] for s in tar_samples(tar).values()}
    data = bytearray(tar.read_bytes())
    data[2048:2064] = bytes(16)  # same size, other bytes: only its sha256 tells
    tar.write_bytes(bytes(data))
    done = run(copy, tmp_path / "run", tmp_path / "trace", 2, "--loader.verify=first_open",
               "--loader.on_bad_shard=skip")  # fmt: skip
    assert done["epoch"] == 2 and done["skipped_shards"] == [str(tar)]
    for rank in (0, 1):
        rows = [json.loads(ln) for ln in (tmp_path / "trace" / f"rank{rank}.jsonl").read_text().splitlines()]
        assert rows and not {r["tid"] for r in rows} & lost  # both ranks trained, on none of its tracks
    logged = [r for r in read_metrics(tmp_path / "run") if "loader/skipped_shards" in r]
    assert logged and logged[-1]["loader/skipped_shards"] == 1
