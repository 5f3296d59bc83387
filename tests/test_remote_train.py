"""Training and evaluation straight from ``s3://`` (a local S3 server in its own process): 2 gloo
ranks under torchrun, ``python -m eval`` metrics equal to the local build's, every failure one
``error:`` line before any pipeline is built, and no credential in anything a run writes."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch
from helpers.s3 import S3
from test_train_ddp import torchrun
from test_train_e2e import ROOT, TINY

import pipelines.graph
from eval.cli import main as eval_main
from pipelines.stats import main as stats_main
from shards.base.errors import run_cli
from shards.format.manifest import read_manifest
from train.__main__ import main as train_main
from train.logger import read_metrics

CONFIG = str(ROOT / "configs" / "demo_customcnn.toml")


@pytest.fixture(scope="module")
def build(synth_shards, s3: S3) -> tuple[Path, str]:
    local = synth_shards(task="single", tracks=24, seconds=3.0, sample_rate=8000)
    return local, s3.put_build(local, "train-build")


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The shard cache of every run here (a checkpoint's own loader config names none)."""
    monkeypatch.setenv("MUSICSTREAM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _no_secrets(s3: S3, *texts: str, folder: Path | None = None) -> None:
    blobs = list(texts)
    if folder is not None:
        blobs += [p.read_bytes().decode("latin-1") for p in folder.rglob("*") if p.is_file()]
    for secret in s3.secrets():
        assert not any(secret in b for b in blobs), "a credential leaked into the run's output"


@pytest.mark.slow
def test_two_gloo_ranks_train_from_s3(build, s3: S3, tmp_path: Path) -> None:
    local, url = build
    out = tmp_path / "run"
    proc = torchrun(
        ["--config", CONFIG, f"--data.shards={url}", f"--train.out={out}", "--train.epochs=1"]
        + [f"--{t}" for t in TINY]
    )
    rows = read_metrics(out)
    val = [r for r in rows if "val/track/count" in r][-1]
    assert val["val/track/count"] == read_manifest(local).split("validation").tracks  # each track once
    ckpt = torch.load(sorted((out / "checkpoints").glob("step_*.pt"))[-1], weights_only=True)
    assert ckpt["loader"]["epoch"] == 1  # the ranks ended the epoch (one plan position for both)...
    n = read_manifest(local).split("train").num_samples
    assert ckpt["step"] == (n // 2) // 4 > 0  # ...after the same batches: floor(N / ranks / tracks per batch)
    waits = [r for r in rows if "data/slowest_rank" in r]
    assert waits and all({"data/wait_ms/rank0", "data/wait_ms/rank1"} <= r.keys() for r in waits)
    assert all(r["data/slowest_rank"] in (0, 1) for r in waits)
    _no_secrets(s3, proc.stdout, proc.stderr, folder=out)


def test_eval_metrics_from_s3_equal_local(build, s3: S3, tmp_path: Path, capsys) -> None:
    local, url = build
    out = tmp_path / "run"
    assert train_main(["--config", CONFIG, f"--data.shards={url}", f"--train.out={out}",
                       "--train.epochs=1", *[f"--{t}" for t in TINY]]) == 0  # fmt: skip
    best = str(out / "checkpoints" / "best.pt")
    metrics = {}
    machine = {"local": [], "s3": [f"--loader.cache_dir={tmp_path / 'eval-cache'}", "--loader.cache_gb=1",
                                  "--loader.eval_tracks_per_batch=3", "--loader.num_threads=1"]}  # fmt: skip
    for name, shards in (("local", str(local)), ("s3", url)):
        args = ["--checkpoint", best, "--shards", shards, "--out", str(tmp_path / name), *machine[name]]
        assert eval_main(args) == 0
        metrics[name] = json.loads((tmp_path / name / "metrics.json").read_text())
    assert metrics["s3"] == metrics["local"] and metrics["local"]
    assert list((tmp_path / "eval-cache").glob("*/test/rank0/*.tar"))  # --loader.cache_dir was used
    _no_secrets(s3, *capsys.readouterr(), folder=out)


def _one_error_line(capsys, url: str, *needles: str) -> None:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {url}"), err
    assert all(n in err for n in needles), err


@pytest.fixture
def no_pipeline(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*a, **k):
        raise AssertionError("a pipeline was built before the error")

    monkeypatch.setattr(pipelines.graph, "build_pipeline", refuse)
    monkeypatch.setattr("pipelines.music_loader.build_pipeline", refuse)


def _train(url: str, tmp_path: Path) -> int:
    return run_cli(
        train_main,
        [
            "--config",
            CONFIG,
            f"--data.shards={url}",
            f"--train.out={tmp_path / 'x'}",
            *[f"--{t}" for t in TINY],
        ],
    )


def test_manifest_naming_missing_objects(build, s3: S3, tmp_path, capsys, no_pipeline) -> None:
    local, _ = build
    url = s3.put_build(local, "incomplete")
    gone = read_manifest(local).split("train").shards[-1].tar
    s3.client().delete_object(Bucket=s3.bucket, Key=f"incomplete/{gone}")
    assert _train(url, tmp_path) == 2
    _one_error_line(capsys, f"{url}/manifest.json", "names 1 object(s) that are not in the store", gone)
    assert run_cli(stats_main, [url]) == 2
    _one_error_line(capsys, f"{url}/manifest.json", gone)


def test_store_failures_are_one_line(build, s3: S3, tmp_path, capsys, monkeypatch, no_pipeline) -> None:
    _, url = build
    assert _train("s3://no-such-bucket-y/b", tmp_path) == 2
    _one_error_line(capsys, "s3://no-such-bucket-y/b", "bucket 'no-such-bucket-y' does not exist")
    assert _train(s3.url("nothing-here"), tmp_path) == 2
    _one_error_line(capsys, s3.url("nothing-here"), "no such object or prefix")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    with monkeypatch.context() as m:
        m.setenv("AWS_ENDPOINT_URL", dead)
        assert _train(url, tmp_path) == 2
        _one_error_line(capsys, url, "cannot reach the object store", dead)
    with monkeypatch.context() as m:
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
            m.delenv(name)
        assert _train(url, tmp_path) == 2
        _one_error_line(capsys, url, "no credentials found")
