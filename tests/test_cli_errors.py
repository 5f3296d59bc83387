"""Every CLI: a user mistake is one ``error:`` line on stderr and exit status 2, printed once."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from shards.base.errors import run_cli

ROOT = Path(__file__).resolve().parents[1]


def _cases(tmp: Path) -> dict[str, tuple[Callable[[list[str] | None], int], list[str], str]]:
    from eval.cli import main as eval_main
    from eval.predict import main as predict_main
    from pipelines.bench.long_tracks import main as long_main
    from pipelines.bench.throughput import main as bench_main
    from pipelines.stats import main as stats_main
    from shards.cli import main as shards_main
    from train.__main__ import main as train_main
    from train.bench.families import main as train_bench_main
    from train.bench.step import main as stepbench_main

    return {
        "shards": (
            shards_main,
            ["build", "folder", "--root", str(tmp / "nope"), "--out", str(tmp / "o")],
            "nope",
        ),
        "train": (train_main, ["--data.synthetic=true", "--optim.learning_rate=1"], "learning_rate"),
        "eval": (eval_main, ["--checkpoint", str(tmp / "a.pt"), "--shards", str(tmp)], "a.pt"),
        "pipelines.bench": (bench_main, [str(tmp / "none"), "--pipelines", "dali-cpu"], "none"),
        "pipelines.stats": (stats_main, [str(tmp / "none"), "--features.nmels=3"], "nmels"),
        "train.bench": (train_bench_main, ["--families", "nosuchnet", "--steps", "1"], "nosuchnet"),
        "train.stepbench": (stepbench_main, [str(tmp), "--config", str(tmp / "no.toml")], "no.toml"),
        "eval.predict": (predict_main, ["--checkpoint", str(tmp / "b.pt"), str(tmp / "x.wav")], "b.pt"),
        "pipelines.bench_long": (
            long_main,
            ["throughput", "--dir", str(tmp), "--loader.batchsize=2"],
            "batchsize",
        ),
    }


CLIS = ["shards", "train", "eval", "pipelines.bench", "pipelines.stats", "train.bench", "train.stepbench",
        "eval.predict", "pipelines.bench_long"]  # fmt: skip


@pytest.mark.parametrize("cli", CLIS)
def test_user_error_is_one_line_and_exit_2(cli: str, tmp_path: Path, capsys, monkeypatch) -> None:
    for k in ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(k, raising=False)
    main, argv, word = _cases(tmp_path)[cli]
    assert run_cli(main, argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and word in lines[0], captured.err
    assert "Traceback" not in captured.err


@pytest.mark.parametrize("cli", ["train", "eval", "pipelines.stats"])
def test_other_ranks_stay_silent(cli: str, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    main, argv, _ = _cases(tmp_path)[cli]
    assert run_cli(main, argv) == 2
    assert capsys.readouterr().err == ""


def test_usage_errors_are_one_line_too(capsys, monkeypatch) -> None:
    from train.__main__ import main as train_main

    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(SystemExit) as exc:
        train_main(["--data.synthetic=true", "--epochs"])
    assert exc.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: python -m train: ")


def test_python_m_train_prints_one_error_line(tmp_path: Path) -> None:
    """The real entry point, as torchrun starts it (a rank-0 process and a rank-1 process)."""
    cfg = tmp_path / "x.toml"
    cfg.write_text("[data]\nsynthetic = true\n[train]\nepoch = 3\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    argv = [sys.executable, "-m", "train", "--config", str(cfg)]
    p = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and p.stderr.strip().splitlines() == [
        f"error: {cfg} [train]: unknown key(s) ['epoch']; known keys: "
        + p.stderr.split("known keys: ")[1].strip()
    ]
    rank1 = subprocess.run(argv, cwd=ROOT, env={**env, "RANK": "1", "WORLD_SIZE": "2"}, capture_output=True,
                           text=True, timeout=120)  # fmt: skip
    assert rank1.returncode == 2 and rank1.stderr == ""
