"""The sample plan as numbers (no DALI): shares met per epoch, draws keyed by the data, and a
resume on another rank count taking exactly the positions the uninterrupted run would take."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from pipelines.sample_plan import Catalog, Leg, PlanConfig, epoch_items, uniform


def catalog(classes: list[int], sources: list[int] | None = None, per_shard: int = 5) -> Catalog:
    n = len(classes)
    shard = np.arange(n) // per_shard
    src = np.zeros(n, np.int64) if sources is None else np.asarray(sources)
    return Catalog(source=src, shard=shard, uid=np.arange(n) + (src << 40), stratum_class=np.asarray(classes),
                   weight=np.ones(n), seconds=np.ones(n), shard_sizes=np.bincount(shard))  # fmt: skip


def imbalanced() -> Catalog:
    rng = np.random.default_rng(3)
    return catalog(list(rng.permutation(np.repeat(np.arange(4), [40, 20, 10, 5]))))


@pytest.mark.parametrize(("balance", "want"), [("none", [40, 20, 10, 5]), ("class", [19, 19, 19, 18]),
                                               ("sqrt", [29, 21, 15, 10])])  # fmt: skip
def test_every_epoch_meets_the_class_shares_exactly(balance: str, want: list[int]) -> None:
    cat = imbalanced()
    for epoch in range(4):
        items = epoch_items(cat, PlanConfig(seed=7, shuffle=True, balance=balance, block=16), epoch)  # type: ignore[arg-type]
        got = Counter(cat.stratum_class[items[:, 0]].tolist())
        assert len(items) == 75 and sorted(got.values(), reverse=True) == want
        if balance == "class":  # the minority class is visited ~4x per epoch, each visit distinct
            visits = Counter(map(tuple, items[cat.stratum_class[items[:, 0]] == 3].tolist()))
            assert max(visits.values()) == 1 and {v for _, v in visits} == {0, 1, 2, 3}


def test_weighted_builds_are_mixed_evenly_through_the_epoch() -> None:
    cat = catalog([-1] * 100, sources=[0] * 60 + [1] * 40)
    items = epoch_items(cat, PlanConfig(seed=1, shuffle=True, balance="none", block=16, shares=(3.0, 1.0)), 0)
    src = cat.source[items[:, 0]]
    assert (src == 0).sum() == 75
    assert all(abs((src[i : i + 20] == 0).mean() - 0.75) <= 0.1 for i in range(0, 100, 20))  # even


def test_the_epoch_order_changes_with_the_epoch_and_the_seed_but_not_the_rank_count() -> None:
    cat = imbalanced()
    cfg = PlanConfig(seed=1, shuffle=True, balance="none", block=16)
    a, b = epoch_items(cat, cfg, 0), epoch_items(cat, cfg, 1)
    assert sorted(a[:, 0].tolist()) == sorted(b[:, 0].tolist()) and not np.array_equal(a, b)
    assert not np.array_equal(
        a, epoch_items(cat, PlanConfig(seed=2, shuffle=True, balance="none", block=16), 0)
    )
    assert float(uniform(1, 0, 5, 0, 3)) == float(uniform(1, 0, 5, 0, 3)) != float(uniform(1, 0, 5, 0, 4))


def test_blocks_keep_the_reader_on_few_shards_at_a_time() -> None:
    cat = catalog([0] * 200, per_shard=10)
    items = epoch_items(cat, PlanConfig(seed=0, shuffle=True, balance="none", block=20), 0)
    shards = cat.shard[items[:, 0]]
    assert all(len(set(shards[i : i + 20].tolist())) <= 3 for i in range(0, 200, 20))


def consumed(legs: list[tuple[Leg, int]], batch: int) -> list[int]:
    """Positions each leg's ranks took, ``(leg, batches taken)`` in order."""
    out: list[int] = []
    for leg, taken in legs:
        for r in range(leg.world):
            out += leg.stream(r)[: taken * batch].tolist()
    return out


@pytest.mark.parametrize(
    ("first", "then", "n", "stop"), [(2, 1, 48, 3), (1, 2, 48, 4), (4, 3, 96, 2), (3, 2, 60, 1)]
)
def test_a_resume_on_another_rank_count_takes_the_rest_none_twice(
    first: int, then: int, n: int, stop: int
) -> None:
    batch = 4
    leg = Leg.whole(n, first)
    saved = Leg(leg.ranges, leg.world, stop)
    resumed = saved.regrouped(then, batch)
    got = consumed([(leg, stop), (resumed, resumed.batches(batch))], batch)
    assert len(got) == len(set(got))  # none twice
    whole = consumed([(leg, leg.batches(batch))], batch)
    tail = n - len(got)  # the last partial global batch: fewer than world x batch positions
    left = {p for r in range(then) for p in resumed.stream(r)[resumed.batches(batch) * batch :].tolist()}
    assert (
        tail < then * batch and set(range(n)) - set(got) == left
    )  # missed: only the streams' last partial batches
    if n % (first * batch) == 0 and (n - first * stop * batch) % (then * batch) == 0:
        assert set(got) == set(whole) == set(range(n))  # none missed


def test_a_resume_on_the_same_rank_count_continues_the_same_streams() -> None:
    leg = Leg.whole(50, 3)
    saved = Leg(leg.ranges, 3, 2)
    assert saved.regrouped(3, 4) is saved
    assert all(np.array_equal(saved.stream(r), leg.stream(r)) for r in range(3))
