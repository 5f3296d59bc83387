"""Long tracks (issue 13): segments in the shards, exact evaluation coverage across ranks,
track results equal to a whole-track reference, length-weighted training draws, v1 shards.

Tracks of 1 s to 12 min at 8 kHz, 30-s segments, 1-s chunks (``small_configs``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from helpers.features import reference_track
from helpers.old_formats import as_version
from helpers.tars import read_ids, read_tracks

from eval.aggregate import ScoredRows, aggregate_tracks
from eval.runner import evaluate_model
from pipelines.bench.small import small_configs
from pipelines.config import AugmentConfig, framing
from pipelines.loader import build_loader
from pipelines.memory import memory_bound
from pipelines.shard_checks import ShardError
from shards.bench.synth import GENRES, synth_track
from shards.builder.config import BuildConfig
from shards.builder.driver import build
from shards.format.manifest import SEGMENT_FIELDS, read_manifest

SR, SEG = 8000, 30 * 8000
TEST_SECONDS = [1.0, 2.5, 29.0, 30.0, 31.0, 61.5, 150.0, 300.0, 720.0]  # 1+1+1+1+2+3+5+10+24 = 48 segments
TRAIN_SECONDS = [1.0, 7.0, 30.0, 45.0, 95.0, 210.0]  # 1+1+1+2+4+7 = 16 segments: 4 whole batches of 4


def segments_of(seconds: float) -> int:
    return max(1, math.ceil(round(seconds * SR) / SEG))


@pytest.fixture(scope="module")
def long_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("long") / "raw"
    (root / "audio").mkdir(parents=True)
    rng = np.random.default_rng(7)
    rows = []
    for split, lengths in (("test", TEST_SECONDS), ("train", TRAIN_SECONDS)):
        for i, sec in enumerate(lengths):
            rel = f"audio/{split}{i}.wav"
            sf.write(root / rel, synth_track(i % 4, 0, ["noise"], sec, SR, rng), SR, subtype="PCM_16")
            rows.append({"path": rel, "label": GENRES[i % 4], "split": split})
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    out = root.parent / "shards"
    build(
        BuildConfig(
            source="folder", root=root, out=out, sample_rate=SR, workers=1, shard_size_mb=0.5, min_seconds=0.5
        ),
        progress=False,
    )
    return out


def configs(**loader: object):
    fc, aug, lc = small_configs(**loader)
    return dataclasses.replace(fc, channels=["mel", "mfcc", "chroma"]), aug, lc


def loader_for(shards, split, mode, *, rank=0, world_size=1, augment=None, device="cpu", **kw):
    fc, aug, lc = configs(**kw)
    return build_loader(
        shards,
        split,
        mode=mode,
        features=fc,
        augment=augment or aug,
        loader=lc,
        rank=rank,
        world_size=world_size,
        device=device,
    )


def test_segments_concatenate_to_the_track(long_build: Path) -> None:
    m = read_manifest(long_build)
    assert m.version == 3 and m.segment_samples == SEG
    info = m.split("test")
    assert info.num_tracks == len(TEST_SECONDS)
    assert info.num_samples == sum(segments_of(s) for s in TEST_SECONDS) == 48
    assert info.max_segment_seconds == 30.0 and info.max_seconds == 720.0
    raw = long_build.parent / "raw"
    tracks = read_tracks(long_build, "test")
    by_length = {t.signal.size: t for t in tracks.values()}
    for i in range(len(TEST_SECONDS)):
        src, _ = sf.read(raw / f"audio/test{i}.wav", dtype="float32")
        t = by_length[src.size]  # every length is distinct: nothing lost or duplicated
        np.testing.assert_allclose(t.signal, src, atol=2 / 32768)
    seen, ids = [], read_ids(long_build, "test")
    for tar in m.paths("test")[0]:
        with tarfile.open(tar) as tf:
            for member in tf.getmembers():
                if member.name.endswith(".json"):
                    meta = json.load(tf.extractfile(member))  # type: ignore[arg-type]
                    seg = meta["segment"]
                    assert set(seg) == set(SEGMENT_FIELDS)
                    assert seg["start"] == seg["index"] * SEG and seg["count"] == segments_of(meta["seconds"])
                    seen.append(seg["sample"])
                    fields = ids[seg["sample"]]  # the packed ids member says what the json says
                    assert fields["seg"].tolist() == [seg[f] for f in SEGMENT_FIELDS]
                    assert fields["tid"].tolist() == [meta["tid"]] and fields["lbl"].shape == (1,)
    assert sorted(seen) == list(range(48))  # a unique id per sample


def _expected_chunks(tracks, chunk):
    return {(tid, j * chunk) for tid, t in tracks.items() for j in range(max(1, -(-t.signal.size // chunk)))}


@pytest.mark.slow
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_eval_covers_every_chunk_once_and_matches_the_whole_track_reference(
    long_build: Path, world_size: int, device: str
) -> None:
    fc, _, lc = configs()
    fr = framing(fc, lc)
    tracks = read_tracks(long_build, "test")
    got: dict[tuple[int, int], torch.Tensor] = {}
    counts: Counter = Counter()
    biggest = 0
    for rank in range(world_size):
        loader = loader_for(long_build, "test", "eval", rank=rank, world_size=world_size, device=device)
        batches = [{k: v.cpu() for k, v in b.items()} for b in loader]
        assert len(batches) == len(loader)
        for b in batches:
            biggest = max(biggest, b["x"].shape[0])
            for x, t, s in zip(b["x"], b["track"].tolist(), b["start"].tolist()):
                counts[(t, s)] += 1
                got[(t, s)] = x
    assert set(counts) == _expected_chunks(tracks, fr.chunk) and set(counts.values()) == {1}
    assert biggest <= lc.eval_tracks_per_batch * SEG // fr.chunk  # bounded whatever the track length
    worst = 0.0
    for tid, t in tracks.items():  # every chunk, those beside a segment boundary included
        ref = reference_track(torch.from_numpy(t.signal), fc, fr)
        for j in range(ref.shape[0]):
            worst = max(worst, float((got[(tid, j * fr.chunk)] - ref[j]).abs().max()))
    assert worst < 5e-3  # min-max channels: the parity tolerance of docs/pipeline.md


@pytest.mark.slow
def test_track_results_equal_the_whole_track_reference(long_build: Path) -> None:
    """Three ranks' chunks, aggregated after the gather, give the reference's track rows."""
    fc, _, lc = configs()
    fr = framing(fc, lc)
    w = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))

    def predict(x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(8 * x.mean(dim=(2, 3)) @ w, dim=1)

    ranks = [loader_for(long_build, "test", "eval", rank=r, world_size=3) for r in range(3)]
    res = evaluate_model(predict, (b for ld in ranks for b in ld), read_manifest(long_build).task)
    tracks = read_tracks(long_build, "test")
    assert res.metrics["track/count"] == len(TEST_SECONDS)
    assert res.metrics["chunk/count"] == len(_expected_chunks(tracks, fr.chunk))
    for row, tid in enumerate(res.track.track.tolist()):
        chunks = reference_track(torch.from_numpy(tracks[tid].signal), fc, fr)
        ref = predict(chunks).mean(dim=0)
        np.testing.assert_allclose(res.track.probs[row], ref.numpy(), atol=1e-3)
        assert res.track.target[row] == tracks[tid].label[0]
    # the same rows as aggregating one rank's whole split
    one = list(loader_for(long_build, "test", "eval"))
    local = ScoredRows(
        torch.cat([predict(b["x"]) for b in one]),
        torch.cat([b["y"] for b in one]),
        torch.cat([b["track"] for b in one]),
    )
    np.testing.assert_allclose(aggregate_tracks(local).probs.numpy(), res.track.probs, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("weighting", ["uniform_time", "uniform_track"])
def test_training_draws_follow_the_weighting(long_build: Path, weighting: str) -> None:
    """Chunks per track match the plan's expectation (4 sigma) and never straddle a segment: an
    epoch is as many K-chunk items as the split has samples, dealt in proportion to a track's
    audio (uniform_time) or one track's worth each (uniform_track)."""
    fc, _, lc = configs()
    fr = framing(fc, lc)
    k, epochs = 8, 12
    loader = loader_for(
        long_build,
        "train",
        "train",
        augment=AugmentConfig(enabled=False),
        batch_size=4 * k,
        chunks_per_track=k,
        track_weighting=weighting,
    )
    tracks = read_tracks(long_build, "train")
    got: Counter = Counter()
    first = None
    for _ in range(epochs):
        for b in loader:
            assert b["x"].shape[0] == 4 * k  # every item yields its K chunks
            first = b if first is None else first
            for t, s in zip(b["track"].tolist(), b["start"].tolist()):
                n = tracks[t].signal.size
                got[t] += 1
                assert 0 <= s and (s + fr.chunk <= n or s == 0)
                assert n <= SEG or s // SEG == (s + fr.chunk - 1) // SEG  # within one segment
    items = read_manifest(long_build).split("train").num_samples
    mass = {t: (v.signal.size if weighting == "uniform_time" else 1.0) for t, v in tracks.items()}
    for tid, t in tracks.items():
        n = t.signal.size
        want = epochs * k * items * mass[tid] / sum(mass.values())
        assert abs(got[tid] - want) <= 4 * math.sqrt(want) + 1, (tid, n, got[tid], want)
    assert first is not None  # drawn chunks are the reference's features of those samples
    for x, t, s in zip(first["x"], first["track"].tolist(), first["start"].tolist()):
        piece = torch.from_numpy(tracks[t].signal[s : s + fr.chunk])
        ref = reference_track(piece, fc, fr)
        assert float((x - ref[0]).abs().max()) < 5e-3


