"""The loader's pipeline lifecycle (built on first use, eval shut down after each pass, close),
the hand-off lease and channels-last x, on DALI's CPU pipeline (the filter banks' float32:
tests/test_precision.py)."""

from __future__ import annotations

import io

import pytest
import torch

from pipelines.bench.small import small_configs
from pipelines.handoff import BufferLease
from pipelines.loader import build_loader

SR, SECONDS, TRACKS = 8000, 2.5, 13  # train split: 9 tracks


@pytest.fixture
def shards(synth_shards):
    return synth_shards(tracks=TRACKS, seconds=SECONDS, sample_rate=SR, shard_size_mb=0.1)


def make(shards, mode, **kw):
    rank, world = kw.pop("rank", 0), kw.pop("world_size", 1)
    channels_last = kw.pop("channels_last", False)
    fc, aug, lc = small_configs(**kw)
    return build_loader(shards, "train", mode=mode, features=fc, augment=aug, loader=lc, rank=rank,
                        world_size=world, device="cpu", channels_last=channels_last)  # fmt: skip


def test_no_pipeline_before_first_use_and_none_built_for_a_resume(shards):
    src = make(shards, "train", batch_size=4)
    assert src._dali is None and len(src) == 4  # len from the manifest: no pipeline for it
    it = iter(src)
    first = next(it)
    assert src._dali is not None
    buf = io.BytesIO()
    torch.save(src.state_dict(), buf)
    resumed = make(shards, "train", batch_size=4)
    resumed.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    assert resumed._dali is None  # nothing built (and prefetched) only to be replaced
    assert resumed.state_dict() == src.state_dict()  # the pending position, as saved
    assert torch.equal(next(iter(resumed))["x"], next(it)["x"]) and not torch.equal(first["x"], next(it)["x"])


@pytest.mark.parametrize(("world_size", "batch_size"), [(1, 4), (1, 8), (2, 4), (3, 2)])
def test_train_len_from_the_manifest_is_the_plans(shards, world_size, batch_size):
    """Every rank yields the plan's whole batches of its stream: (samples // world) // tracks."""
    for rank in range(world_size):
        loader = make(shards, "train", rank=rank, world_size=world_size, batch_size=batch_size)
        want = (loader.samples // world_size) // loader.spec.loader.tracks_per_batch
        assert len(loader) == want == sum(1 for _ in loader) == sum(1 for _ in loader)


def test_eval_pipeline_is_shut_down_after_each_pass(shards):
    loader = make(shards, "eval")
    a = [b["x"] for b in loader]
    assert loader._dali is None and len(loader.lease) == 0  # nothing resident between validations
    b = [b["x"] for b in loader]
    assert len(a) == len(b) == 3 and all(torch.equal(p, q) for p, q in zip(a, b))


def test_close_then_continue_training_from_the_position(shards):
    ref = make(shards, "train", batch_size=4)
    want = [b["x"] for b in ref] + [b["x"] for b in ref]
    loader = make(shards, "train", batch_size=4)
    got = [b["x"] for b in loader]
    loader.close()
    assert loader._dali is None
    got += [b["x"] for b in loader]
    assert len(got) == 8 and all(torch.equal(p, q) for p, q in zip(got, want))


def test_x_is_allocated_channels_last_with_the_same_values(shards):
    plain = next(iter(make(shards, "eval")))["x"]
    cl = next(iter(make(shards, "eval", channels_last=True)))["x"]
    assert cl.is_contiguous(memory_format=torch.channels_last) and not cl.is_contiguous()
    assert torch.equal(plain, cl)
    assert cl.contiguous(memory_format=torch.channels_last) is cl  # the trainer's conversion: a no-op


def test_lease_is_a_no_op_on_the_cpu():
    lease = BufferLease(torch.device("cpu"), depth=2)
    for _ in range(5):
        lease.hold({"mel": torch.zeros(3)})
    assert len(lease) == 0 and lease.waits == 0
    with pytest.raises(ValueError, match="depth"):
        BufferLease(torch.device("cpu"), depth=0)


def test_a_position_from_another_graph_version_restarts_its_epoch(shards):
    """A loader state saved by another layout (no "graph" key: a DALI checkpoint of the first
    graph) restarts its epoch, with a warning, instead of being fed to this loader."""
    src = make(shards, "train", batch_size=4)
    it = iter(src)
    next(it)
    state = src.state_dict()
    assert state["graph"] == 3
    old = {k: v for k, v in state.items() if k != "graph"}
    resumed = make(shards, "train", batch_size=4)
    with pytest.warns(UserWarning, match="graph version 1 .* restarts from its beginning"):
        resumed.load_state_dict(old)
    fresh = make(shards, "train", batch_size=4)
    assert resumed.epoch == src.epoch
    assert torch.equal(next(iter(resumed))["x"], next(iter(fresh))["x"])
