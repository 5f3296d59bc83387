"""Stop agreement across ranks: posted asynchronously, read one step later, the same on every rank."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch.multiprocessing as mp

from train.stopping import StopSignal


def _rank(rank: int, store: str, out: str) -> None:
    import time

    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    stop, marks = StopSignal(distributed=True), Path(out)
    answers = []
    for step in range(1, 5):
        if rank == 1 and step == 1:
            time.sleep(3.0)  # rank 1 is late for step 1: rank 0 must not wait for it there
            (marks / "rank1-posted-step1").touch()
        if rank == 1 and step == 2:
            stop.requested = True  # the signal handler's effect, during step 2
        answers.append(stop.agreed())
        if rank == 0 and step == 1:
            answers.append((marks / "rank1-posted-step1").exists())
    answers.append(stop.settle())
    (marks / f"rank{rank}.json").write_text(json.dumps(answers))
    dist.destroy_process_group()


@pytest.mark.slow
def test_ranks_agree_one_step_later_without_waiting(tmp_path: Path) -> None:
    mp.spawn(_rank, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    rank0 = json.loads((tmp_path / "rank0.json").read_text())
    rank1 = json.loads((tmp_path / "rank1.json").read_text())
    # rank 0 answered step 1 before rank 1 had even posted it: no barrier at the posting step
    assert rank0[1] is False
    del rank0[1]
    # step 2's signal (rank 1 only) is every rank's answer at step 3, and stays agreed after
    assert rank0 == rank1 == [False, False, True, True, True]


def test_one_process_agrees_at_once() -> None:
    stop = StopSignal(distributed=False)
    assert not stop.agreed() and not stop.settle()
    stop.requested = True
    assert stop.agreed() and not stop.settle()  # nothing is ever in flight
