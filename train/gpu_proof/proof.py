"""``python -m train.gpu_proof`` (``make gpu-proof``): the GPU path proved in one run that fits a lease.

A device lease is 15 minutes in all, with no time to improvise, so the whole check is prepared
here and dry-run on CPU by the test suite (``--device cpu``: tiny sizes). Stages, in order of
value, each run as subprocesses under its own time budget (a stage that overruns is stopped and
the next one still runs):

0. ``preflight``: versions, and one DALI ``fn.spectrogram`` on the device
   (``train.gpu_proof.preflight``): a missing library is one line, and every later stage skips;
1. ``handoff``: ``python -m pipelines.bench.handoff``, one subprocess per case (audio first):
   every batch of the audio and image loaders read behind a delayed torch stream equals a
   synchronised reference with the hand-off lease; without it, the control must show the hazard
   on a GPU (escalated if not, else the case is ``inconclusive``); ``train.gpu_proof.handoff``;
2. ``gpu_tests``: ``pytest -m "gpu and not slow"`` (DALI gpu vs cpu parity, training draws, the
   loader contract on CUDA, the device-memory bound, TF32, AMP steps); figures that tests record
   (``record_property``) are collected from their JUnit XML;
3. ``shards``: the PCM bench shards, built once for stages 4-6;
4. ``pipeline_bench``: ``python -m pipelines.bench`` on them: DALI gpu vs DALI
   cpu vs the torchaudio DataLoader, in one process (chunks/s, CPU cores busy, device memory);
5. ``input_bound``: ``train.stepbench`` per family: real loader vs GPU-resident
   synthetic batches (``vs_synthetic``), bf16 + channels_last;
6. ``resume``: ``torchrun`` (one rank; NCCL on CUDA), SIGTERM mid-run, ``--checkpoint.resume=auto``
   to the end, compared with an uninterrupted run (``train.gpu_proof.resume``), deterministic kernels;
7. ``pipeline_bench_flac``: stage 4 on FLAC shards, when time is left.

``--plan`` prints each stage's budget (``{"total_budget_s": N, "stages": {NAME: {"budget_s": n}}}``)
and runs nothing: the budgets sum to at most N - ``RESERVE_S``.

Writes ``OUT/gpu-proof.json`` (every figure, per-stage status, seconds and budget; rewritten
atomically after every stage, so a killed run still leaves what finished), ``OUT/gpu-proof.md``
(the block for docs/benchmarks.md), and each subprocess's output in ``WORK/logs/``. Imports no model code: it runs from the
source tree with any Python that has torch and DALI (the device machine's python3, no install).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shards.base.atomic import atomic_write_text
from shards.base.errors import CliParser
from train.gpu_proof.stages import NEEDS, ROOT, RUNNERS, Context, StageFailed, StageTimeout

REQUIRED = ("torch", "torchaudio", "nvidia.dali", "webdataset", "soundfile", "soxr", "timm", "pytest", "tqdm")
RESERVE_S = 15.0  # kept back from the total: the last writes, and the caller's copy of the files
MIN_STAGE_S = 20.0  # a stage is not started with less than this left
STAGES = ("preflight", "handoff", "gpu_tests", "shards", "pipeline_bench", "input_bound", "resume",
          "pipeline_bench_flac")  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class Profile:
    """Sizes of one run: ``gpu`` (the lease) or ``cpu`` (the dry run in the test suite)."""

    device: str
    tracks: int
    """Tracks in the benchmark shards (``distinct`` synthesised, the rest hard links to them)."""
    distinct: int
    seconds: float
    sample_rate: int
    flac_tracks: int
    """Tracks in the FLAC shards of stage 5; 0 skips it."""
    config: str
    """Experiment TOML whose [features] [augment] [loader] (and [model] [optim] [train]) every stage uses."""
    overrides: tuple[str, ...]
    workers: int
    """Baseline DataLoader workers = DALI num_threads in stage 2."""
    bench_warmup: int
    bench_batches: int
    families: tuple[str, ...]
    step_warmup: int
    step_batches: int
    resume_steps: int
    sigterm_after: int
    """SIGTERM the interrupted run once its metrics show this step."""
    log_every: int
    resume_overrides: tuple[str, ...]
    budgets: dict[str, float] = field(default_factory=dict)
    total_s: float = 430.0


# The lease: 430 s, 15 kept back; the budgets sum to 415, most valuable first. The bench shards are
# 640 x 30 s pcm16 (0.85 GB written and hashed once, in a stage of their own, then reused by the
# bench, the input-bound check and the resume check: a bench overrun no longer costs them).
GPU = Profile(
    device="gpu", tracks=640, distinct=64, seconds=30.0, sample_rate=22050, flac_tracks=96,
    config="configs/fma_small_efficientnet_b2.toml", overrides=(), workers=16,
    bench_warmup=3, bench_batches=30,
    families=("efficientnet_b2", "customcnn"), step_warmup=5, step_batches=25,
    resume_steps=80, sigterm_after=40, log_every=10,
    resume_overrides=("--model.family=customcnn", "--model.preset=small", "--model.drop_path=0.0",
                      "--train.amp=none", "--optim.warmup_steps=20", "--train.deterministic=true"),
    budgets={"preflight": 20, "handoff": 70, "gpu_tests": 90, "shards": 35, "pipeline_bench": 60,
             "input_bound": 55, "resume": 55, "pipeline_bench_flac": 30},
    total_s=430.0,
)  # fmt: skip


def cpu_profile() -> Profile:
    """The dry run: the test suite's tiny pipeline settings (pipelines.bench.small: 8 kHz, 1 s chunks,
    (3, 32, 63) per chunk), customcnn tiny, 30 steps; imported once the modules are checked."""
    from pipelines.bench.small import small_overrides

    tiny = small_overrides(batch_size=8, chunks_per_track=2, eval_tracks_per_batch=4, initial_fill=8)
    return Profile(
        device="cpu", tracks=24, distinct=12, seconds=3.0, sample_rate=8000, flac_tracks=0,
        config="configs/demo_customcnn.toml", overrides=tuple(tiny), workers=1, bench_warmup=1, bench_batches=3,
        families=("customcnn",), step_warmup=1, step_batches=3, resume_steps=30, sigterm_after=4, log_every=1,
        resume_overrides=("--train.amp=none", "--train.threads=1", "--optim.warmup_steps=2"),
        budgets={"preflight": 30, "handoff": 120, "gpu_tests": 90, "shards": 40, "pipeline_bench": 90,
                 "input_bound": 120, "resume": 180, "pipeline_bench_flac": 0},
        total_s=720.0,  # a loaded 2-core CI box: each torchrun start alone can take 20 s there
    )  # fmt: skip


def plan(profile: Profile, names: list[str]) -> dict[str, Any]:
    """Each stage's budget when every earlier one uses all of its own: what ``run_stage`` grants
    at worst (0: the stage would not start). The budgets sum to at most the total less ``RESERVE_S``."""
    left, stages = profile.total_s - RESERVE_S, {}
    for name in names:
        budget = min(profile.budgets.get(name, 0.0), max(left, 0.0))
        budget = budget if budget >= MIN_STAGE_S else 0.0
        stages[name] = {"budget_s": float(budget)}
        left -= budget
    return {"total_budget_s": profile.total_s, "stages": stages}


def run_stage(ctx: Context, name: str, t_end: float) -> None:
    budget = ctx.profile.budgets.get(name, 0.0)
    left = t_end - time.monotonic() - RESERVE_S
    need, gate = NEEDS.get(name), ctx.doc["stages"].get("preflight", {"status": "ok"})
    stage: dict[str, Any] = {"status": "skipped", "budget_s": round(min(budget, max(left, 0.0)), 1)}
    ctx.doc["stages"][name] = stage
    if budget <= 0:
        stage["reason"] = "not in this profile"
    elif gate["status"] in ("failed", "error", "timeout"):
        stage["reason"] = f"preflight {gate['status']}: {str(gate.get('error', ''))[:300]}"
    elif need and "shards" not in ctx.doc["stages"].get(need, {}):
        stage["reason"] = f"no shards: stage {need} did not build them"
    elif left < MIN_STAGE_S:
        stage["reason"] = f"out of time ({left:.0f} s left)"
    else:
        stage["status"] = "running"
        ctx.save()
        t0 = time.monotonic()
        try:
            RUNNERS[name](ctx, stage, t0 + min(budget, left))
            stage["status"] = "inconclusive" if stage.get("inconclusive") else "ok"
        except StageTimeout as e:
            stage["status"], stage["error"] = "timeout", str(e)
        except StageFailed as e:
            stage["status"], stage["error"] = "failed", str(e)[-2000:]
        except Exception as e:  # noqa: BLE001  # an orchestrator bug in one stage must not lose the next ones
            stage["status"], stage["error"] = "error", f"{type(e).__name__}: {e}"
        stage["seconds"] = round(time.monotonic() - t0, 1)
    print(f"gpu-proof: {name}: {stage['status']} ({stage.get('seconds', 0)} s) {stage.get('error', stage.get('reason', ''))[:300]}",
          file=sys.stderr, flush=True)  # fmt: skip
    ctx.save()


def machine_info(cuda: bool) -> dict[str, Any]:
    """This machine in words; the GPU from nvidia-smi, so this process never holds a CUDA context
    (it would take device memory beside the stages' own for the whole run)."""
    import torch

    m: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(),
                         "cpu_count": os.cpu_count(), "torch": torch.__version__}  # fmt: skip
    if cuda and shutil.which("nvidia-smi"):
        q = ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"]
        line = subprocess.run(q, capture_output=True, text=True, timeout=30).stdout.strip().splitlines()
        if line:
            m["gpu"], m["gpu_memory"], m["driver"] = (v.strip() for v in line[0].split(",")[:3])
    return m


