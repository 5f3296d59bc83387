"""``make gpu-proof``: the device lease's one script, dry-run on CPU so it cannot rot between leases."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from train.gpu_proof.proof import GPU, STAGES, cpu_profile
from train.gpu_proof.stages import GPU_MARKERS, Context, Proc, StageTimeout, gpu_test_files, last_json

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_cpu_dry_run_fills_every_stage_with_real_figures(tmp_path: Path) -> None:
    out, cpu = tmp_path / "proof", cpu_profile()
    files = gpu_test_files()
    listing = subprocess.Popen(  # meanwhile: which gpu tests exist (each must show up, skipped)
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", GPU_MARKERS, "-p", "no:cacheprovider", *files],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    cmd = ["make", "-s", "gpu-proof", "DEVICE=cpu", f"PY={sys.executable}", f"GPU_PROOF_OUT={out}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    n_gpu = sum(1 for line in listing.communicate(timeout=300)[0].splitlines() if "::" in line)
    assert proc.returncode == 0, proc.stderr[-4000:]
    doc = json.loads((out / "gpu-proof.json").read_text())
    st = doc["stages"]
    assert list(st) == list(STAGES)
    assert [st[s]["status"] for s in STAGES] == [*["ok"] * 7, "skipped"], st
    for s in STAGES[:7]:
        assert 0 < st[s]["seconds"] <= st[s]["budget_s"] + 1
    assert doc["elapsed_s"] <= doc["total_budget_s"]
    # preflight: versions, and DALI's spectrogram ran (on the CPU here)
    pre = st["preflight"]
    assert pre["smoke"]["status"] == "ok" and pre["smoke"]["shape"] == [129, 63]
    assert pre["versions"]["torch"] == torch.__version__ and doc["machine"]["versions"] == pre["versions"]
    # 0. the hand-off check ran every loader kind and mode, each on its own, audio first (on the
    # CPU: the plumbing, no delays, no escalation; the control is not applicable)
    h = st["handoff"]
    assert h["passed"] and list(h["results"]) == ["audio-train", "audio-eval", "image-train", "image-eval"]
    for r in h["results"].values():
        assert (r["status"], r["control"], len(r["attempts"])) == ("ok", "n/a", 1), r
        assert r["lease"]["batches"] > 3 and r["lease"]["mismatched"] == 0
    assert sorted(p.name for p in (out.parent / "proof-work" / "logs").glob("handoff-*.out.txt")) == [
        f"handoff-{c}.out.txt" for c in ("audio-eval", "audio-train", "image-eval", "image-train")
    ]
    # 1. every non-slow gpu test is collected, and skips: the dry run hides any GPU
    t = st["gpu_tests"]
    assert (
        t["files"] == files
        and "tests/test_train_gpu.py" in files
        and "tests/test_pipeline_parity.py" in files
        and "tests/test_gpu_memory.py" in files
    )
    assert n_gpu >= 20 and (t["passed"], t["failed"], t["errors"], t["skipped"]) == (0, 0, 0, n_gpu)
    assert t["markers"] == "gpu and not slow" and t["figures"] == {}
    # 2. the bench ran on the shards the run built (24 tracks: 16/4/4), both CPU pipelines
    b = st["pipeline_bench"]
    assert b["shards"] == st["shards"]["shards"] and b["shards"]["splits"] == {
        "train": 16,
        "validation": 4,
        "test": 4,
    }
    assert [r["pipeline"] for r in b["results"]] == ["dali-cpu", "baseline"]
    for r in b["results"]:
        assert r["batches"] == cpu.bench_batches and r["chunks"] == cpu.bench_batches * 8
        assert r["chunks_per_s"] > 0 and r["cpu_cores"] >= 0 and r["machine_cpu_cores"] >= 0
        # seconds are rounded to 1 ms in the JSON: the rate lies within that rounding of chunks / seconds
        lo, hi = r["chunks"] / (r["seconds"] + 5e-4), r["chunks"] / max(r["seconds"] - 5e-4, 1e-9)
        assert lo * 0.999 <= r["chunks_per_s"] <= hi * 1.001, r
    # 3. the input-bound ratio is the ratio of the two measured rates
    (row,) = st["input_bound"]["rows"]
    assert row["family"] == "customcnn" and row["shape"] == [3, 32, 1 + 8000 // 128] and row["batch"] == 8
    assert row["synthetic_steps_per_s"] > 0 and row["real_steps_per_s"] > 0 and row["params_m"] > 0
    assert abs(row["vs_synthetic"] - row["real_steps_per_s"] / row["synthetic_steps_per_s"]) < 0.01
    # 4. SIGTERM landed mid-run, the resumed run ended where the uninterrupted one did, same weights
    r = st["resume"]
    assert r["passed"] and cpu.sigterm_after <= r["stopped_at_step"] < cpu.resume_steps
    c = r["comparison"]
    assert c["position_full"] == c["position_resumed"] and c["position_full"]["step"] == cpu.resume_steps
    assert all(c["checks"].values()) and c["plan_position_equal"]
    assert c["weights_rel_l2"] < 1e-6  # CPU kernels are deterministic
    assert c["loss_full"] > 0 and math.isclose(c["loss_full"], c["loss_resumed"], rel_tol=1e-6)
    md = (out / "gpu-proof.md").read_text()
    assert "| resume | ok |" in md and "| dali-cpu |" in md and "**passed**" in md and "| audio-train |" in md
    assert md in proc.stdout  # the block is also the end of the output (what a device reply shows)


def _ctx(tmp_path: Path) -> Context:
    ctx = Context(
        cpu_profile(), tmp_path, tmp_path / "work", sys.executable, {"PATH": "/usr/bin:/bin"}, {"stages": {}}
    )
    ctx.logs.mkdir(parents=True)
    return ctx


def test_a_stage_over_budget_is_stopped_with_its_children(tmp_path: Path) -> None:
    # the grandchild starts a session of its own (as torchrun's workers do): a process-group kill misses it
    code = (
        "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(61.2345)'],"
        " start_new_session=True); time.sleep(61.2345)"
    )
    proc = Proc([sys.executable, "-c", code], "sleeper", _ctx(tmp_path))
    t0 = time.monotonic()
    with pytest.raises(StageTimeout, match="sleeper"):
        proc.wait(time.monotonic() + 1.0)
    assert time.monotonic() - t0 < 15 and proc.p.poll() is not None
    assert (
        _alive_with("time.sleep(61.2345)") == []
    )  # every process it started went, not only the direct child
    assert (tmp_path / "work" / "logs" / "sleeper.err.txt").read_text().startswith("$ ")


def _alive_with(token: str) -> list[int]:
    """Live processes whose command line holds ``token``."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().decode(errors="replace")
            state = (cmdline.parent / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if token in text and state != "Z":
            pids.append(int(cmdline.parent.name))
    return pids


def test_last_json_takes_the_final_document_after_other_output() -> None:
    text = 'note: warming up\n{"a": 1}\nmore\n{\n  "results": [\n    {"x": 2}\n  ]\n}\n'
    assert last_json(text, "t") == {"results": [{"x": 2}]}
    with pytest.raises(Exception, match="no JSON"):
        last_json("progress only\n", "t")


def test_the_lease_profile_commands_resolve(tmp_path: Path) -> None:
    """The GPU profile cannot be run here: check at least that every config and override it
    passes resolves (a typo would otherwise surface only during a lease), at the seed shape."""
    from pipelines.config import framing
    from train.__main__ import parse_args
    from train.config import load_experiment
    from train.gpu_proof.resume import torchrun_cmd
    from train.models import resolve_family

    ctx = Context(GPU, tmp_path, tmp_path / "work", sys.executable, {}, {"stages": {}})
    cmd = torchrun_cmd(ctx, tmp_path / "shards", tmp_path / "run")
    args, overrides = parse_args(cmd[cmd.index("train") + 1 :])
    exp = load_experiment(ROOT / args.config, overrides)
    resolve_family(exp.model)
    assert (exp.model.family, exp.train.max_steps, exp.train.device, exp.data.val_split) == (
        "customcnn",
        GPU.resume_steps,
        "cuda",
        None,
    )
    assert GPU.resume_steps % GPU.log_every == 0  # the final loss is logged at the last step
    for family in GPU.families:
        exp = load_experiment(
            ROOT / GPU.config, [f"data.shards={tmp_path}", f"model.family={family}", *GPU.overrides]
        )
        resolve_family(exp.model)
        shape = (len(exp.features.channels), exp.features.n_mels, framing(exp.features, exp.loader).frames)
        assert shape == (3, 256, 259)


def test_markdown_of_a_gpu_run_shows_its_gpu_only_figures() -> None:
    """The GPU-only fields (device, memory, NCCL, DALI gpu row) never appear in the dry run."""
    from train.gpu_proof.report import markdown

    shards = {"tracks": 2000, "seconds": 30.0, "codec": "pcm16", "sample_rate": 22050, "distinct": 64,
              "gb": 2.65, "splits": {"train": 1376, "validation": 312, "test": 312}}  # fmt: skip
    row = {"chunks_per_s": 21000.0, "cpu_cores": 3.5, "gpu_mem_device_mib": 900.0}
    checks = {"same_step_and_loader_position": True, "same_plan_position": True}
    pos = {"step": 200, "epoch": 2, "batch_in_epoch": 28, "loader_epoch": 2, "loader_batch": 28}
    doc = {
        "started": "2026-12-02T15:00:00Z", "command": "python3 -m train.gpu_proof", "elapsed_s": 400.0,
        "total_budget_s": 480.0,
        "machine": {"gpu": "NVIDIA H200", "gpu_memory": "143771 MiB", "driver": "580.159.04", "cpu_count": 16,
                    "python": "3.12.3", "torch": "2.11.0+cu130"},
        "stages": {
            "pipeline_bench": {"status": "ok", "budget_s": 150, "seconds": 80.0, "shards": shards, "workers": 16,
                               "results": [{"pipeline": "dali-gpu", **row},
                                           {"pipeline": "baseline", "chunks_per_s": 2100.0, "cpu_cores": 15.0}]},
            "resume": {"status": "ok", "budget_s": 90, "seconds": 60.0, "backend": "nccl", "nccl_version": "2.27.7",
                       "steps": 200, "signalled_at_logged_step": 100, "stopped_at_step": 101, "resume_s": 20.0,
                       "passed": True,
                       "comparison": {"position_full": pos, "position_resumed": pos, "plan_position_equal": True,
                                      "lr_full": 1e-5, "lr_resumed": 1e-5, "loss_full": 1.2, "loss_resumed": 1.2,
                                      "loss_rel_diff": 0.0, "weights_rel_l2": 2e-5, "weights_max_abs": 1e-6,
                                      "tolerances": {"weights_rel_l2": 1e-3, "loss_rel_diff": 1e-2}, "checks": checks}},
        },
    }  # fmt: skip
    md = markdown(doc)
    assert md.startswith("### GPU proof: NVIDIA H200 (143771 MiB, driver 580.159.04)")
    assert "| dali-gpu | 21000.0 |" in md and "dali-gpu 10.00x" in md and "| 900.0 |" in md
    assert "(nccl, NCCL 2.27.7)" in md and "stopped at step 101" in md and "**passed**" in md


def test_figures_recorded_by_tests_reach_the_report(tmp_path: Path) -> None:
    """A test's ``record_property`` figures come back through pytest's JUnit XML, as the
    gpu_tests stage runs it, and show in the markdown with the hand-off table."""
    from train.gpu_proof.report import markdown
    from train.gpu_proof.stages import recorded_figures

    (tmp_path / "test_fig.py").write_text(
        "def test_a(record_property):\n    record_property('dali_peak_mib', 812.5)\n\n\ndef test_b():\n    pass\n"
    )
    junit = tmp_path / "out.xml"
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}", "-o",
                    "junit_family=xunit1", str(tmp_path / "test_fig.py")], cwd=tmp_path, check=True,
                   capture_output=True)  # fmt: skip
    figures = recorded_figures(junit)
    assert figures == {"test_fig::test_a": {"dali_peak_mib": "812.5"}}
    assert recorded_figures(tmp_path / "absent.xml") == {}
    run = {"batches": 9, "yielded": 9, "mismatched": 0, "host_waits": 7}
    doc = {
        "started": "2026-12-05T10:00:00Z", "command": "python3 -m train.gpu_proof", "elapsed_s": 30.0,
        "total_budget_s": 430.0, "machine": {"cpu_count": 16, "python": "3.12.3", "torch": "2.11.0"},
        "stages": {
            "handoff": {"status": "ok", "budget_s": 60, "seconds": 20.0, "passed": True, "sleep_cycles": 20000000,
                        "results": {"audio-train": {"status": "ok", "control": "shown", "lease": run,
                                                    "no_lease": {**run, "mismatched": 4}, "sleep_cycles": 8e7,
                                                    "batch_scale": 1, "seconds": 6.0},
                                    "image-train": {"status": "error", "error": "RuntimeError: no nvImageCodec"}}},
            "gpu_tests": {"status": "ok", "budget_s": 110, "seconds": 80.0, "passed": 2, "failed": 0, "errors": 0,
                          "skipped": 0, "failures": [], "markers": "gpu and not slow", "figures": figures},
        },
    }  # fmt: skip
    md = markdown(doc)
    assert "| audio-train | ok | 9 | 0 | 7 | shown (4) | 8e+07 / x1 | 6.0 |  |" in md and "**Hand-off**" in md
    assert (
        "| image-train | error |  |  |  |  |  |  | RuntimeError: no nvImageCodec |" in md and "passed" in md
    )
    assert "| test_fig::test_a | dali_peak_mib 812.5 |" in md and '`-m "gpu and not slow"`' in md


