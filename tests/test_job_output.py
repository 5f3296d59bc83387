"""A finished run is a job's whole story: its log holds each warning once (not once per rank), and
a run that stops inside an epoch (``train.max_steps``, SIGTERM) validates once more, so best.pt
and the last step file agree and ``python -m eval`` has a best.pt to evaluate."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from eval.validation import validator
from shards.base.progress import ENV_INTERVAL, ENV_MODE
from train.checkpoint import read_checkpoint
from train.logger import read_metrics
from train.synthetic import synthetic_experiment
from train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
LONGEST = 400
SMALL = [
    "--loader.batch_size=8", "--loader.chunks_per_track=2", "--loader.num_threads=1",
    "--loader.eval_tracks_per_batch=4", "--loader.initial_fill=8", "--train.device=cpu",
    "--train.threads=1", "--model.family=customcnn", "--model.preset=tiny",
]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_to_file(cmd: list[str], log: Path, timeout: int = 300) -> str:
    """Run with stdout and stderr in one file (a SLURM job's output), a progress line per update
    (interval 0 s); returns the file's text."""
    env = {k: v for k, v in os.environ.items() if k != ENV_MODE}
    env |= {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", ENV_INTERVAL: "0"}
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=f, timeout=timeout)
    text = log.read_text()
    assert proc.returncode == 0, text[-4000:]
    assert "\r" not in text and not [line[:80] for line in text.splitlines() if len(line) > LONGEST]
    return text


def _best_step(rows: list[dict], metric: str) -> tuple[int, float]:
    """(step, value) of the first best validation score: what best.pt must hold."""
    val = [(r["step"], r[f"val/{metric}"]) for r in rows if f"val/{metric}" in r]
    best = max(v for _, v in val)
    return next((s, v) for s, v in val if v == best)


@pytest.mark.slow
def test_two_rank_job_logs_each_warning_once_and_eval_reads_its_best(
    synth_shards: Callable[..., Path], tmp_path: Path
) -> None:
    """2 gloo ranks, 2 batches per epoch each, max_steps=3: epoch 1 ends at step 2, the run stops
    inside epoch 2 and validates once more. Three warnings that every rank hits (bf16 on CPU,
    drop_path on customcnn, shards at 22050 Hz read at 16000 Hz) appear once each, rank 0's."""
    shards = synth_shards()  # 16 training tracks at 22050 Hz: 8 per rank = 2 batches of 4 tracks
    run, report = tmp_path / "run", tmp_path / "report"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}", "-m", "train", "--config", str(ROOT / "configs" / "demo_customcnn.toml"),
        f"--data.shards={shards}", f"--train.out={run}", "--train.epochs=5", "--train.max_steps=3",
        "--train.amp=bf16", "--model.drop_path=0.1", "--train.log_every=1", *SMALL,
    ]  # fmt: skip
    text = _run_to_file(cmd, tmp_path / "train.log")
    warnings = [line for line in text.splitlines() if "warning:" in line]
    assert len(warnings) == 3, text[-4000:]
    for needle in (
        "train.amp='bf16' has no effect on CPU",
        "drop_path has no effect",
        "shards are at 22050 Hz",
    ):
        assert sum(needle in line for line in warnings) == 1, (needle, warnings)
    lines = text.splitlines()
    epochs = [line.split(", ")[0] for line in lines if line.startswith("epoch ") and " batch (" in line]
    assert epochs == [
        "epoch 1/5: 1/2 batch (50%)",
        "epoch 1/5: 2/2 batch (100%)",
        "epoch 2/5: 1/2 batch (50%)",
    ]
    assert all("loss=" in line and "lr=" in line for line in lines if line.startswith("epoch 1/5: 2/2"))
    assert [line.split(":")[0] for line in lines if "track/accuracy=" in line] == [
        "epoch 1/5, step 2",
        "epoch 1.5/5, step 3",
    ]
    assert "[rank 1]" not in text  # rank 0 speaks for the job
    assert json.loads(text[text.index("{\n") :])["step"] == 3  # the summary, indented: short lines

    rows = read_metrics(run)
    assert [r["step"] for r in rows if "val/track/accuracy" in r] == [2, 3]  # epoch end + the stop
    step, value = _best_step(rows, "track/accuracy")
    best, last = (
        read_checkpoint(run / "checkpoints" / "best.pt"),
        read_checkpoint(run / "checkpoints" / "step_00000003.pt"),
    )
    assert best["step"] == step and best["best"] == last["best"] == value
    assert last["batch_in_epoch"] == 1 and last["metrics"]["track/accuracy"] == rows[-2]["val/track/accuracy"]

    text = _run_to_file(
        [sys.executable, "-m", "eval", "--checkpoint", str(run / "checkpoints" / "best.pt"), "--shards",
         str(shards), "--split", "validation", "--out", str(report), "--eval.device=cpu"],
        tmp_path / "eval.log",
    )  # fmt: skip
    warnings = [line for line in text.splitlines() if "warning:" in line]  # the checkpoint's config's two
    assert len(warnings) == 2 and "shards are at 22050 Hz" in warnings[1] and "drop_path" in warnings[0]
    metrics = next(iter(json.loads((report / "metrics.json").read_text())["models"].values()))["metrics"]
    assert metrics["track/accuracy"] == pytest.approx(value, abs=1e-6)  # what validation measured
    assert metrics["track/count"] == rows[-2]["val/track/count"] == 4


@pytest.mark.parametrize("how", ["max_steps", "sigterm"])
def test_a_run_stopped_inside_an_epoch_validates_once_more(tmp_path: Path, how: str) -> None:
    """5 batches per epoch; the run stops after 7 steps (epoch 2, batch 2) by max_steps, or by
    SIGTERM: epoch 1's validation plus one at the stop; best.pt and the last step file agree."""
    extra = ["data.val_split=validation", "data.synthetic_batches=5", "data.synthetic_batch_size=8",
             "train.epochs=3", "train.threads=2", "data.synthetic_signal=1.0"]  # fmt: skip

    def preempt(trainer: Trainer) -> None:
        if trainer.step == 7:
            os.kill(os.getpid(), signal.SIGTERM)

    extra += ["train.max_steps=7"] if how == "max_steps" else []
    trainer = Trainer(
        synthetic_experiment(tmp_path, extra),
        validate=validator(),
        hooks=[preempt] if how == "sigterm" else [],
    )
    result = trainer.train()
    trainer.close()
    assert result["step"] == 7 and result["stopped"] == (how == "sigterm")
    rows = read_metrics(tmp_path)
    assert [(r["step"], r["epoch"]) for r in rows if "val/track/accuracy" in r] == [(5, 1), (7, 1)]
    step, value = _best_step(rows, "track/accuracy")
    files = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert files == ["best.pt", "step_00000005.pt", "step_00000007.pt"]
    best, last = (read_checkpoint(tmp_path / "checkpoints" / f) for f in ("best.pt", "step_00000007.pt"))
    assert best["step"] == step and best["best"] == last["best"] == value
    assert last["metrics"] == result["metrics"] and last["batch_in_epoch"] == 2
