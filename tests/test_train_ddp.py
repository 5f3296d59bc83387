"""Two gloo ranks under torchrun stay in step and end with identical weights."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from train.logger import read_metrics

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args: list[str], *, nproc: int = 2, timeout: int = 240) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
        "--master_addr=127.0.0.1", f"--master_port={_free_port()}", "-m", "train", *args,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def test_two_ranks_end_with_identical_weights(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = torchrun(
        [
            "--data.synthetic=true", "--data.val_split=validation", "--data.synthetic_batches=4",
            "--data.synthetic_batch_size=8", "--data.synthetic_signal=1.0", "--model.family=customcnn",
            "--model.preset=tiny", "--model.dropout=0.2", "--train.amp=none", "--train.epochs=2",
            "--train.device=cpu", "--train.log_every=1", f"--train.out={out}",
            "--optim.grad_accum=3",  # 4 batches: groups (0,1,2) (3): the partial one must all-reduce too
        ]
    )  # fmt: skip
    result = json.loads(proc.stdout)  # rank 0 prints the summary (and nothing else on stdout)
    assert result["step"] == 4 and result["epoch"] == 2
    rows = read_metrics(out)
    sync = [r for r in rows if "sync/max_diff" in r][-1]
    assert len(sync["sync/fingerprints"]) == 2
    assert sync["sync/max_diff"] == 0.0
    assert sync["sync/fingerprints"][0] != 0.0
    # validation saw every synthetic validation track once across both ranks
    val = [r for r in rows if "val/track/count" in r][-1]
    assert val["val/track/count"] == 2 * 2 * 4  # ranks x batches x tracks per batch
    ckpt = torch.load(out / "checkpoints" / "step_00000004.pt", weights_only=True)
    assert (
        len(ckpt["rng"]) == 2 and ckpt["loader"]["epoch"] == 2 and ckpt["world_size"] == 2
    )  # one plan position


@pytest.mark.slow
def test_two_ranks_gbm_extracts_everywhere_fits_once(tmp_path: Path) -> None:
    out = tmp_path / "gbm"
    torchrun(
        [
            "--data.synthetic=true", "--data.val_split=validation", "--data.synthetic_batches=6",
            "--data.synthetic_signal=1.0", "--model.family=gbm",
            "--model.kwargs={pca_components = 8, rounds = 30}", "--train.device=cpu", "--train.threads=1",
            f"--train.out={out}",
        ]
    )  # fmt: skip
    row = [r for r in read_metrics(out) if "gbm/samples" in r][-1]
    assert row["gbm/samples"] == 2 * 6 * 16  # both ranks' chunks reached rank 0
    assert row["val/track/accuracy"] > 0.6


SIGTERM_ONE_RANK = """
import json, os, signal, sys
from train.synthetic import synthetic_experiment
from train.trainer import Trainer

def preempt(trainer):
    if trainer.info.rank == 1 and trainer.step == 2:
        os.kill(os.getpid(), signal.SIGTERM)

exp = synthetic_experiment(sys.argv[1], ["data.synthetic_batches=4", "data.synthetic_batch_size=8",
                                         "train.epochs=2", "train.log_every=10"])
trainer = Trainer(exp, hooks=[preempt])
result = trainer.train()
trainer.close()
# a file per rank: two ranks printing to one pipe can interleave their lines
with open(os.path.join(sys.argv[1], f"result-{trainer.info.rank}.json"), "w") as f:
    json.dump({"rank": trainer.info.rank, **result}, f)
"""


def test_sigterm_on_one_rank_stops_every_rank_at_the_next_step(tmp_path: Path) -> None:
    """Only rank 1 is signalled, at step 2 (log_every is 10): its flag, posted asynchronously at
    step 2, is read by both ranks at step 3 (no host barrier per step), where both save and
    return stopped, with no deadlock."""
    script = tmp_path / "preempt.py"
    script.write_text(SIGTERM_ONE_RANK)
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}", str(script), str(tmp_path / "run"),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = [json.loads(p.read_text()) for p in sorted((tmp_path / "run").glob("result-*.json"))]
    assert sorted(r["rank"] for r in rows) == [0, 1]
    assert all(r["stopped"] and r["step"] == 3 for r in rows), rows
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step_00000003.pt"]
