"""Plans with one fingerprint but different shard cuts (a header read that timed out estimates
zero bytes) never mix: the cut is in every commit marker, and a plan is created only if absent
(issue 28)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from helpers.scale import SHARD_MB, build_args, make_raw

import shards.builder.driver as driver
import shards.builder.estimate as estimate
from shards.builder.build_files import PLAN, write_plan
from shards.builder.config import load_build_config
from shards.builder.output import BuildOutput
from shards.builder.plan import BuildPlan, plan
from shards.cli import main


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_raw(tmp_path_factory.mktemp("plans") / "raw")


def _timed_out_plan(raw: Path, out: Path, monkeypatch: pytest.MonkeyPatch) -> BuildPlan:
    """The plan another part makes of the same inputs when every header read times out."""
    cli: dict[str, Any] = dict(source="folder", root=raw, out=out, codec="ogg", workers=1)
    cfg = load_build_config(None, cli | {"shard_size_mb": float(SHARD_MB)})
    with monkeypatch.context() as m:
        m.setattr(estimate, "estimate_record", lambda rec, layout: estimate.Estimate(0, 1))
        return plan(cfg, driver.import_dataset(cfg))


def test_parts_of_plans_with_other_cuts_never_merge(
    raw: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "o"
    args = build_args(raw, out, "--workers", "1")
    assert main(["plan", *args[1:]]) == 0
    first = json.loads((out / PLAN).read_text())
    assert main([*args, "--part", "0/2"]) == 0  # part 0 built from the first plan
    other = _timed_out_plan(raw, out, monkeypatch)
    assert other.fingerprint == first["context"]["fingerprint"]  # same inputs and options...
    assert len(other.shards) != len(first["shards"])  # ...another cut
    write_plan(BuildOutput(out), other)  # a part that planned at the same time wrote it last
    assert main([*args, "--part", "1/2"]) == 0
    capsys.readouterr()
    assert main(["merge", str(out)]) == 2  # part 0's shards belong to the other cut
    err = capsys.readouterr().err.strip()
    assert "planned shards are not built yet" in err and err.count("\n") == 0
    assert main([*args, "--part", "0/2"]) == 0  # rebuilt for this plan
    assert main(["merge", str(out)]) == 0
    totals = json.loads((out / "manifest.json").read_text())["totals"]
    assert totals["input"] == totals["written"] + totals["rejected"] == 14


def test_a_part_uses_the_plan_another_part_created_while_it_planned(
    raw: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "o"
    theirs = _timed_out_plan(raw, out, monkeypatch)
    real = driver.plan

    def racing(*args: Any, **kwargs: Any) -> BuildPlan:
        mine = real(*args, **kwargs)
        write_plan(BuildOutput(out), theirs)  # the other part's plan lands first
        return mine

    monkeypatch.setattr(driver, "plan", racing)
    assert main([*build_args(raw, out, "--workers", "1"), "--part", "0/2"]) == 0
    stored = json.loads((out / PLAN).read_text())
    assert stored["context"]["cut"] == theirs.context.cut  # not overwritten
    markers = [json.loads(p.read_text()) for p in (out / ".build" / "shards").rglob("*.done")]
    assert markers and {m["cut"] for m in markers} == {theirs.context.cut}


def test_a_damaged_plan_is_still_replaced(raw: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    (out / ".build").mkdir(parents=True)
    (out / PLAN).write_text("{not json")  # a plan cut off by a full disk on a non-atomic mount
    assert main([*build_args(raw, out, "--workers", "1")]) == 0
    assert json.loads((out / PLAN).read_text())["context"]["cut"]
