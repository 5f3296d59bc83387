"""``python -m train.gpu_proof`` (``make gpu-proof``): the GPU path proved in one run that fits a lease.

A device lease is 15 minutes in all, with no time to improvise, so the whole check is prepared
here and dry-run on CPU by the test suite (``--device cpu``: tiny sizes). Stages, in order of
value, each run as subprocesses under its own time budget (a stage that overruns is stopped and
the next one still runs):

1. ``gpu_tests``: ``pytest -m gpu`` (DALI gpu vs cpu parity, the loader contract on CUDA, AMP steps);
2. ``pipeline_bench``: ``python -m pipelines.bench`` on PCM shards built here: DALI gpu vs DALI
   cpu vs the torchaudio DataLoader, in one process (chunks/s, CPU cores busy, device memory);
3. ``input_bound``: ``pipelines.bench --train-step`` per family: real loader vs GPU-resident
   synthetic batches (``vs_synthetic``), bf16 + channels_last;
4. ``resume``: ``torchrun`` (one rank; NCCL on CUDA), SIGTERM mid-run, ``--checkpoint.resume=auto``
   to the end, compared with an uninterrupted run (``train.gpu_proof_resume``);
5. ``pipeline_bench_flac``: stage 2 on FLAC shards, when time is left.

Writes ``OUT/gpu-proof.json`` (every figure, per-stage status, seconds and budget; rewritten
atomically after every stage, so a killed run still leaves what finished), ``OUT/gpu-proof.md``
(the block for docs/benchmarks.md) and ``OUT/logs/``. Imports no model code: it runs from the
source tree with any Python that has torch and DALI (the device machine's python3, no install).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import importlib.util
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shards.atomic import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = ("torch", "torchaudio", "nvidia.dali", "webdataset", "soundfile", "soxr", "timm", "pytest", "tqdm")
RESERVE_S = 15.0  # kept back from the total: the last writes, and the caller's copy of the files
MIN_STAGE_S = 20.0  # a stage is not started with less than this left
STAGES = ("gpu_tests", "pipeline_bench", "input_bound", "resume", "pipeline_bench_flac")


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
    total_s: float = 480.0


GPU = Profile(
    device="gpu", tracks=2000, distinct=64, seconds=30.0, sample_rate=22050, flac_tracks=400,
    config="configs/fma_small_efficientnet_b2.toml", overrides=(), workers=16,
    bench_warmup=5, bench_batches=60,
    families=("efficientnet_b2", "resnet50", "ast", "customcnn"), step_warmup=5, step_batches=30,
    resume_steps=200, sigterm_after=100, log_every=10,
    resume_overrides=("--model.family=customcnn", "--model.preset=small", "--model.drop_path=0.0",
                      "--train.amp=none", "--optim.warmup_steps=20"),
    budgets={"gpu_tests": 90, "pipeline_bench": 150, "input_bound": 120, "resume": 90, "pipeline_bench_flac": 60},
    total_s=480.0,
)  # fmt: skip
# 8 kHz, 1 s chunks, 32 mel rows: (3, 32, 32) per chunk, every step cheap on 2 cores
TINY = (
    "--features.sample_rate=8000", "--features.n_fft=256", "--features.hop_length=256", "--features.n_mels=32",
    "--features.n_mfcc=16", "--loader.batch_size=8", "--loader.chunks_per_track=2", "--loader.chunk_seconds=1.0",
    "--loader.num_threads=1", "--loader.eval_tracks_per_batch=4", "--loader.initial_fill=8",
    "--augment.freq_width=4", "--augment.time_width=4",
)  # fmt: skip
CPU = Profile(
    device="cpu", tracks=24, distinct=12, seconds=3.0, sample_rate=8000, flac_tracks=0,
    config="configs/demo_customcnn.toml", overrides=TINY, workers=1, bench_warmup=1, bench_batches=3,
    families=("customcnn",), step_warmup=1, step_batches=3, resume_steps=30, sigterm_after=4, log_every=1,
    resume_overrides=("--train.amp=none", "--train.threads=1", "--optim.warmup_steps=2"),
    budgets={"gpu_tests": 90, "pipeline_bench": 90, "input_bound": 120, "resume": 180, "pipeline_bench_flac": 0},
    total_s=600.0,  # a loaded 2-core CI box: each torchrun start alone can take 20 s there
)  # fmt: skip


class StageTimeout(Exception):
    """A stage's budget ran out; its subprocesses were stopped."""


class StageFailed(Exception):
    """A stage ran but its result is wrong or missing (the message says which)."""


