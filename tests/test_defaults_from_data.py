"""Defaults that come from the data (an image build's channels and sizes, from its manifest) and
from the checkout (``make gpu-proof DEVICE=cpu`` runs with the project's venv)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from pipelines.bench.throughput import main as bench_main
from pipelines.feature_stack import load_stats
from pipelines.stats import main as stats_main
from shards.base.errors import run_cli
from shards.format.manifest import read_manifest
from train.config import load_experiment

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def images(synth_image_shards: Callable[..., Path]) -> Path:
    """ccmusic-style: mel, cqt and chroma JPEGs of different heights, one build."""
    return synth_image_shards(tracks=24, seconds=3.0)


def _sizes(shards: Path) -> tuple[list[str], int, int]:
    """(channels, tallest, widest) read straight from manifest.json."""
    images = json.loads((shards / "manifest.json").read_text())["images"]
    return (
        list(images),
        max(c["max_size"][0] for c in images.values()),
        max(c["max_size"][1] for c in images.values()),
    )


def test_bench_runs_on_an_image_build_with_the_default_config(images: Path, capsys) -> None:
    argv = [
        str(images),
        "--json",
        "--pipelines",
        "dali-cpu",
        "--workers",
        "1",
        "--warmup",
        "1",
        "--batches",
        "2",
    ]
    assert bench_main(argv) == 0  # no [features]: before, "not ['mfcc'] (features.channels)"
    doc = json.loads(capsys.readouterr().out)
    channels, height, width = _sizes(images)
    assert channels == ["mel", "chroma", "cqt"] and (height, width) == (84, 259)  # the fixture's render
    feats = doc["config"]["features"]
    assert (feats["channels"], feats["n_mels"], feats["image_frames"]) == (channels, height, width)
    assert [r["chunks"] for r in doc["results"]] == [2 * 64]  # the default batch: 16 tracks x 4 crops


def test_a_real_mismatch_is_one_line_naming_the_setting(images: Path, capsys) -> None:
    argv = [str(images), "--pipelines", "dali-cpu", "--workers", "1", '--features.channels=["mel","mfcc"]']
    assert run_cli(bench_main, argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "".join(err) and [line for line in err if line.startswith("error:")] == [
        f"error: {images / 'manifest.json'}: image build has no ['mfcc'] image: set features.channels = "
        "['mel', 'chroma', 'cqt'] (or some of them), or leave it unset to use the build's"
    ]


def test_stats_and_training_resolve_the_same_image_features(images: Path, tmp_path: Path) -> None:
    out = tmp_path / "stats.json"
    assert (
        stats_main([str(images), "--split", "test", "--out", str(out), "--loader.eval_tracks_per_batch=4"])
        == 0
    )
    stats = json.loads(out.read_text())
    exp = load_experiment(
        None, [f"data.shards={images}", "features.normalize=meanstd", f"features.stats_file={out}"]
    )
    f = exp.features
    assert (f.channels, f.n_mels, f.image_frames) == _sizes(images)
    mean, std = load_stats(out, f, computed=False)  # accepted: made for exactly these features (images)
    assert mean.tolist() == pytest.approx([stats["mean"][c] for c in f.channels])
    stored = json.loads(json.dumps(exp.to_dict()))["features"]  # what checkpoints and config.json store
    assert stored["channels"] == ["mel", "chroma", "cqt"] and stored["n_mels"] == 84


def test_explicit_settings_and_presets_win_and_audio_builds_keep_the_defaults(
    images: Path, synth_shards: Callable[..., Path]
) -> None:
    mel = load_experiment(None, [f"data.shards={images}", 'features.channels=["mel"]']).features
    assert (mel.channels, mel.n_mels, mel.image_frames) == (["mel"], 84, 259)  # sizes still the build's
    sized = load_experiment(None, [f"data.shards={images}", "features.n_mels=32"]).features
    assert (sized.channels, sized.n_mels) == (["mel", "chroma", "cqt"], 32)
    preset = load_experiment(None, [f"data.shards={images}", "features.preset=ast_audioset"]).features
    assert (preset.channels, preset.n_mels, preset.image_frames) == (["mel"], 128, 259)
    audio = load_experiment(None, [f"data.shards={synth_shards()}"]).features
    assert (audio.channels, audio.n_mels, audio.image_frames) == (["mel", "mfcc", "chroma"], 256, None)
    assert read_manifest(synth_shards()).kind == "audio"
    unbuilt = load_experiment(ROOT / "configs" / "ccmusic_customcnn.toml", ["data.shards=/nonexistent"])
    assert unbuilt.features.n_mels == 256  # no manifest yet: the file's values, no error


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_gpu_proof_dry_run_uses_the_projects_venv(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    fake = venv / "bin" / "python"
    fake.write_text('#!/bin/sh\necho "venv python $*"\n')
    fake.chmod(0o755)

    def make(*args: str, venv: Path = venv) -> str:
        cmd = ["make", "-s", "gpu-proof", f"VENV={venv}", f"GPU_PROOF_OUT={tmp_path / 'out'}", *args]
        env = {**os.environ, "PY": "true"}  # PY from the environment, as a user's shell may set it
        return subprocess.run(
            cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=True
        ).stdout

    assert "venv python -m train.gpu_proof --device cpu" in make("DEVICE=cpu")
    assert " true -m train.gpu_proof --device cpu" in make(
        "DEVICE=cpu", venv=tmp_path / "none"
    )  # no venv: PY
    assert "venv python" not in make("DEVICE=cpu", "PY=true")  # PY on the command line wins
    assert " true -m train.gpu_proof --device gpu" in make("DEVICE=gpu")  # the device machine: PY
