"""The build lease on a shared output: one holder, even when a store stops answering or a PUT
is slow (issue 28). The object-store cases run against moto in its own process."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.s3 import point_at
from helpers.scale import build_args, make_raw

import shards.builder.driver as driver
import shards.builder.lock as lock
from shards.bench.local_s3 import LocalS3
from shards.builder.lock import LOCKS, hold_lease
from shards.builder.output import BuildOutput
from shards.cli import main
from shards.format.storage import StorageError

BUCKET = "lease-test"


class FlakyOutput(BuildOutput):
    """A local output whose writes fail (as a store's do when it stops answering) once ``down``."""

    down = False

    def write_text(self, rel: str, text: str) -> None:
        if self.down:
            raise StorageError(f"{self.url(rel)}: cannot reach the object store")
        super().write_text(rel, text)


def test_heartbeat_survives_store_errors_then_the_holder_stops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(lock, "HEARTBEAT_S", 0.02)
    monkeypatch.setattr(lock, "STALE_S", 0.6)
    out = FlakyOutput(tmp_path / "o")
    with caplog.at_level(logging.WARNING), hold_lease(out, "driver") as lease:
        lease.check(out)  # just taken: fine
        out.down = True
        time.sleep(0.2)
        beats = [t for t in threading.enumerate() if t.name == "lease-driver"]
        assert beats and beats[0].is_alive()  # a StorageError (a ValueError) did not end it
        lease.check(out)  # not yet half the stale time without a refresh
        time.sleep(0.25)
        with pytest.raises(ValueError, match=r"lost the build lease driver: not refreshed for \d+ s") as e:
            lease.check(out)
        assert "cannot reach the object store" in str(e.value) and "\n" not in str(e.value)
        out.down = False
        time.sleep(0.1)
        lease.check(out)  # refreshed again
    warned = [r for r in caplog.records if "cannot refresh the build lease" in r.getMessage()]
    assert len(warned) == 1  # once, not once per heartbeat


def test_the_heartbeat_never_writes_over_another_drivers_lease(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lock, "HEARTBEAT_S", 0.02)
    out = BuildOutput(tmp_path / "o")
    with hold_lease(out, "driver") as lease:
        lease_file = tmp_path / "o" / LOCKS / "driver.json"
        other = json.loads(lease_file.read_text()) | {"token": "theirs", "pid": 4242, "host": "node7"}
        lease_file.write_text(json.dumps(other))  # the lease was deleted by hand and taken by another
        time.sleep(0.2)
        assert json.loads(lease_file.read_text())["token"] == "theirs"  # not refreshed over it
        with pytest.raises(ValueError, match=r"no longer this driver's \(held by pid 4242 on node7\)"):
            lease.check(out)
    assert json.loads(lease_file.read_text())["token"] == "theirs"  # nor removed on the way out


def test_the_holder_confirms_its_token_before_the_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = make_raw(tmp_path / "raw")
    out = tmp_path / "o"
    real = driver.run_shards

    def taken_over(*args: object, **kwargs: object) -> None:
        real(*args, **kwargs)  # type: ignore[arg-type]
        lease_file = out / LOCKS / "driver.json"
        other = json.loads(lease_file.read_text()) | {"token": "another-driver", "host": "elsewhere"}
        lease_file.write_text(json.dumps(other))  # another host took the lease over meanwhile

    monkeypatch.setattr(driver, "run_shards", taken_over)
    assert main([*build_args(raw, out), "--workers", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "is no longer this driver's (held by pid" in err and "elsewhere" in err
    assert not (out / "manifest.json").exists()  # stopped before writing it
    assert json.loads((out / LOCKS / "driver.json").read_text())["token"] == "another-driver"  # kept


@pytest.fixture
def server(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalS3]:
    """A moto server (own process) with the faults the test names in its ``param``."""
    with LocalS3(**request.param) as s3:
        point_at(s3, monkeypatch)
        s3.create_bucket(BUCKET)
        yield s3


def _race(url: str, stagger: float) -> list[str]:
    """Two drivers take the lease ``driver`` on ``url``, the second ``stagger`` s after the first;
    each says "held" or its error, and holds what it got until both have tried."""
    said: list[str] = []
    both = threading.Barrier(2, timeout=60)
    BuildOutput(url).sizes(LOCKS)  # the client made and connected before the clock starts

    def driver_(delay: float) -> None:
        time.sleep(delay)
        try:
            with hold_lease(BuildOutput(url), "driver"):
                said.append("held")
                both.wait()
        except ValueError as e:
            said.append(str(e))
            both.wait()

    threads = [threading.Thread(target=driver_, args=(d,)) for d in (0.0, stagger)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    return said


@pytest.mark.parametrize("server", [{"put_delay": 1.0, "slow_keys": "locks/"}], indirect=True)
def test_a_slow_put_never_gives_two_holders(server: LocalS3) -> None:
    said = _race(f"s3://{BUCKET}/slow", stagger=0.6)  # the second reads before the first PUT lands
    assert said.count("held") == 1, said
    assert any("another build is writing here" in s for s in said)


@pytest.mark.parametrize("server", [{"refuse_conditional": True}], indirect=True)
def test_a_store_refusing_conditional_writes_falls_back(
    server: LocalS3, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"s3://{BUCKET}/plain"
    with caplog.at_level(logging.WARNING), hold_lease(BuildOutput(url), "driver"):
        with pytest.raises(ValueError, match="another build is writing here"):
            with hold_lease(BuildOutput(url), "driver"):
                pass
    refused = [r.getMessage() for r in caplog.records if "refused a conditional write" in r.getMessage()]
    assert len(refused) == 1 and "falling back to write, wait" in refused[0]
    assert server.requests()["PUT"] >= 1
