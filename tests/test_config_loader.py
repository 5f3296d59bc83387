"""The one config loader: CLI > TOML > defaults, ``none`` means None, stored configs are lenient."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from eval.config import EvalConfig
from pipelines.config import FeatureConfig
from shards.base.config import from_dict, load_sections, parse_value
from train.config import OptimConfig, TrainConfig, experiment_from_tree, load_experiment


@pytest.mark.parametrize("word", ["none", "null", "None", "NULL"])
def test_none_override_disables_an_optional_field(word: str) -> None:
    assert parse_value(word) is None
    exp = load_experiment(
        None, ["data.synthetic=true", f"--optim.clip_norm={word}", f"train.max_steps={word}"]
    )
    assert exp.optim.clip_norm is None and exp.train.max_steps is None
    exp = load_experiment(
        None, ["data.synthetic=true", f"data.val_split={word}", f"train.best_metric={word}"]
    )
    assert exp.data.val_split is None and exp.train.best_metric is None


def test_none_in_a_toml_file_disables_too(tmp_path: Path) -> None:
    p = tmp_path / "x.toml"
    p.write_text('[data]\nsynthetic = true\n[optim]\nclip_norm = "none"\n[eval]\nthreshold_split = "null"\n')
    exp = load_experiment(p)
    assert exp.optim.clip_norm is None and exp.eval.threshold_split is None


def test_none_keeps_its_meaning_where_it_is_a_word_of_the_field() -> None:
    """amp / normalize / resume spell "none" themselves: the override selects that word."""
    exp = load_experiment(None, ["data.synthetic=true", "train.amp=none", "features.normalize=none",
                                 "checkpoint.resume=none"])  # fmt: skip
    assert (exp.train.amp, exp.features.normalize, exp.checkpoint.resume) == ("none", "none", "none")


def test_none_for_a_required_value_names_the_field() -> None:
    with pytest.raises(ValueError, match=r"\[train\] epochs: none is not allowed"):
        load_experiment(None, ["data.synthetic=true", "train.epochs=none"])


def test_every_section_is_a_dataclass_even_alone(tmp_path: Path) -> None:
    exp = load_experiment(None, ["data.synthetic=true"])
    assert isinstance(exp.features, FeatureConfig) and isinstance(exp.eval, EvalConfig)


def test_unknown_key_names_file_section_and_key(tmp_path: Path) -> None:
    p = tmp_path / "exp.toml"
    p.write_text("[data]\nsynthetic = true\n[eval]\nsplitt = 'test'\n")
    with pytest.raises(ValueError, match=r"exp\.toml \[eval\]: unknown key\(s\) \['splitt'\]"):
        load_experiment(p)
    with pytest.raises(ValueError, match=r"exp\.toml \[eval\]: unknown key"):
        load_sections({"eval": EvalConfig}, p, allow_other=True)


def test_stored_config_with_extra_and_missing_keys_warns_and_takes_defaults() -> None:
    tree = load_experiment(None, ["data.synthetic=true", "optim.lr=0.5"]).to_dict()
    tree["optim"]["renamed_knob"] = 3  # a key a newer version wrote
    del tree["train"]["label_smoothing"]  # a key an older version did not have
    with pytest.raises(ValueError, match="renamed_knob"):
        experiment_from_tree(tree, "ckpt.pt")  # strict by default: a user's file
    tree["retired_section"] = {"x": 1}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exp = experiment_from_tree(tree, "ckpt.pt", strict=False)
    text = " ".join(str(w.message) for w in caught)
    assert "renamed_knob" in text and "retired_section" in text
    assert exp.optim.lr == 0.5 and exp.train.label_smoothing == TrainConfig().label_smoothing


def test_from_dict_types_are_checked_in_lenient_mode_too() -> None:
    with pytest.raises(ValueError, match="lr: expected a number"):
        from_dict(OptimConfig, {"lr": "fast"}, "ckpt [optim]", strict=False)