@pytest.mark.parametrize(
    ("device", "fix"), [("gpu", "carry them as wheels"), ("cpu", "run `make install` first")]
)
def test_a_missing_module_stops_the_proof_with_the_fix_for_its_device(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], device: str, fix: str
) -> None:
    from train.gpu_proof import proof

    monkeypatch.setattr(proof, "REQUIRED", (*proof.REQUIRED, "no_such_module_here"))
    assert proof.main(["--device", device, "--out", str(tmp_path)]) == 2
    line = capsys.readouterr().err.strip()
    assert "\n" not in line and "cannot import ['no_such_module_here']" in line and fix in line, line
    assert json.loads((tmp_path / "gpu-proof.json").read_text())["error"] in line


@pytest.mark.parametrize(("total", "want"), [(None, 430.0), (300.0, 300.0)])
def test_plan_fits_the_total_most_valuable_first_and_runs_nothing(
    tmp_path: Path, total: float | None, want: float
) -> None:
    """``--plan`` on a machine without CUDA, torch or DALI (both made unimportable here): the
    budgets as JSON, exit 0, nothing written."""
    from train.gpu_proof.proof import RESERVE_S

    args = ["--device", "gpu", "--plan", "--out", str(tmp_path / "o")]
    code = ("import runpy, sys; sys.modules['torch'] = sys.modules['nvidia'] = None; "
            f"sys.argv = ['gpu_proof', *{args!r}, *sys.argv[1:]]; runpy.run_module('train.gpu_proof', run_name='__main__')")  # fmt: skip
    cmd = [sys.executable, "-c", code]
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([*cmd, *(["--total", str(total)] if total else [])], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    budgets = [doc["stages"][s]["budget_s"] for s in STAGES]
    assert doc["total_budget_s"] == want and list(doc["stages"]) == list(STAGES)
    assert sum(budgets) <= want - RESERVE_S and budgets[:3] == [GPU.budgets[s] for s in STAGES[:3]]
    if total is None:  # the whole lease: every stage, the FLAC bench included, gets its budget
        assert budgets == [GPU.budgets[s] for s in STAGES] and min(budgets) > 0
    else:  # a shorter lease drops the least valuable stages (last), never the first
        assert budgets[-1] == 0 and budgets[0] > 0
    assert not (tmp_path / "o").exists()


def test_a_handoff_case_that_cannot_run_is_its_own_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An image case failing (as without nvImageCodec) is recorded as that case's error; the
    audio case after it still runs, and each result is emitted as it ends."""
    from pipelines.bench import handoff

    def no_codec(folder: Path) -> Path:
        raise RuntimeError("nvImageCodec: libnvimgcodec.so.0: cannot open shared object file\n(more)")

    monkeypatch.setattr(handoff, "build_images", no_codec)
    emitted: list[tuple[str, str]] = []
    doc = handoff.run_checks(tmp_path, device="cpu", cases=("image-train", "audio-train"),
                             emit=lambda case, r: emitted.append((case, r["status"])))  # fmt: skip
    assert emitted == [("image-train", "error"), ("audio-train", "ok")]
    image, audio = doc["results"]["image-train"], doc["results"]["audio-train"]
    assert image["error"] == "RuntimeError: nvImageCodec: libnvimgcodec.so.0: cannot open shared object file"
    assert audio["control"] == "n/a" and audio["lease"]["batches"] > 3 and audio["lease"]["mismatched"] == 0
    assert not doc["passed"]


def test_handoff_verdict_on_a_gpu_needs_the_control_to_show_the_hazard() -> None:
    from pipelines.bench.handoff import verdict

    def attempt(lease: int, control: int) -> dict:
        run = {"batches": 8, "yielded": 8, "host_waits": 0}
        return {"sleep_cycles": 1, "batch_scale": 1, "lease": {**run, "mismatched": lease},
                "no_lease": {**run, "mismatched": control}}  # fmt: skip

    assert verdict([attempt(0, 3)], cuda=True)["status"] == "ok"
    assert verdict([attempt(0, 0), attempt(0, 0)], cuda=True)["status"] == "inconclusive"
    assert verdict([attempt(0, 0), attempt(1, 5)], cuda=True)["status"] == "failed"
    assert verdict([attempt(0, 0)], cuda=False)["status"] == "ok"
    assert verdict([attempt(0, 0)], cuda=False)["control"] == "n/a"


def test_a_failed_preflight_names_the_missing_library_and_skips_every_later_stage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from train.gpu_proof import preflight, proof

    def no_cufft(gpu: bool) -> dict:
        raise RuntimeError(
            "[/opt/dali/fft.cc:12] libcufft.so.12: cannot open shared object file\nStacktrace (9 entries)"
        )

    monkeypatch.setattr(preflight, "spectrogram_smoke", no_cufft)
    smoke = preflight.smoke(gpu=True)
    assert smoke["status"] == "error" and "\n" not in smoke["error"]
    assert smoke["error"].startswith("DALI fn.spectrogram (gpu): missing library libcufft.so.12: ")
    ctx = _ctx(tmp_path)
    ctx.doc.update(machine={"cpu_count": 2, "python": "3", "torch": "2"}, started="now", command="c",
                   total_budget_s=720.0)  # fmt: skip
    ctx.doc["stages"]["preflight"] = {"status": "failed", "budget_s": 30, "error": smoke["error"]}
    proof.run_stage(ctx, "handoff", time.monotonic() + 600)
    skipped = ctx.doc["stages"]["handoff"]
    assert skipped["status"] == "skipped" and skipped["reason"] == f"preflight failed: {smoke['error']}"


@pytest.mark.parametrize(("shows_at", "status"), [(2, "ok"), (99, "inconclusive")])
def test_a_gpu_case_escalates_while_the_control_shows_no_hazard(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, shows_at: int, status: str
) -> None:
    """Longer sleeps, then larger batches, until the no-lease control shows the hazard (or the
    escalation ends: inconclusive). Simulated: no GPU here."""
    from pipelines.bench import handoff

    made: list[int] = []
    monkeypatch.setattr(
        handoff, "case_loader", lambda case, folder, device, scale: made.append(scale) or scale
    )

    def check(make: int, *, lease: bool, sleep_cycles: int) -> dict:
        hazard = not lease and len(made) >= shows_at
        return {"batches": 8, "yielded": 8, "mismatched": 3 if hazard else 0, "host_waits": 0}

    monkeypatch.setattr(handoff, "delayed_stream_check", check)
    r = handoff.check_case("audio-train", tmp_path, device="cuda", sleep_cycles=10, budget_s=60)
    tried = [(a["sleep_cycles"], a["batch_scale"]) for a in r["attempts"]]
    assert tried == ([(10, 1), (40, 1)] if status == "ok" else [(10, 1), (40, 1), (40, 4)])
    assert r["status"] == status and r["control"] == ("shown" if status == "ok" else "not shown")
    assert (r["sleep_cycles"], r["batch_scale"]) == tried[-1]
