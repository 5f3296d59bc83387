"""Credentials never reach a line the user sees: those resolved from a profile (not only the
environment's) and every log line, a library's warnings included (issue 28)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from shards.base.logs import LineFormatter
from shards.format import storage

KEY, SECRET = "AKIAPROFILEONLY12345", "profile-secret-never-printed"


def _line(message: str) -> str:
    record = logging.LogRecord("botocore", logging.WARNING, __file__, 1, "store said: %s", (message,), None)
    return LineFormatter().format(record)


def test_profile_credentials_are_redacted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    creds = tmp_path / "credentials"
    creds.write_text(f"[ci]\naws_access_key_id = {KEY}\naws_secret_access_key = {SECRET}\n")
    for name in (*storage.SECRET_VARS, "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    env = {"AWS_SHARED_CREDENTIALS_FILE": str(creds), "AWS_CONFIG_FILE": os.devnull, "AWS_PROFILE": "ci"}
    env |= {"AWS_EC2_METADATA_DISABLED": "true", "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    storage._filesystem("s3://musicstream-test/x")  # a client made: the chain resolved the profile
    said = f"InvalidAccessKeyId: {KEY} signed with {SECRET}"
    assert storage.redact(said) == "InvalidAccessKeyId: *** signed with ***"
    assert KEY not in _line(said) and SECRET not in _line(said)


def test_the_log_formatter_redacts_environment_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret-never-logged")
    line = _line("retrying with env-secret-never-logged at s3://user:pw@host/x")
    assert line == "warning: store said: retrying with *** at s3://***@host/x"
