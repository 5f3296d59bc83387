"""The DALI loader's contract: shapes, labels, chunk semantics, sharding, masks, seeds, resume.

Every test runs with DALI on the CPU and again on CUDA under the ``gpu`` marker.
"""

from __future__ import annotations

import dataclasses
import io
import math
from collections import Counter

import numpy as np
import pytest
import torch
from helpers.tars import mel_centres, read_tracks

from pipelines.bench.small import small_configs
from pipelines.config import AugmentConfig
from pipelines.loader import build_loader, resolve_device
from shards.bench.synth import GENRE_BANDS, class_of_signal

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
SR, SECONDS, TRACKS = 8000, 2.5, 13  # train split: 9 tracks (odd: uneven 2-rank shards), 3 chunks each


@pytest.fixture
def shards(synth_shards):
    return synth_shards(tracks=TRACKS, seconds=SECONDS, sample_rate=SR, shard_size_mb=0.1)


def make(shards, mode, device, *, rank=0, world_size=1, augment=None, features=None, **loader):
    fc, aug, lc = small_configs(**loader)
    return build_loader(
        shards,
        "train",
        mode=mode,
        features=features or fc,
        augment=augment or aug,
        loader=lc,
        rank=rank,
        world_size=world_size,
        device=device,
    )


def epoch(loader):
    return [{k: v.cpu() for k, v in b.items()} for b in loader]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("task", ["single", "multi", "hier"])
def test_shapes_and_dtypes(synth_shards, task, device):
    path = synth_shards(task=task, tracks=TRACKS, seconds=SECONDS, sample_rate=SR, shard_size_mb=0.1)
    train = make(path, "train", device)
    frames = 1 + SR // 128
    assert train.feature_shape == (3, 32, frames)
    batches = list(train)
    assert len(batches) == len(train) == 9 // 4  # 4 tracks x 2 chunks per batch, last partial dropped
    width = train.manifest.task.label_width
    for b in batches:
        assert b["x"].shape == (8, 3, 32, frames) and b["x"].dtype == torch.float32
        assert b["x"].device.type == device
        assert b["track"].shape == (8,) and b["track"].dtype == torch.int64
        if task == "single":
            assert b["y"].shape == (8,) and b["y"].dtype == torch.int64
        elif task == "multi":
            assert b["y"].shape == (8, width) and b["y"].dtype == torch.float32
        else:
            assert b["y"].shape == (8, width) and b["y"].dtype == torch.int64
        assert float(b["x"].min()) >= 0.0 and float(b["x"].max()) <= 1.0  # per-chunk min-max
    ev = list(make(path, "eval", device))
    assert sum(b["x"].shape[0] for b in ev) == 9 * math.ceil(SECONDS / 1.0)


@pytest.mark.parametrize("device", DEVICES)
def test_labels_follow_their_audio(shards, device):
    """y matches the class read back from the track's samples, and x shows that class's tone."""
    tracks = read_tracks(shards, "train")
    fc, _, _ = small_configs()
    fc = dataclasses.replace(fc, normalize="none")
    centres = mel_centres(fc)
    band_of_row = np.array(
        [int(np.argmin([abs(c - (lo + hi) / 2) for lo, hi in GENRE_BANDS])) for c in centres]
    )
    loader = make(shards, "train", device, features=fc, augment=AugmentConfig(enabled=False), batch_size=4)
    seen = 0
    for b in loader:
        mel_power = (10.0 ** (b["x"][:, 0].cpu() / 10.0)).mean(dim=2)  # (N, F)
        for y, tid, row in zip(b["y"].tolist(), b["track"].tolist(), mel_power.argmax(dim=1).tolist()):
            assert y == int(tracks[tid].label[0]) == class_of_signal(tracks[tid].signal, SR)
            assert band_of_row[row] == y, f"track {tid}: loudest mel row {row} is not in genre {y}'s band"
            seen += 1
    assert seen == 4 * 2 * 2  # 4 batches of 2 tracks x 2 chunks (9 tracks, last partial dropped)


@pytest.mark.parametrize("device", DEVICES)
def test_eval_covers_every_chunk_exactly_once(shards, device):
    fc, _, _ = small_configs()
    fc = dataclasses.replace(fc, normalize="none")
    loader = make(shards, "eval", device, features=fc)
    expected = {tid: math.ceil(SECONDS / 1.0) for tid in read_tracks(shards, "train")}
    for _ in range(2):  # and again next epoch
        batches = epoch(loader)
        assert len(batches) == len(loader) == math.ceil(9 / 3)
        assert Counter(t for b in batches for t in b["track"].tolist()) == expected
    # the last chunk is padded: 0.5 s of audio, then silence at the dB floor
    b = batches[0]
    last = b["x"][b["track"] == b["track"][0]][-1, 0]  # mel of the track's last chunk
    assert torch.allclose(last[:, -20:], torch.full_like(last[:, -20:], fc.db_floor), atol=1e-3)
    assert float(last[:, :2].max()) > fc.db_floor + 30


@pytest.mark.parametrize("device", DEVICES)
def test_train_chunks_are_random_and_k_per_track(shards, device):
    b = next(iter(make(shards, "train", device, augment=AugmentConfig(enabled=False))))
    assert b["track"].tolist()[::2] == b["track"].tolist()[1::2]  # K=2 consecutive chunks per track
    x = b["x"]
    assert not torch.equal(x[0], x[1])  # two different random offsets of the same track


