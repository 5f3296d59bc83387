"""Configs: every shipped TOML loads and names a buildable family; mistakes are clear errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from train.__main__ import main
from train.config import load_experiment
from train.models import resolve_family

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.toml"))


def test_there_is_a_config_per_seed_experiment() -> None:
    names = {p.stem for p in CONFIGS}
    expected = {
        "fma_small_resnet50",
        "fma_small_efficientnet_b2",
        "fma_small_efficientnet_b4",
        "mtat_genre_efficientnet_b4",
        "mtat_tags_efficientnet_b2",
        "ccmusic_efficientnet_b0",
        "ccmusic_ast",
        "ccmusic_customcnn",
        "ccmusic_gbm_pca",
        "ccmusic_customcnn_audio",
        "demo_customcnn",
    }
    assert expected <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_loads_with_data_override(path: Path, tmp_path: Path) -> None:
    exp = load_experiment(path, [f"--data.shards={tmp_path}", "--train.epochs=3"])
    assert exp.data.shards == str(tmp_path) and exp.train.epochs == 3  # a folder or an s3:// URL
    assert exp.features is not None and type(exp.features).__name__ == "FeatureConfig"
    family = resolve_family(exp.model)
    assert family.name == exp.model.family
    assert "Seed" in path.read_text() or "Demo" in path.read_text()  # target documented


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "x.toml"
    p.write_text(text)
    return p


def test_unknown_key_names_section_and_key(tmp_path: Path) -> None:
    p = _write(tmp_path, "[data]\nsynthetic = true\n[optim]\nlearning_rate = 0.1\n")
    with pytest.raises(ValueError, match=r"\[optim\].*learning_rate"):
        load_experiment(p)


def test_unknown_section(tmp_path: Path) -> None:
    p = _write(tmp_path, "[data]\nsynthetic = true\n[modle]\nfamily = 'ast'\n")
    with pytest.raises(ValueError, match="modle"):
        load_experiment(p)


def test_unknown_pipeline_key_is_caught_too(tmp_path: Path) -> None:
    p = _write(tmp_path, "[data]\nsynthetic = true\n[features]\nnmels = 64\n")
    with pytest.raises(ValueError, match="nmels"):
        load_experiment(p)


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("optim.lr=-1", "optim.lr"),
        ("train.amp='fp8'", "amp"),
        ("train.ema_decay=1.5", "train.ema_decay"),
        ("checkpoint.keep_last=0", "checkpoint.keep_last"),
        ("model.dropout=1.0", "model.dropout"),
        ("data.synthetic_shape=[3, 32]", "data.synthetic_shape"),
    ],
)
def test_bad_values_name_the_field(override: str, field: str) -> None:
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        load_experiment(None, ["data.synthetic=true", override])


def test_shards_required_unless_synthetic() -> None:
    with pytest.raises(ValueError, match="shards"):
        load_experiment(None, ["model.family=customcnn"])


def test_hand_built_experiment_names_missing_shards() -> None:
    """An Experiment assembled in code is checked like a loaded one: the error names the key."""
    exp = load_experiment(None, ["data.synthetic=true"])
    with pytest.raises(ValueError, match="data.shards"):
        dataclasses.replace(exp, data=dataclasses.replace(exp.data, synthetic=False))


def test_cli_overrides_win_over_file(tmp_path: Path) -> None:
    p = _write(tmp_path, "[data]\nsynthetic = true\n[optim]\nlr = 0.1\n[train]\nepochs = 5\n")
    exp = load_experiment(p, ["--optim.lr=0.002"])
    assert exp.optim.lr == 0.002 and exp.train.epochs == 5


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.family=nosuchnet", "unknown family 'nosuchnet'"),
        ("model.preset=huge", "not a preset of customcnn"),
    ],
)
def test_bad_model_is_refused_before_any_work(
    override: str, message: str, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(ValueError, match=message):
        main(["--data.synthetic=true", f"--{override}"])


def test_cli_rejects_malformed_override() -> None:
    with pytest.raises(SystemExit):
        main(["--data.synthetic=true", "--epochs"])


def test_print_config(capsys: pytest.CaptureFixture) -> None:
    assert main(["--data.synthetic=true", "--model.family=ast", "--print-config"]) == 0
    assert '"family": "ast"' in capsys.readouterr().out
