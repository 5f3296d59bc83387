"""A local S3 server for a test module: ``s3`` fixture (registered in tests/conftest.py).

One moto server per test module, in its OWN process (``shards.bench.local_s3.LocalS3``:
DALI lists/opens S3 objects holding the GIL, so a server thread in the test process
deadlocks), on 127.0.0.1 with a port the OS picks. While the module's tests run, the
environment points every client at it: ``AWS_ENDPOINT_URL``, dummy credentials,
``AWS_REGION``, ``AWS_EC2_METADATA_DISABLED=true``, ``NO_PROXY=127.0.0.1,localhost``, and
no profile or config file of the developer's. A bucket ``S3.bucket`` is created.

DALI makes ONE S3 client per process, from the environment at its first ``s3://`` access, and
keeps it: tests that make DALI itself read ``s3://`` in the pytest process (``loader.remote =
"direct"``) belong in one module, or in a subprocess (torchrun, a CLI run), which gets the
module's environment. Everything else (s3fs, boto3) follows the environment of the moment.

    def test_x(s3: S3, tmp_path):
        url = s3.put_build(local_build, "fma")     # s3://musicstream-test/fma
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from shards.bench.local_s3 import TEST_CREDENTIALS, LocalS3

BUCKET = "musicstream-test"
_UNSET = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL_S3", "AWS_SECURITY_TOKEN")


@dataclass
class S3:
    """The module's server, its bucket, and helpers to put builds there."""

    server: LocalS3
    bucket: str = BUCKET

    @property
    def endpoint(self) -> str:
        return self.server.endpoint

    def url(self, *parts: str) -> str:
        """``s3://BUCKET/part/...``."""
        return "/".join([f"s3://{self.bucket}", *(p.strip("/") for p in parts)])

    def put_build(self, local: str | Path, prefix: str) -> str:
        """Upload a local build folder as is under ``prefix``; returns its URL."""
        return self.server.upload_dir(local, self.url(prefix))

    def client(self) -> Any:
        return self.server.client()

    def secrets(self) -> list[str]:
        """The credential values in the environment: no output may contain any of them."""
        return list(TEST_CREDENTIALS.values())


def s3_environment(server: LocalS3) -> dict[str, str | None]:
    """What the fixture sets (None: removed) so clients use ``server`` and nothing else."""
    env: dict[str, str | None] = {name: None for name in _UNSET}
    env.update(server.env())
    return env


def point_at(server: LocalS3, mp: pytest.MonkeyPatch) -> None:
    """Set (through ``mp``) the environment that makes every client use ``server`` only."""
    for name, value in s3_environment(server).items():
        if value is None:
            mp.delenv(name, raising=False)
        else:
            mp.setenv(name, value)


@pytest.fixture(scope="module")
def s3() -> Iterator[S3]:
    """A moto S3 server (own process, 127.0.0.1) with bucket ``musicstream-test``, and the
    environment pointing at it, for one test module."""
    with LocalS3() as server, pytest.MonkeyPatch.context() as mp:
        point_at(server, mp)
        server.create_bucket(BUCKET)
        assert os.environ["AWS_ENDPOINT_URL"].startswith("http://127.0.0.1:")
        yield S3(server)
