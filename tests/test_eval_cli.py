"""``python -m eval``: config precedence, clear input errors, and the end-to-end run."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from eval.cli import check_vocab, main, parse_args
from eval.config import EvalConfig
from shards.base.tasks import TaskSpec
from shards.format.manifest import Manifest, SplitInfo, write_manifest


def test_flags_beat_overrides_beat_toml(tmp_path: Path) -> None:
    toml = tmp_path / "x.toml"
    toml.write_text(
        '[data]\nshards = "from/data"\n[eval]\nsplit = "validation"\nthreshold_split = ""\naggregate = "max"\n'
    )
    cfg = parse_args(["--checkpoint", "a.pt", "b.pt", "--config", str(toml)])
    assert cfg.split == "validation" and cfg.aggregate == "max" and cfg.threshold_split is None
    assert cfg.shards == "from/data" and cfg.checkpoints == [Path("a.pt"), Path("b.pt")]
    cfg = parse_args(
        [
            "--checkpoint",
            "a.pt",
            "--shards",
            "s",
            "--config",
            str(toml),
            "--eval.aggregate=mean",
            "--split",
            "test",
        ]
    )
    assert cfg.aggregate == "mean" and cfg.split == "test" and cfg.shards == "s"


def test_bad_arguments_exit_with_a_message(capsys: pytest.CaptureFixture) -> None:
    for argv, msg in (
        (["--shards", "s"], "no checkpoint"),
        (["--checkpoint", "a.pt"], "no shard folder"),
        (["--checkpoint", "a.pt", "--shards", "s", "--model.x=1"], "unrecognized arguments: --model.x=1"),
    ):
        with pytest.raises(SystemExit):
            parse_args(argv)
        assert msg in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown key"):
        parse_args(["--checkpoint", "a.pt", "--shards", "s", "--eval.nope=1"])
    with pytest.raises(ValueError, match="eval.aggregate"):
        EvalConfig(aggregate="median")  # type: ignore[arg-type]


def _manifest(root: Path, splits: dict[str, int]) -> Path:
    info = {
        s: SplitInfo(num_samples=n, seconds=0.0, min_seconds=0.0, max_seconds=0.0, shards=[])
        for s, n in splits.items()
    }
    m = Manifest(
        source="synth",
        sample_rate=16000,
        codec="pcm16",
        task=TaskSpec(kind="single", classes=["a", "b"]),
        splits=info,
        totals={"input": 0, "written": 0, "rejected": 0},
    )
    write_manifest(root, m)
    return root


@pytest.mark.parametrize(
    ("split", "message"),
    [("test", "split 'test' is empty"), ("nosuch", "no split 'nosuch'; splits are ['test', 'train']")],
)
def test_missing_or_empty_split_is_one_error(
    tmp_path: Path, capsys: pytest.CaptureFixture, split: str, message: str
) -> None:
    shards = _manifest(tmp_path / "shards", {"train": 0, "test": 0})
    ckpt = tmp_path / "m.pt"
    ckpt.write_bytes(b"x")
    assert main(["--checkpoint", str(ckpt), "--shards", str(shards), "--split", split]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_missing_checkpoint_is_one_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    shards = _manifest(tmp_path / "shards", {"test": 0})
    assert main(["--checkpoint", str(tmp_path / "gone.pt"), "--shards", str(shards)]) == 2
    assert "checkpoint(s) not found" in capsys.readouterr().err


def test_vocabulary_mismatch_names_both_sides() -> None:
    a = TaskSpec(kind="single", classes=["rock", "jazz"])
    with pytest.raises(
        ValueError, match=r"ckpt.pt: label vocabulary does not match the shards in s .*'classes'"
    ):
        check_vocab(a, TaskSpec(kind="single", classes=["jazz", "rock"]), Path("ckpt.pt"), Path("s"))
    check_vocab(a, TaskSpec(kind="single", classes=["rock", "jazz"]), Path("ckpt.pt"), Path("s"))


_READY = all(importlib.util.find_spec(m) is not None for m in ("train.checkpoint", "pipelines.loader"))


@pytest.mark.slow
@pytest.mark.skipif(not _READY, reason="needs train.checkpoint and pipelines.loader")
def test_end_to_end_multi_label(tmp_path: Path) -> None:
    """Synthetic audio -> shards -> one epoch of the custom CNN -> python -m eval."""
    from shards.cli import main as shards_main
    from train.__main__ import main as train_main

    raw, shards, run, out = (tmp_path / d for d in ("raw", "shards", "run", "out"))
    assert (
        shards_main(["synth", "--out", str(raw), "--tracks", "16", "--seconds", "3", "--formats", "wav"]) == 0
    )
    build = [
        "build",
        "folder",
        "--root",
        str(raw),
        "--out",
        str(shards),
        "--task",
        "multi",
        "--quiet",
        "--workers",
        "1",
    ]
    assert shards_main([*build, "--sample-rate", "16000"]) == 0
    cfg = str(Path(__file__).parents[1] / "configs" / "demo_customcnn.toml")
    over = [f"--data.shards={shards}", f"--train.out={run}", "--train.epochs=1", "--train.device=cpu"]
    assert train_main(["--config", cfg, *over, "--train.best_metric=track/roc_auc"]) == 0
    ckpt = sorted(run.rglob("*.pt"))[-1]
    rc = main(
        [
            "--checkpoint",
            str(ckpt),
            str(ckpt),
            "--shards",
            str(shards),
            "--out",
            str(out),
            "--eval.device=cpu",
        ]
    )
    assert rc == 0
    data = json.loads((out / "metrics.json").read_text())
    assert data["split"] == "test" and len(data["models"]) == 2  # same checkpoint twice: two rows
    metrics = next(iter(data["models"].values()))
    assert 0.0 <= metrics["metrics"]["track/roc_auc"] <= 1.0
    assert metrics["thresholds"]["split"] == "validation"
    md = (out / "report.md").read_text()
    assert "## Summary" in md and "### per tag" in md
    assert list(out.glob("*_pr_curves.png"))


def test_loader_overrides_set_this_machines_keys(capsys: pytest.CaptureFixture) -> None:
    """``--loader.KEY=VALUE`` as ``python -m train`` takes it, for the keys that belong to the
    machine (cache, reading mode, batch, threads, verify); the model's keys stay the checkpoint's."""
    base = ["--checkpoint", "a.pt", "--shards", "s"]
    cfg = parse_args([*base, "--loader.cache_gb=2.5", "--loader.remote=direct", "--loader.cache_dir=/c",
                      "--loader.eval_tracks_per_batch=2", "--loader.num_threads=1", "--loader.verify=first_open"])  # fmt: skip
    assert cfg.loader == {"cache_gb": 2.5, "remote": "direct", "cache_dir": "/c", "eval_tracks_per_batch": 2,
                          "num_threads": 1, "verify": "first_open"}  # fmt: skip
    for bad, said in (("--loader.chunk_seconds=2", "loader.chunk_seconds: evaluation uses the checkpoint's"),
                      ("--loader.remote=nearby", "--loader remote: 'nearby' is not one of")):  # fmt: skip
        assert main([*base, bad]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and said in err, err
