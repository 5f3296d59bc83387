"""The stages of ``train.gpu_proof`` and the mechanics they share: subprocesses under a
deadline (each in its own session, so a stop reaches its workers), the run's context, and the
JSON the CLIs print. The hand-off stage lives in ``train.gpu_proof.handoff``, the resume check in
``train.gpu_proof.resume``.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shards.base.atomic import atomic_write_text

if TYPE_CHECKING:
    from train.gpu_proof.proof import Profile

ROOT = Path(__file__).resolve().parents[2]


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
        """SIGTERM to every process below it (also those in sessions of their own, e.g. torchrun's
        workers), SIGKILL to those left 10 s later."""
        from pipelines.bench.throughput import descendants

        procs = [self.p.pid, *descendants(self.p.pid)]  # before any exits: orphans leave the tree
        for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            for pid in procs:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            t_end = time.monotonic() + grace
            while self._running(procs) and time.monotonic() < t_end:
                time.sleep(0.1)
            if not self._running(procs):
                break
        self.p.wait()
        self._close()

    def _running(self, procs: list[int]) -> bool:
        return self.p.poll() is None or any(_alive(p) for p in procs[1:])

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
        """Beside the shards, not in OUT: OUT holds only the JSON and the markdown, so it can be
        the device call's $OUT (what is there comes back even from a call stopped at its limit)."""
        return self.work / "logs"

    @property
    def cuda(self) -> bool:
        return self.profile.device == "gpu"

    def save(self) -> None:
        """The JSON and the markdown block, atomically (after every stage)."""
        from train.gpu_proof.report import markdown

        atomic_write_text(self.out / "gpu-proof.json", json.dumps(self.doc, indent=2) + "\n")
        atomic_write_text(self.out / "gpu-proof.md", markdown(self.doc))


def _alive(pid: int) -> bool:
    """A process that still runs (not gone, not a zombie waiting for its parent)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


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
    from shards.bench.synth import CSV_NAME, make_synth
    from shards.builder.config import BuildConfig
    from shards.builder.driver import build

    out = Path(out)
    raw = out.parent / f"{out.name}-raw"
    make_synth(
        raw, tracks=distinct, seconds=seconds, formats=["wav"], sample_rates=[sample_rate], stereo=False
    )
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


def shards_step(ctx: Context, stage: dict[str, Any], codec: str, tracks: int, deadline: float) -> Path:
    p = ctx.profile
    out = ctx.work / f"shards-{codec}-{tracks}"
    if not (out / "manifest.json").is_file():
        kw = dict(codec=codec, tracks=tracks, distinct=p.distinct, seconds=p.seconds,
                  sample_rate=p.sample_rate, workers=p.workers)  # fmt: skip
        code = f"from train.gpu_proof.stages import build_bench_shards; build_bench_shards({str(out)!r}, **{kw!r})"
        t0 = time.monotonic()
        Proc([ctx.python, "-c", code], f"shards-{codec}", ctx).check(deadline)
        stage["shards_build_s"] = round(time.monotonic() - t0, 1)
    manifest = json.loads((out / "manifest.json").read_text())
    size = sum(f.stat().st_size for f in out.rglob("*.tar"))
    stage["shards"] = {"path": str(out), "codec": codec, "tracks": tracks, "distinct": p.distinct,
                    "seconds": p.seconds, "sample_rate": p.sample_rate, "gb": round(size / 1e9, 2),
                    "splits": {k: v["num_samples"] for k, v in manifest["splits"].items()}}  # fmt: skip
    return out


# ------------------------------------------------------------------ stages
TEST_LINE = re.compile(r"^(\S+::\S+) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b", re.M)


GPU_MARKERS = "gpu and not slow"  # the slow gpu tests stay out of the lease (``make test-gpu`` runs them)


def gpu_test_files() -> list[str]:
    """The test modules holding ``gpu``-marked tests: only those are collected, so a module that
    needs a package the device machine lacks (one unrelated to the GPU path) cannot stop the run."""
    return sorted(
        str(f.relative_to(ROOT)) for f in (ROOT / "tests").glob("test_*.py") if "mark.gpu" in f.read_text()
    )


def recorded_figures(junit: Path) -> dict[str, dict[str, str]]:
    """``record_property`` figures per test, from pytest's JUnit XML ({} when absent)."""
    import xml.etree.ElementTree as ET

    if not junit.is_file():
        return {}
    figures: dict[str, dict[str, str]] = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        props = {p.get("name", ""): p.get("value", "") for p in case.iter("property")}
        if props:
            figures[f"{case.get('classname', '')}::{case.get('name', '')}"] = props
    return figures


def stage_gpu_tests(ctx: Context, stage: dict[str, Any], deadline: float) -> None:
    stage["files"] = files = gpu_test_files()
    stage["markers"] = GPU_MARKERS
    junit = ctx.logs / "gpu_tests.xml"
    cmd = [ctx.python, "-m", "pytest", "-v", "-m", GPU_MARKERS, "-p", "no:cacheprovider", "--timeout=60",
           f"--junitxml={junit}", "-o", "junit_family=xunit1", *files]  # fmt: skip
    proc = Proc(cmd, "gpu_tests", ctx)
    try:
        rc = proc.wait(deadline)
    finally:  # counts also from a run stopped at its budget (-v prints each result as it comes)
        results = TEST_LINE.findall(proc.stdout())
        for outcome, key in (
            ("PASSED", "passed"),
            ("FAILED", "failed"),
            ("ERROR", "errors"),
            ("SKIPPED", "skipped"),
        ):
            stage[key] = sum(1 for _, o in results if o == outcome)
        stage["failures"] = [t for t, o in results if o in ("FAILED", "ERROR")]
        stage["figures"] = recorded_figures(junit)
    if rc != 0:
        raise StageFailed(f"pytest exit status {rc}: {len(stage['failures'])} failed or errored")