def test_version_1_shards_read_as_one_segment_per_track(synth_shards, tmp_path: Path) -> None:
    v3 = synth_shards(tracks=8, seconds=2.5, sample_rate=SR, shard_size_mb=0.1)
    v1 = as_version(v3, tmp_path / "v1", 1)
    assert read_manifest(v1).version == 1 and not read_manifest(v1).segmented
    a, b = (list(loader_for(p, "train", "eval")) for p in (v3, v1))
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for key in ("x", "y", "track", "start"):
            assert torch.equal(x[key], y[key]), key
    for weighting in ("uniform_time", "uniform_track"):  # equal lengths: K chunks of every track
        batch = next(iter(loader_for(v1, "train", "train", track_weighting=weighting)))
        per_track = Counter(batch["track"].tolist())
        assert batch["x"].shape[0] == 8 and set(per_track.values()) == {2}


def test_device_memory_bound_follows_the_segment_not_the_track(long_build: Path) -> None:
    """The test split holds a 12-min track; evaluation lays out at most one 30-s segment per
    sample. The same tracks stored whole (version 1) would need 24x the slots, which a budget
    refuses in one line before any DALI work."""
    ev = loader_for(long_build, "test", "eval")
    bound = memory_bound(ev.spec)
    assert bound.rows == 30 and memory_bound(loader_for(long_build, "train", "train").spec).rows == 2
    whole = memory_bound(dataclasses.replace(ev.spec, longest_sample=720 * SR))
    # 24x the slots: the tensors scale with them (the pools' rounding and the capped cuFFT work areas do not)
    assert whole.rows == 720 and whole.dali > 12 * bound.dali and whole.torch > 8 * bound.torch
    budget = bound.total / 1e9 * 0.9
    with pytest.raises(ValueError, match=r"manifest.json: split 'test' \(eval\) needs up to .* GB .*"
                                         r"loader.device_memory_gb") as e:  # fmt: skip
        loader_for(long_build, "test", "eval", device_memory_gb=budget)
    assert "\n" not in str(e.value) and "longest sample 30 s" in str(e.value)
    assert len(loader_for(long_build, "test", "eval", device_memory_gb=budget / 0.8)) > 0


def test_eval_chunks_that_would_straddle_segments_are_refused(long_build: Path) -> None:
    with pytest.raises(ShardError, match=r"segments of 30 s, not a whole number of loader.chunk_seconds=0.7"):
        loader_for(long_build, "test", "eval", chunk_seconds=0.7)
    # training draws chunks within segments: any chunk length works
    assert len(loader_for(long_build, "train", "train", chunk_seconds=0.7)) == 4