class Proc:
    """One subprocess in its own session (so a stop reaches its workers too), output to ``logs/``."""

    def __init__(self, cmd: list[str], label: str, ctx: Context, env: dict[str, str] | None = None) -> None:
        self.label, self.cmd = label, cmd
        self.out_path, self.err_path = ctx.logs / f"{label}.out.txt", ctx.logs / f"{label}.err.txt"
        self._out, self._err = open(self.out_path, "w"), open(self.err_path, "w")
        self._err.write("$ " + " ".join(cmd) + "\n")
        self._err.flush()
        self.p = subprocess.Popen(
            cmd, cwd=ROOT, env={**ctx.env, **(env or {})}, stdout=self._out, stderr=self._err,
            start_new_session=True,
        )  # fmt: skip

    def wait(self, deadline: float) -> int:
        try:
            rc = self.p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.stop()
            raise StageTimeout(f"{self.label}: stopped at the stage's time budget") from None
        self._close()
        return rc

    def stop(self) -> None:
        """SIGTERM to the whole session, SIGKILL 10 s later."""
        for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.p.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.p.wait(timeout=grace)
                break
            except subprocess.TimeoutExpired:
                continue
        self._close()

    def _close(self) -> None:
        self._out.close()
        self._err.close()

    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace")

    def err_tail(self, n: int = 1500) -> str:
        return self.err_path.read_text(errors="replace")[-n:]

    def check(self, deadline: float) -> str:
        """Wait; stdout when the exit status is 0, else StageFailed with the end of stderr."""
        rc = self.wait(deadline)
        if rc != 0:
            raise StageFailed(f"{self.label}: exit status {rc}: {self.err_tail()}")
        return self.stdout()


@dataclass
class Context:
    profile: Profile
    out: Path
    work: Path
    python: str
    env: dict[str, str]
    doc: dict[str, Any]

    @property
    def logs(self) -> Path:
        return self.out / "logs"

    @property
    def cuda(self) -> bool:
        return self.profile.device == "gpu"

    def save(self) -> None:
        """The JSON and the markdown block, atomically (after every stage)."""
        from train.gpu_proof_report import markdown

        atomic_write_text(self.out / "gpu-proof.json", json.dumps(self.doc, indent=2) + "\n")
        atomic_write_text(self.out / "gpu-proof.md", markdown(self.doc))


def last_json(text: str, label: str) -> Any:
    """The last JSON document on stdout (the CLIs print one at the end, possibly indented)."""
    lines = text.splitlines()
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith(("{", "[")):
            try:
                return json.loads("\n".join(lines[i:]))
            except json.JSONDecodeError:
                continue
    raise StageFailed(f"{label}: no JSON document on stdout")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------ shards
def build_bench_shards(
    out: str | Path, *, codec: str, tracks: int, distinct: int, seconds: float, sample_rate: int, workers: int
) -> None:
    """Synthetic shards of ``tracks`` tracks: ``distinct`` synthesised (WAV at the features' rate,
    mono), the rest hard links to them. Synthesis costs ~0.1 s per 30-s track on one core; a
    repeat costs the pipeline exactly what a new track would (it is decoded and featurised again)."""
    from shards.builder import build
    from shards.config import BuildConfig
    from shards.synth import CSV_NAME, make_synth

    out = Path(out)
    raw = out.parent / f"{out.name}-raw"
    make_synth(raw, tracks=distinct, seconds=seconds, formats=["wav"], sample_rates=[sample_rate], stereo=False)
    with open(raw / CSV_NAME, newline="") as f:
        base = list(csv.DictReader(f))
    rows = []
    for i in range(tracks):
        src = base[i % len(base)]
        rel = f"audio/r{i:06d}.wav"
        os.link(raw / src["path"], raw / rel)
        rows.append({**src, "path": rel})
    with open(raw / CSV_NAME, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(base[0]))
        w.writeheader()
        w.writerows(rows)
    cfg = BuildConfig(
        source="folder", root=raw, out=out, task="single", codec=codec,  # type: ignore[arg-type]
        sample_rate=sample_rate, seed=0, workers=workers,
    )  # fmt: skip
    build(cfg, progress=False)


def shards_step(ctx: Context, st: dict[str, Any], codec: str, tracks: int, deadline: float) -> Path:
    p = ctx.profile
    out = ctx.work / f"shards-{codec}-{tracks}"
    if not (out / "manifest.json").is_file():
        kw = dict(codec=codec, tracks=tracks, distinct=p.distinct, seconds=p.seconds,
                  sample_rate=p.sample_rate, workers=p.workers)  # fmt: skip
        code = f"from train.gpu_proof import build_bench_shards; build_bench_shards({str(out)!r}, **{kw!r})"
        t0 = time.monotonic()
        Proc([ctx.python, "-c", code], f"shards-{codec}", ctx).check(deadline)
        st["shards_build_s"] = round(time.monotonic() - t0, 1)
    manifest = json.loads((out / "manifest.json").read_text())
    size = sum(f.stat().st_size for f in out.rglob("*.tar"))
    st["shards"] = {"path": str(out), "codec": codec, "tracks": tracks, "distinct": p.distinct,
                    "seconds": p.seconds, "sample_rate": p.sample_rate, "gb": round(size / 1e9, 2),
                    "splits": {k: v["num_samples"] for k, v in manifest["splits"].items()}}  # fmt: skip
    return out