@pytest.mark.parametrize("device", DEVICES)
def test_two_ranks_split_the_data(shards, device):
    ev = [epoch(make(shards, "eval", device, rank=r, world_size=2)) for r in range(2)]
    tracks = [Counter(t for b in e for t in b["track"].tolist()) for e in ev]
    assert not set(tracks[0]) & set(tracks[1])  # disjoint
    assert sorted(tracks[0] | tracks[1]) == list(range(9))  # complete
    assert sum(tracks[0].values()) + sum(tracks[1].values()) == 9 * 3  # no padded duplicates
    trains = [make(shards, "train", device, rank=r, world_size=2, batch_size=4) for r in range(2)]
    assert len(trains[0]) == len(trains[1]) == 2  # ceil(9/2)=5 tracks per rank, 2 per batch
    for _ in range(2):
        assert [len(epoch(t)) for t in trains] == [2, 2]


@pytest.mark.parametrize("device", DEVICES)
def test_masks_in_train_only(shards, device):
    plain = next(iter(make(shards, "train", device, augment=AugmentConfig(enabled=False))))["x"]
    masked = next(iter(make(shards, "train", device)))["x"]
    assert torch.equal(masked != 0, (masked != 0) & (plain != 0))  # masking only zeroes cells
    changed = (masked != plain).cpu()
    assert torch.equal(masked.cpu()[changed], torch.zeros(int(changed.sum())))
    zero = (masked == 0).all(dim=1).cpu()  # (N, F, T): cells zero in every channel
    rows, cols = zero.all(dim=2), zero.all(dim=1)
    assert int(rows.sum() + cols.sum()) > 0
    assert torch.equal(zero, rows[:, :, None] | cols[:, None, :])  # masks are full bands
    assert int(rows.sum(dim=1).max()) <= 2 * 6 and int(cols.sum(dim=1).max()) <= 2 * 8
    ev = next(iter(make(shards, "eval", device)))
    first = ev["x"][::3].cpu()  # first chunk of each track: all audio, never masked
    zero = (first == 0).all(dim=1)
    assert int(zero.all(dim=2).sum() + zero.all(dim=1).sum()) == 0


@pytest.mark.parametrize("device", DEVICES)
def test_same_seed_same_batches(shards, device):
    a, b = epoch(make(shards, "train", device, seed=3)), epoch(make(shards, "train", device, seed=3))
    c = epoch(make(shards, "train", device, seed=4))
    for p, q in zip(a, b):
        assert all(torch.equal(p[k], q[k]) for k in p)
    assert any(not torch.equal(p["x"], q["x"]) for p, q in zip(a, c))


@pytest.mark.parametrize("device", DEVICES)
def test_resume_mid_epoch(shards, device):
    ref = make(shards, "train", device, batch_size=4)
    want = epoch(ref) + epoch(ref)  # 4 + 4 batches over two epochs
    assert len(want) == 8
    src = make(shards, "train", device, batch_size=4)
    it = iter(src)
    got = [next(it), next(it)]
    buf = io.BytesIO()
    torch.save(src.state_dict(), buf)
    state = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
    resumed = make(shards, "train", device, batch_size=4)
    resumed.load_state_dict(state)
    rest = epoch(resumed)
    assert len(rest) == 2 and resumed.epoch == 1
    nxt = epoch(resumed)
    for p, q in zip([*got, *rest, *nxt], want):
        assert all(torch.equal(p[k].cpu(), q[k]) for k in p)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_resume_at_epoch_boundary(shards, device, mode):
    """A state saved at an epoch's last batch (inside the loop, as the trainer saves) resumes
    with that epoch's empty rest, then the next epoch, as the saved loader would have gone on;
    not with the next epoch's batches counted as this epoch's (train), nor an epoch of nothing
    (eval: every track looked already seen)."""
    ref = make(shards, mode, device, batch_size=4)
    first, want = epoch(ref), epoch(ref)
    src = make(shards, mode, device, batch_size=4)
    it = iter(src)
    for _ in first:
        next(it)
    buf = io.BytesIO()
    torch.save(src.state_dict(), buf)
    state = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
    assert list(it) == [] and src.epoch == 1  # the saved loader: nothing left in this epoch
    resumed = make(shards, mode, device, batch_size=4)
    resumed.load_state_dict(state)
    assert epoch(resumed) == [] and resumed.epoch == 1
    got = epoch(resumed)
    assert len(got) == len(want) > 0 and resumed.epoch == 2
    for p, q in zip(got, want):
        assert all(torch.equal(p[k], q[k]) for k in p)


def test_eval_len_is_what_each_rank_yields(shards):
    """9 tracks on 2 ranks: 4 + 5, i.e. 2 and 3 batches of 2 (DALI's own length is the larger)."""
    for rank, batches in enumerate([2, 3]):
        loader = make(shards, "eval", "cpu", rank=rank, world_size=2, eval_tracks_per_batch=2)
        assert len(loader) == len(epoch(loader)) == batches


def test_bare_cuda_device_follows_local_rank(monkeypatch):
    """Under torchrun, ``device="cuda"`` is ``cuda:LOCAL_RANK``, not every rank's current device 0."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert resolve_device("cuda") == torch.device("cuda", 1)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setenv("LOCAL_RANK", "3")  # e.g. one visible device per process
    assert resolve_device("cuda") == torch.device("cuda", 0)
    monkeypatch.delenv("LOCAL_RANK")
    assert resolve_device("cuda") == torch.device("cuda", 0)
