"""Stage 6 of ``train.gpu_proof``: ``torchrun -m train``, SIGTERM mid-run, resume, compare.

Two one-rank ``torchrun`` runs start together on the same shards and config: one runs
uninterrupted to ``resume_steps``; the other gets SIGTERM on its launcher once its metrics show
``sigterm_after`` steps (torchrun forwards it; the trainer saves at the next step and returns),
then ``--checkpoint.resume=auto`` on the same folder continues it to the end. Under torchrun the
trainer joins a process group even with one rank, so on CUDA this is the NCCL + DDP code path.

Passed when: both end at the same step; the loader position in their final checkpoints is the
same (epoch, batch in epoch, the sample plan's position); the last logged learning rate is equal;
the final weights differ by at most ``WEIGHT_RTOL`` in relative L2 norm and the last logged
training loss by at most ``LOSS_RTOL`` relative; on CUDA, NCCL was initialised. The GPU profile
trains with ``--train.deterministic=true`` (deterministic cuDNN/cuBLAS kernels,
``CUBLAS_WORKSPACE_CONFIG`` set before the processes start), so 0 is expected on the GPU as on
the CPU. The tolerances remain for an op without a deterministic CUDA kernel (it warns, in the
logs), whose atomics round differently from run to run; the figures record the actual difference.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from train.gpu_proof.stages import Proc, StageFailed, StageTimeout, free_port, last_json
from train.logger import read_metrics

if TYPE_CHECKING:
    from train.gpu_proof.stages import Context

WEIGHT_RTOL = 1e-3
LOSS_RTOL = 1e-2
NCCL_VERSION = re.compile(r"NCCL version (\S+)")


def torchrun_cmd(ctx: Context, shards: Path, out: Path) -> list[str]:
    p = ctx.profile
    return [
        ctx.python, "-m", "torch.distributed.run", "--nproc_per_node=1", "--master_addr=127.0.0.1",
        f"--master_port={free_port()}", "-m", "train", "--config", p.config, f"--data.shards={shards}",
        "--data.val_split=''", f"--train.out={out}", f"--train.max_steps={p.resume_steps}", "--train.epochs=1000",
        f"--train.log_every={p.log_every}", f"--train.device={'cuda' if ctx.cuda else 'cpu'}",
        "--checkpoint.resume=auto", *p.overrides, *p.resume_overrides,
    ]  # fmt: skip


def logged_step(out: Path) -> int:
    """The last optimiser step in OUT/metrics.jsonl (0 before the first line)."""
    rows = [r for r in read_metrics(out) if "train/loss" in r]
    return int(rows[-1]["step"]) if rows else 0


def wait_for_step(proc: Proc, out: Path, step: int, deadline: float) -> int:
    while time.monotonic() < deadline:
        if proc.p.poll() is not None:
            raise StageFailed(
                f"{proc.label}: ended (status {proc.p.returncode}) before step {step}: {proc.err_tail()}"
            )
        try:
            seen = logged_step(out)
        except ValueError:  # a line being written
            seen = 0
        if seen >= step:
            return seen
        time.sleep(0.05)
    raise StageTimeout(f"{proc.label}: step {step} not reached within the budget")


def final_state(out: Path, step: int) -> dict[str, Any]:
    from train.checkpoint import read_checkpoint

    path = out / "checkpoints" / f"step_{step:08d}.pt"
    if not path.is_file():
        raise StageFailed(f"{path}: missing: the run did not save its final step")
    return read_checkpoint(path)


def position(state: dict[str, Any]) -> dict[str, Any]:
    loader = state["loader"]
    return {"step": state["step"], "epoch": state["epoch"], "batch_in_epoch": state["batch_in_epoch"],
            "loader_epoch": loader["epoch"], "loader_batch": loader["taken"]}  # fmt: skip


def last_logged(out: Path, step: int) -> dict[str, float]:
    rows = [r for r in read_metrics(out) if "train/loss" in r and r["step"] == step]
    if not rows:
        raise StageFailed(f"{out}/metrics.jsonl: no train/loss at step {step} (log_every must divide it)")
    return {"loss": float(rows[-1]["train/loss"]), "lr": float(rows[-1]["train/lr"])}


def compare(full: dict[str, Any], resumed: dict[str, Any], full_log: dict[str, float],
            resumed_log: dict[str, float]) -> dict[str, Any]:  # fmt: skip
    """The figures of the comparison and whether each criterion holds."""
    num = den = 0.0
    max_abs = 0.0
    for k, want in full["model"].items():
        got = resumed["model"][k]
        d = (got.double() - want.double()).flatten()
        num += float((d * d).sum())
        den += float((want.double() ** 2).sum())
        max_abs = max(max_abs, float(d.abs().max()) if d.numel() else 0.0)
    rel = math.sqrt(num) / max(math.sqrt(den), 1e-30)
    loss_rel = abs(resumed_log["loss"] - full_log["loss"]) / max(abs(full_log["loss"]), 1e-12)
    c = {
        "position_full": position(full),
        "position_resumed": position(resumed),
        "plan_position_equal": full["loader"] == resumed["loader"],
        "lr_full": full_log["lr"],
        "lr_resumed": resumed_log["lr"],
        "loss_full": full_log["loss"],
        "loss_resumed": resumed_log["loss"],
        "loss_rel_diff": loss_rel,
        "weights_rel_l2": rel,
        "weights_max_abs": max_abs,
        "tolerances": {"weights_rel_l2": WEIGHT_RTOL, "loss_rel_diff": LOSS_RTOL},
    }
    c["checks"] = {
        "same_step_and_loader_position": c["position_full"] == c["position_resumed"],
        "same_plan_position": c["plan_position_equal"],
        "same_lr": math.isclose(full_log["lr"], resumed_log["lr"], rel_tol=1e-9, abs_tol=0.0),
        "weights_within_tolerance": rel <= WEIGHT_RTOL,
        "loss_within_tolerance": loss_rel <= LOSS_RTOL,
    }
    return c


def run_resume_check(ctx: Context, stage: dict[str, Any], shards: Path, deadline: float) -> None:
    p = ctx.profile
    full_dir, cut_dir = ctx.work / "resume-full", ctx.work / "resume-cut"
    for d in (full_dir, cut_dir):
        shutil.rmtree(d, ignore_errors=True)
    env = (
        {"NCCL_DEBUG": "VERSION", "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
        if ctx.cuda
        else {"OMP_NUM_THREADS": "1"}
    )
    stage.update(steps=p.resume_steps, sigterm_after=p.sigterm_after, backend="nccl" if ctx.cuda else "gloo")
    procs: list[Proc] = []
    try:
        full = Proc(torchrun_cmd(ctx, shards, full_dir), "resume-full", ctx, env)
        cut = Proc(torchrun_cmd(ctx, shards, cut_dir), "resume-cut", ctx, env)
        procs += [full, cut]
        stage["signalled_at_logged_step"] = wait_for_step(cut, cut_dir, p.sigterm_after, deadline)
        os.kill(cut.p.pid, signal.SIGTERM)  # the launcher, as a scheduler's preemption does
        stage["cut_launcher_status"] = cut.wait(deadline)
        stop = last_json(cut.stdout(), "interrupted run")
        stage["stopped_at_step"] = stop["step"]
        if not stop.get("stopped") or stop["step"] >= p.resume_steps:
            raise StageFailed(f"the interrupted run did not stop mid-run: {stop}")
        t0 = time.monotonic()
        resumed = Proc(torchrun_cmd(ctx, shards, cut_dir), "resume-resumed", ctx, env)
        procs.append(resumed)
        end = last_json(resumed.check(deadline), "resumed run")
        stage["resume_s"] = round(time.monotonic() - t0, 1)
        done = last_json(full.check(deadline), "uninterrupted run")
    finally:
        for proc in procs:
            if proc.p.poll() is None:
                proc.stop()
    if done["step"] != p.resume_steps or end["step"] != p.resume_steps or end.get("stopped"):
        raise StageFailed(f"final steps: uninterrupted {done}, resumed {end}; want {p.resume_steps}")
    n = p.resume_steps
    stage["comparison"] = c = compare(
        final_state(full_dir, n), final_state(cut_dir, n), last_logged(full_dir, n), last_logged(cut_dir, n)
    )
    if ctx.cuda:
        text = full.err_path.read_text(errors="replace") + full.out_path.read_text(errors="replace")
        seen = NCCL_VERSION.search(text)
        stage["nccl_version"] = seen.group(1) if seen else None
        c["checks"]["nccl_initialised"] = seen is not None
    stage["passed"] = all(c["checks"].values())
    if not stage["passed"]:
        raise StageFailed(f"resume check failed: {[k for k, v in c['checks'].items() if not v]}")