def missing_modules() -> list[str]:
    """Of ``REQUIRED``, those this Python cannot import (checked before any stage starts)."""
    return [
        m
        for m in REQUIRED
        if importlib.util.find_spec(m.split(".")[0]) is None or importlib.util.find_spec(m) is None
    ]


def parse_args(argv: list[str] | None) -> tuple[CliParser, argparse.Namespace]:
    ap = CliParser(prog="python -m train.gpu_proof", description=__doc__.splitlines()[0])
    ap.add_argument(
        "--device", choices=("gpu", "cpu"), default="gpu", help="gpu: the lease; cpu: tiny dry run"
    )
    ap.add_argument(
        "--out",
        type=Path,
        default=Path("/tmp/musicstream-gpu-proof"),
        help="gpu-proof.json and gpu-proof.md only",
    )
    ap.add_argument("--work", type=Path, help="shards, runs and logs/ (default OUT-work, beside OUT)")
    ap.add_argument("--total", type=float, help="seconds for the whole run (default: the profile's)")
    ap.add_argument("--stages", default=",".join(STAGES), help="comma list of " + ", ".join(STAGES))
    ap.add_argument("--plan", action="store_true", help="print each stage's budget as JSON; run nothing")
    return ap, ap.parse_args(argv)


def resolve(ap: CliParser, args: argparse.Namespace) -> tuple[Profile, list[str]]:
    """The profile (``--total``, workers capped at this machine's CPUs) and the stages to run."""
    profile = GPU if args.device == "gpu" else cpu_profile()
    if args.total:
        profile = dataclasses.replace(profile, total_s=args.total)
    if args.device == "gpu" and profile.workers > (os.cpu_count() or 1):
        profile = dataclasses.replace(profile, workers=os.cpu_count() or 1)
    names = [s.strip() for s in args.stages.split(",") if s.strip()]
    if bad := [s for s in names if s not in STAGES]:
        ap.error(f"--stages: unknown {bad}; choose from {STAGES}")
    return profile, names


