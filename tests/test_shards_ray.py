"""``--executor ray`` on a local 2-CPU Ray (started once for the module, 127.0.0.1 only): the
same manifest and byte-identical shards as the local pool, a Ray worker SIGKILLed mid-task
(retried, the shard still exact), and a task that keeps failing as one error line."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray
from helpers.decode_faults import KILL_MARKER
from helpers.scale import assert_same_build, build_args, make_raw, reference

from shards.builder.ray_executor import kept_signal_handlers
from shards.cli import main

TESTS = Path(__file__).resolve().parent
pytestmark = pytest.mark.slow  # Ray's start-up: a few seconds


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """Ray on this machine, 2 CPUs; its workers decode through ``helpers.decode_faults.kill_worker_once``
    (a no-op unless a ``*killme*`` file has its marker beside it)."""
    restore_signals = kept_signal_handlers()  # ray.init installs its own SIGTERM handler
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            logging_level="ERROR",
            log_to_driver=False,
            runtime_env={"worker_process_setup_hook": "helpers.decode_faults.ray_setup"},
        )
        try:
            yield
        finally:
            ray.shutdown()
            restore_signals()


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_raw(tmp_path_factory.mktemp("ray") / "raw")


@pytest.fixture(scope="module")
def ref(raw: Path) -> Path:
    return reference(raw, raw.parent / "reference")


def test_ray_build_equals_the_local_build(local_ray: None, raw: Path, ref: Path, tmp_path: Path) -> None:
    out = tmp_path / "ray"
    assert main([*build_args(raw, out), "--executor", "ray"]) == 0
    assert_same_build(out, ref)


def test_a_ray_worker_killed_mid_task_is_retried_and_the_shard_is_exact(
    local_ray: None, raw: Path, ref: Path, tmp_path: Path
) -> None:
    (killme,) = (raw / "audio").glob("killme.*")
    marker = Path(f"{killme}{KILL_MARKER}")
    marker.touch()  # the first decode of killme SIGKILLs its Ray worker, mid-shard
    try:
        out = tmp_path / "ray"
        assert main([*build_args(raw, out), "--executor", "ray"]) == 0
        assert not marker.exists()  # the worker was killed (the hook removes the marker first)
        assert_same_build(out, ref)
    finally:
        marker.unlink(missing_ok=True)


def test_a_task_that_keeps_failing_is_one_error_line(
    local_ray: None, raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "ray"
    out.mkdir()
    (out / "validation").write_text("a file where the split folder belongs")
    assert main([*build_args(raw, out), "--executor", "ray"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert (
        "1 shard task(s) failed (validation/000000: [Errno 17] File exists" in err
        and "run the same command again" in err
    )
    assert not (out / "manifest.json").exists() and list((out / "train").glob("*.tar"))  # the rest committed