# ------------------------------------------------------------------ stages
TEST_LINE = re.compile(r"^(\S+::\S+) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b", re.M)


def gpu_test_files() -> list[str]:
    """The test modules holding ``gpu``-marked tests: only those are collected, so a module that
    needs a package the device machine lacks (one unrelated to the GPU path) cannot stop the run."""
    return sorted(str(f.relative_to(ROOT)) for f in (ROOT / "tests").glob("test_*.py") if "mark.gpu" in f.read_text())


def stage_gpu_tests(ctx: Context, st: dict[str, Any], deadline: float) -> None:
    st["files"] = files = gpu_test_files()
    cmd = [ctx.python, "-m", "pytest", "-v", "-m", "gpu", "-p", "no:cacheprovider", "--timeout=120", *files]
    proc = Proc(cmd, "gpu_tests", ctx)
    try:
        rc = proc.wait(deadline)
    finally:  # counts also from a run stopped at its budget (-v prints each result as it comes)
        results = TEST_LINE.findall(proc.stdout())
        for outcome, key in (("PASSED", "passed"), ("FAILED", "failed"), ("ERROR", "errors"), ("SKIPPED", "skipped")):
            st[key] = sum(1 for _, o in results if o == outcome)
        st["failures"] = [t for t, o in results if o in ("FAILED", "ERROR")]
    if rc != 0:
        raise StageFailed(f"pytest exit status {rc}: {len(st['failures'])} failed or errored")


def bench_cmd(ctx: Context, shards: Path, *extra: str) -> list[str]:
    p = ctx.profile
    return [ctx.python, "-m", "pipelines.bench", str(shards), "--config", p.config, "--json", *extra, *p.overrides]


def stage_pipeline_bench(ctx: Context, st: dict[str, Any], deadline: float, codec: str = "pcm16") -> None:
    p = ctx.profile
    tracks = p.tracks if codec == "pcm16" else p.flac_tracks
    shards = shards_step(ctx, st, codec, tracks, deadline)
    ctx.save()
    cmd = bench_cmd(ctx, shards, "--workers", str(p.workers), "--warmup", str(p.bench_warmup),
                    "--batches", str(p.bench_batches))  # fmt: skip
    doc = last_json(Proc(cmd, f"bench-{codec}", ctx).check(deadline), "pipelines.bench")
    st["results"], st["workers"], st["load_average"] = doc["results"], doc["workers"], doc["load_average"]
    st["bench_machine"] = doc["machine"]


def stage_input_bound(ctx: Context, st: dict[str, Any], deadline: float) -> None:
    p = ctx.profile
    shards = Path(ctx.doc["stages"]["pipeline_bench"]["shards"]["path"])
    st["rows"], bad = [], []
    for fam in p.families:
        cmd = bench_cmd(ctx, shards, "--train-step", fam, "--warmup", str(p.step_warmup),
                        "--batches", str(p.step_batches))  # fmt: skip
        t0 = time.monotonic()
        try:
            rows = last_json(Proc(cmd, f"step-{fam}", ctx).check(deadline), fam)["results"]
            synth, real = rows
            row = {"family": fam, "status": "ok", "shape": real["shape"], "batch": real["batch"],
                   "pipeline": real["pipeline"], "synthetic_steps_per_s": synth["steps_per_s"],
                   "real_steps_per_s": real["steps_per_s"], "vs_synthetic": real["vs_synthetic"]}  # fmt: skip
        except StageFailed as e:  # one family's failure must not hide the others' figures
            row, bad = {"family": fam, "status": "failed", "error": str(e)[-800:]}, [*bad, fam]
        row["seconds"] = round(time.monotonic() - t0, 1)
        st["rows"].append(row)
        ctx.save()
    if bad:
        raise StageFailed(f"failed families: {bad}")


def stage_resume(ctx: Context, st: dict[str, Any], deadline: float) -> None:
    from train.gpu_proof_resume import run_resume_check

    shards = Path(ctx.doc["stages"]["pipeline_bench"]["shards"]["path"])
    run_resume_check(ctx, st, shards, deadline)


def stage_flac(ctx: Context, st: dict[str, Any], deadline: float) -> None:
    stage_pipeline_bench(ctx, st, deadline, codec="flac")


RUNNERS: dict[str, Callable[[Context, dict[str, Any], float], None]] = {
    "gpu_tests": stage_gpu_tests,
    "pipeline_bench": stage_pipeline_bench,
    "input_bound": stage_input_bound,
    "resume": stage_resume,
    "pipeline_bench_flac": stage_flac,
}
NEEDS = {"input_bound": "pipeline_bench", "resume": "pipeline_bench"}  # the shards they train on