def main(argv: list[str] | None = None) -> int:
    t_start = time.monotonic()
    ap, args = parse_args(argv)
    if args.plan:  # before any import check: runs nothing, needs no CUDA, on any machine
        print(json.dumps(plan(*resolve(ap, args)), indent=2))
        return 0
    if missing := missing_modules():
        fix = (
            "carry them as wheels (docs/benchmarks.md, GPU proof)"
            if args.device == "gpu"
            else "run `make install` first, or pass PY= a python that has the project's dependencies"
        )
        msg = f"{sys.executable} cannot import {missing}: {fix}"
        atomic_write_text(args.out / "gpu-proof.json", json.dumps({"error": msg}) + "\n")
        print(f"gpu-proof: {msg}", file=sys.stderr)
        return 2
    profile, names = resolve(ap, args)
    import torch

    if args.device == "gpu" and not torch.cuda.is_available():
        print("gpu-proof: no CUDA device visible; use --device cpu (make gpu-proof DEVICE=cpu) for the dry run",
              file=sys.stderr)  # fmt: skip
        return 2
    t_end = t_start + profile.total_s
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
           "PYTHONUNBUFFERED": "1"}  # fmt: skip
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # the dry run behaves the same on a machine with a GPU
    doc: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join([Path(sys.executable).name, "-m", "train.gpu_proof", *(argv or sys.argv[1:])]),
        "device": args.device,
        "machine": machine_info(args.device == "gpu"),
        "profile": dataclasses.asdict(profile),
        "total_budget_s": profile.total_s,
        "stages": {},
    }
    work = args.work or args.out.parent / f"{args.out.name}-work"
    ctx = Context(profile, args.out, work, sys.executable, env, doc)
    ctx.logs.mkdir(parents=True, exist_ok=True)
    ctx.work.mkdir(parents=True, exist_ok=True)
    for name in names:
        run_stage(ctx, name, t_end)
        doc["elapsed_s"] = round(time.monotonic() - t_start, 1)
    ctx.save()
    print((args.out / "gpu-proof.md").read_text())
    return 0 if all(s["status"] in ("ok", "skipped", "inconclusive") for s in doc["stages"].values()) else 1
