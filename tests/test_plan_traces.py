"""The sample plan through the DALI loader, read back from its trace (``loader.trace``): class
balance and weighted mixing met per epoch, the same chunks whatever the rank count, an exact
resume across rank counts, and a corrupted shard skipped by every rank."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from pipelines.bench.small import small_configs
from pipelines.loader import build_loader
from shards.bench.synth import GENRES, make_synth
from shards.builder.config import BuildConfig
from shards.builder.driver import build

SR = 8000


def loader(shards: Any, rank: int = 0, world: int = 1, weights: list[float] | None = None, device: str = "cpu",
           **kw: Any):  # type: ignore[no-untyped-def]  # fmt: skip
    fc, aug, lc = small_configs(**kw)
    return build_loader(shards, "train", mode="train", features=fc, augment=aug, loader=lc, rank=rank,
                        world_size=world, device=device, weights=weights)  # fmt: skip


def read_trace(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(ln) for f in sorted(folder.glob("rank*.jsonl")) for ln in f.read_text().splitlines()]


def chunks(rows: list[dict[str, Any]], epoch: int) -> Counter:
    """An epoch's chunks as a multiset of (position, track, start): what was drawn, not by whom."""
    return Counter((r["pos"], r["tid"], r["start"]) for r in rows if r["epoch"] == epoch)


@pytest.fixture(scope="module")
def imbalanced(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder build whose train split holds 40/20/10/5 tracks of its four classes."""
    root = tmp_path_factory.mktemp("imbalanced")
    make_synth(root / "raw", tracks=160, seconds=1.5, seed=5, formats=["wav"], sample_rates=[SR])
    df = pd.read_csv(root / "raw" / "labels.csv")
    keep = [i for g, n in zip(GENRES, [40, 20, 10, 5]) for i in df.index[df["label"] == g][:n]]
    df.loc[keep].assign(split="train").to_csv(root / "raw" / "labels.csv", index=False)
    cfg = BuildConfig(source="folder", root=root / "raw", out=root / "shards", task="single", codec="pcm16",
                      sample_rate=SR, shard_size_mb=0.1, workers=1)  # fmt: skip
    build(cfg, progress=False)
    return root / "shards"


@pytest.mark.parametrize(("balance", "low", "high"), [("class", 0.22, 0.28), ("none", 0.06, 0.54)])
def test_balance_gives_each_class_its_share_of_every_epoch(imbalanced: Path, tmp_path: Path, balance: str,
                                                           low: float, high: float) -> None:  # fmt: skip
    ld = loader(imbalanced, balance=balance, trace=str(tmp_path), batch_size=10)
    for _ in range(2):
        assert sum(b["x"].shape[0] for b in ld) == 150  # 75 items of K=2 chunks, 15 batches of 5 tracks
    rows = read_trace(tmp_path)
    for epoch in (0, 1):
        got = Counter(r["labels"][0] for r in rows if r["epoch"] == epoch)
        shares = sorted(v / sum(got.values()) for v in got.values())
        assert len(got) == 4 and low <= shares[0] and shares[-1] <= high, (balance, shares)
    if balance == "none":  # as the data has them: 40/20/10/5 of 75
        assert sorted(Counter(r["labels"][0] for r in rows if r["epoch"] == 0).values()) == [10, 20, 40, 80]


def test_two_builds_weighted_3_to_1_give_75_percent(synth_shards, tmp_path: Path) -> None:
    a = synth_shards(tracks=24, seconds=1.5, sample_rate=SR, shard_size_mb=0.1)
    b = synth_shards(
        tracks=24, seconds=1.5, sample_rate=11025, seed=1, shard_size_mb=0.1
    )  # resampled to 8 kHz
    ld = loader([a, b], weights=[3.0, 1.0], trace=str(tmp_path), batch_size=8)
    batches = [x for _ in range(2) for x in ld]
    assert all(x["x"].isfinite().all() for x in batches)
    rows = read_trace(tmp_path)
    for epoch in (0, 1):
        src = Counter(r["source"] for r in rows if r["epoch"] == epoch)
        assert abs(src[0] / (src[0] + src[1]) - 0.75) <= 0.03, src


def test_an_epoch_is_the_same_chunks_on_one_rank_and_on_two(synth_shards, tmp_path: Path) -> None:
    shards = synth_shards(tracks=24, seconds=1.5, sample_rate=SR, shard_size_mb=0.1)  # 16 train tracks
    one = loader(shards, trace=str(tmp_path / "one"), batch_size=4)
    list(one)
    for r in range(2):
        list(loader(shards, rank=r, world=2, trace=str(tmp_path / "two"), batch_size=4))
    a, b = read_trace(tmp_path / "one"), read_trace(tmp_path / "two")
    assert len(a) == 32 and chunks(a, 0) == chunks(b, 0)  # 16 items x K=2, every position once


@pytest.mark.parametrize(("first", "then"), [(2, 1), (1, 2)])
def test_a_resume_on_another_rank_count_draws_the_rest_of_the_same_epoch(synth_shards, tmp_path: Path,
                                                                        first: int, then: int) -> None:  # fmt: skip
    """Stopped after 2 batches per rank, saved, resumed on the other count: the epoch's chunks are
    the uninterrupted run's, none twice; the next epoch too."""
    shards = synth_shards(tracks=24, seconds=1.5, sample_rate=SR, shard_size_mb=0.1)
    ref = loader(shards, trace=str(tmp_path / "ref"), batch_size=4)
    for _ in range(2):
        list(ref)
    ranks = [
        loader(shards, rank=r, world=first, trace=str(tmp_path / "cut"), batch_size=4) for r in range(first)
    ]
    for ld in ranks:
        it = iter(ld)
        next(it), next(it)
    state = ranks[0].state_dict()
    assert all(ld.state_dict() == state for ld in ranks)  # one plan position, whatever the rank
    resumed = [
        loader(shards, rank=r, world=then, trace=str(tmp_path / "cut"), batch_size=4) for r in range(then)
    ]
    for ld in resumed:
        ld.load_state_dict(state)
        assert ld.batches_done == 2 * first // then and len(ld) == 16 // (2 * then)
        for _ in range(2):
            list(ld)
    a, b = read_trace(tmp_path / "ref"), read_trace(tmp_path / "cut")
    for epoch in (0, 1):
        assert chunks(a, epoch) == chunks(b, epoch) and max(chunks(b, epoch).values()) == 1


@pytest.mark.gpu
def test_the_gpu_graph_draws_the_cpu_graphs_chunks(synth_shards, tmp_path: Path) -> None:
    """The plan is the graph's input in both: DALI on the GPU trains the same (track, start) as on the CPU."""
    shards = synth_shards(tracks=24, seconds=1.5, sample_rate=SR, shard_size_mb=0.1)
    for device in ("cpu", "cuda"):
        ld = loader(shards, device=device, trace=str(tmp_path / device), batch_size=4, balance="class")
        for _ in range(2):
            assert all(b["x"].device.type == device for b in ld)
    for epoch in (0, 1):
        assert chunks(read_trace(tmp_path / "cpu"), epoch) == chunks(read_trace(tmp_path / "cuda"), epoch)