def stage_handoff(ctx: Context, stage: dict[str, Any], deadline: float) -> None:
    from train.gpu_proof.handoff import run_handoff

    run_handoff(ctx, stage, deadline)


def bench_cmd(ctx: Context, shards: Path, *extra: str, module: str = "pipelines.bench") -> list[str]:
    p = ctx.profile
    return [
        ctx.python,
        "-m",
        module,
        str(shards),
        "--config",
        p.config,
        "--json",
        *extra,
        *p.overrides,
    ]


def stage_preflight(ctx: Context, stage: dict[str, Any], deadline: float) -> None:
    """Versions and one DALI ``fn.spectrogram`` on the device, before anything else: a missing
    library is then one line here, and every later stage is skipped instead of failing."""
    proc = Proc(
        [ctx.python, "-m", "train.gpu_proof.preflight", "--device", ctx.profile.device], "preflight", ctx
    )
    rc = proc.wait(deadline)
    doc = last_json(proc.stdout(), "train.gpu_proof.preflight")
    stage["versions"], stage["smoke"] = doc["versions"], doc["smoke"]
    ctx.doc["machine"]["versions"] = doc["versions"]
    if rc != 0 or doc["smoke"]["status"] != "ok":
        raise StageFailed(doc["smoke"].get("error", f"exit status {rc}"))


def stage_shards(ctx: Context, stage: dict[str, Any], deadline: float) -> None:
    """The pcm16 bench shards, built once for the bench, the input-bound and the resume checks."""
    shards_step(ctx, stage, "pcm16", ctx.profile.tracks, deadline)


def built_shards(ctx: Context) -> Path:
    return Path(ctx.doc["stages"]["shards"]["shards"]["path"])


def stage_pipeline_bench(ctx: Context, stage: dict[str, Any], deadline: float, codec: str = "pcm16") -> None:
    p = ctx.profile
    if codec == "pcm16":
        built = ctx.doc["stages"]["shards"]
        stage["shards"], stage["shards_build_s"] = built["shards"], built.get("shards_build_s")
        shards = built_shards(ctx)
    else:
        shards = shards_step(ctx, stage, codec, p.flac_tracks, deadline)
    ctx.save()
    cmd = bench_cmd(ctx, shards, "--workers", str(p.workers), "--warmup", str(p.bench_warmup),
                    "--batches", str(p.bench_batches))  # fmt: skip
    doc = last_json(Proc(cmd, f"bench-{codec}", ctx).check(deadline), "pipelines.bench")
    stage["results"], stage["workers"], stage["load_average"] = (
        doc["results"],
        doc["workers"],
        doc["load_average"],
    )
    stage["bench_machine"] = doc["machine"]


def stage_input_bound(ctx: Context, stage: dict[str, Any], deadline: float) -> None:
    p = ctx.profile
    shards = built_shards(ctx)
    stage["rows"] = []
    bad: list[str] = []
    for fam in p.families:
        cmd = bench_cmd(ctx, shards, "--family", fam, "--warmup", str(p.step_warmup),
                        "--batches", str(p.step_batches), module="train.stepbench")  # fmt: skip
        t0 = time.monotonic()
        try:
            rows = last_json(Proc(cmd, f"step-{fam}", ctx).check(deadline), fam)["results"]
            synth, real = rows
            row = {"family": fam, "status": "ok", "shape": real["shape"], "batch": real["batch"],
                   "pipeline": real["pipeline"], "params_m": real["params_m"], "synthetic_steps_per_s": synth["steps_per_s"],
                   "real_steps_per_s": real["steps_per_s"], "vs_synthetic": real["vs_synthetic"]}  # fmt: skip
        except StageFailed as e:  # one family's failure must not hide the others' figures
            row, bad = {"family": fam, "status": "failed", "error": str(e)[-800:]}, [*bad, fam]
        row["seconds"] = round(time.monotonic() - t0, 1)
        stage["rows"].append(row)
        ctx.save()
    if bad:
        raise StageFailed(f"failed families: {bad}")


def stage_resume(ctx: Context, stage: dict[str, Any], deadline: float) -> None:
    from train.gpu_proof.resume import run_resume_check

    run_resume_check(ctx, stage, built_shards(ctx), deadline)


def stage_flac(ctx: Context, stage: dict[str, Any], deadline: float) -> None:
    stage_pipeline_bench(ctx, stage, deadline, codec="flac")


RUNNERS: dict[str, Callable[[Context, dict[str, Any], float], None]] = {
    "preflight": stage_preflight,
    "handoff": stage_handoff,
    "gpu_tests": stage_gpu_tests,
    "shards": stage_shards,
    "pipeline_bench": stage_pipeline_bench,
    "input_bound": stage_input_bound,
    "resume": stage_resume,
    "pipeline_bench_flac": stage_flac,
}
NEEDS = {"pipeline_bench": "shards", "input_bound": "shards", "resume": "shards"}  # the shards they read
