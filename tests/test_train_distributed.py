"""shards.base.distributed: device choice and SLURM rendezvous without a GPU (monkeypatched CUDA)."""

from __future__ import annotations

import pytest
import torch

from shards.base import distributed


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    chosen: list[int] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: chosen.append(int(i)))
    return chosen


def test_local_rank_picks_its_gpu(fake_cuda: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    assert distributed.pick_device("auto", 3) == torch.device("cuda", 3)
    assert fake_cuda == [3]  # set before the process group starts


def test_one_visible_gpu_per_task_is_used_whatever_the_local_rank(
    fake_cuda: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert distributed.pick_device("cuda", 5) == torch.device("cuda", 0)


def test_more_processes_than_gpus_is_a_clear_error(
    fake_cuda: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ValueError, match="local rank 4 has no GPU"):
        distributed.pick_device("auto", 4)


def _slurm(monkeypatch: pytest.MonkeyPatch, **env: str) -> None:
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_JOB_NUM_NODES"):
        monkeypatch.setenv(k, "x")  # recorded, so whatever rendezvous_env writes is undone
        monkeypatch.delenv(k)
    for k, v in env.items():
        monkeypatch.setenv(k, v)


def test_slurm_env_fills_rank_even_when_master_addr_is_exported(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    _slurm(monkeypatch, SLURM_PROCID="3", SLURM_NTASKS="4", SLURM_LOCALID="3", MASTER_ADDR="node01")
    assert distributed.env_rank() == (3, 4, 3)
    distributed.rendezvous_env(3, 4)
    assert (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["MASTER_ADDR"]) == ("3", "4", "node01")
    assert os.environ["MASTER_PORT"] == "29500"


def test_multi_node_slurm_without_master_addr_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    _slurm(monkeypatch, SLURM_PROCID="0", SLURM_NTASKS="16", SLURM_JOB_NUM_NODES="2")
    with pytest.raises(ValueError, match="export MASTER_ADDR"):
        distributed.rendezvous_env(0, 16)


def test_cuda_rng_is_saved_and_restored_for_this_ranks_device_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """8 visible GPUs, rank on cuda:2: the checkpoint holds cuda:2's state and a resume sets it
    on the current device; an older all-devices list is indexed by the current device."""
    from train.checkpoint import rng_state, set_rng_state

    restored: list[tuple[int, int]] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": torch.tensor([int(device)]))
    monkeypatch.setattr(
        torch.cuda, "set_rng_state", lambda t, device="cuda": restored.append((int(t), device))
    )
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [torch.tensor([i]) for i in range(8)])
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: pytest.fail("sets every device"))
    state = rng_state()
    assert [int(t) for t in state["cuda"]] == [2]
    set_rng_state(state)
    state["cuda"] = [torch.tensor([i]) for i in range(8)]  # pre-fix format
    set_rng_state(state)
    assert restored == [(2, 2), (2, 2)]


def test_ranks_share_the_init_but_not_the_dropout_stream(tmp_path) -> None:  # noqa: ANN001
    from eval.validation import validator
    from shards.base.distributed import DistInfo
    from train.synthetic import synthetic_experiment
    from train.trainer import Trainer

    draws, weights = [], []
    for rank in (0, 1):
        info = DistInfo(rank=rank, world_size=1, local_rank=0, device=torch.device("cpu"))
        exp = synthetic_experiment(tmp_path / str(rank), ["checkpoint.resume=none"])
        trainer = Trainer(exp, info=info, validate=validator())
        weights.append(trainer.model.stem[0].weight.clone())
        draws.append(torch.rand(4))
        trainer.close()
    assert torch.equal(weights[0], weights[1])
    assert not torch.equal(draws[0], draws[1])


def test_torchrun_with_one_rank_joins_a_process_group(monkeypatch) -> None:  # noqa: ANN001
    """A 1-GPU torchrun run takes the N-rank path (NCCL there, gloo here; DDP, collectives)."""
    import socket

    import torch.distributed as dist

    from shards.base.distributed import close, init

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for k, v in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                 "MASTER_PORT": str(port)}.items():  # fmt: skip
        monkeypatch.setenv(k, v)
    info = init("cpu")
    try:
        assert info.distributed and info.world_size == 1
        assert dist.is_initialized() and dist.get_backend() == "gloo"
    finally:
        close()
    monkeypatch.delenv("MASTER_ADDR")  # RANK/WORLD_SIZE alone (no rendezvous): one plain process
    assert not init("cpu").distributed and not dist.is_initialized()