def run_stage(ctx: Context, name: str, t_end: float) -> None:
    budget = ctx.profile.budgets.get(name, 0.0)
    left = t_end - time.monotonic() - RESERVE_S
    st: dict[str, Any] = {"status": "skipped", "budget_s": round(min(budget, max(left, 0.0)), 1)}
    ctx.doc["stages"][name] = st
    need = NEEDS.get(name)
    if budget <= 0:
        st["reason"] = "not in this profile"
    elif need and "shards" not in ctx.doc["stages"].get(need, {}):
        st["reason"] = f"no shards: stage {need} did not build them"
    elif left < MIN_STAGE_S:
        st["reason"] = f"out of time ({left:.0f} s left)"
    else:
        st["status"] = "running"
        ctx.save()
        t0 = time.monotonic()
        try:
            RUNNERS[name](ctx, st, t0 + min(budget, left))
            st["status"] = "ok"
        except StageTimeout as e:
            st["status"], st["error"] = "timeout", str(e)
        except StageFailed as e:
            st["status"], st["error"] = "failed", str(e)[-2000:]
        except Exception as e:  # noqa: BLE001  # an orchestrator bug in one stage must not lose the next ones
            st["status"], st["error"] = "error", f"{type(e).__name__}: {e}"
        st["seconds"] = round(time.monotonic() - t0, 1)
    print(f"gpu-proof: {name}: {st['status']} ({st.get('seconds', 0)} s) {st.get('error', st.get('reason', ''))[:300]}",
          file=sys.stderr, flush=True)  # fmt: skip
    ctx.save()


def machine_info(cuda: bool) -> dict[str, Any]:
    import torch

    m: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(),
                         "cpu_count": os.cpu_count(), "torch": torch.__version__}  # fmt: skip
    if cuda:
        m["gpu"] = torch.cuda.get_device_name()
        m["gpu_mem_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    return m


def missing_modules() -> list[str]:
    """Of ``REQUIRED``, those this Python cannot import (checked before any stage starts)."""
    return [m for m in REQUIRED if importlib.util.find_spec(m.split(".")[0]) is None or importlib.util.find_spec(m) is None]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m train.gpu_proof", description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("gpu", "cpu"), default="gpu", help="gpu: the lease; cpu: tiny dry run")
    ap.add_argument("--out", type=Path, default=Path("/tmp/musicstream-gpu-proof"), help="JSON, markdown, logs")
    ap.add_argument("--work", type=Path, help="shards and runs (default OUT/work)")
    ap.add_argument("--total", type=float, help="seconds for the whole run (default: the profile's)")
    ap.add_argument("--stages", default=",".join(STAGES), help="comma list of " + ", ".join(STAGES))
    args = ap.parse_args(argv)
    profile = GPU if args.device == "gpu" else CPU
    if args.total:
        profile = dataclasses.replace(profile, total_s=args.total)
    if args.device == "gpu" and profile.workers > (os.cpu_count() or 1):
        profile = dataclasses.replace(profile, workers=os.cpu_count() or 1)
    names = [s.strip() for s in args.stages.split(",") if s.strip()]
    if bad := [s for s in names if s not in STAGES]:
        ap.error(f"--stages: unknown {bad}; choose from {STAGES}")
    if missing := missing_modules():
        msg = f"{sys.executable} cannot import {missing}: carry them as wheels (docs/benchmarks.md, GPU proof)"
        atomic_write_text(args.out / "gpu-proof.json", json.dumps({"error": msg}) + "\n")
        print(f"gpu-proof: {msg}", file=sys.stderr)
        return 2
    import torch

    if args.device == "gpu" and not torch.cuda.is_available():
        print("gpu-proof: no CUDA device visible; use --device cpu (make gpu-proof DEVICE=cpu) for the dry run",
              file=sys.stderr)  # fmt: skip
        return 2
    t_start = time.monotonic()
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
    ctx = Context(profile, args.out, args.work or args.out / "work", sys.executable, env, doc)
    ctx.logs.mkdir(parents=True, exist_ok=True)
    ctx.work.mkdir(parents=True, exist_ok=True)
    for name in names:
        run_stage(ctx, name, t_end)
        doc["elapsed_s"] = round(time.monotonic() - t_start, 1)
    ctx.save()
    print((args.out / "gpu-proof.md").read_text())
    return 0 if all(s["status"] in ("ok", "skipped") for s in doc["stages"].values()) else 1


if __name__ == "__main__":
    # run the imported module's main: train.gpu_proof_resume imports this module by name, and its
    # StageFailed must be the class these stages catch (not a copy defined in __main__)
    from train.gpu_proof import main as _main

    raise SystemExit(_main())
