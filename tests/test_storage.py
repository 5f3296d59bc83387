"""shards.format.storage: one API for a local folder and an s3:// prefix, and one error line per
failure, never a credential (a local moto server in its own process: tests/helpers/s3.py)."""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path

import pytest
from helpers.s3 import S3

from shards.base.errors import run_cli
from shards.bench.local_s3 import TEST_CREDENTIALS, LocalS3
from shards.format import storage


@pytest.fixture(params=["local", "s3"])
def base(request: pytest.FixtureRequest, tmp_path: Path) -> storage.Location:
    """The same tests on a local folder and on a fresh prefix of the module's S3 bucket."""
    if request.param == "local":
        return tmp_path / "store"
    s3: S3 = request.getfixturevalue("s3")
    return s3.url(f"t-{request.node.name.replace('[', '-').rstrip(']')}")


def test_round_trip_is_the_same_locally_and_remotely(base: storage.Location, tmp_path: Path) -> None:
    data = bytes(range(256)) * 1000
    a = storage.join(base, "train", "000000.tar")
    assert storage.is_remote(a) == str(base).startswith("s3://")
    assert not storage.exists(a)
    storage.write_bytes(a, data)
    storage.write_text(storage.join(base, "manifest.json"), '{"x": 1}\n')
    src = tmp_path / "local.bin"
    src.write_bytes(data[:1000])
    storage.upload(src, storage.join(base, "train", "000000.idx"))

    assert storage.exists(a)
    assert storage.read_bytes(a) == data
    assert storage.read_text(storage.join(base, "manifest.json")) == '{"x": 1}\n'
    assert storage.stat(a).size == len(data)
    with storage.open_read(a) as f:
        f.seek(1000)
        assert f.read(10) == data[1000:1010]
    assert storage.list_files(base) == {
        "manifest.json": 9,
        "train/000000.tar": len(data),
        "train/000000.idx": 1000,
    }
    got = storage.download(a, tmp_path / "dl" / "x.tar")
    assert got.read_bytes() == data
    assert sorted(p.name for p in got.parent.iterdir()) == ["x.tar"]  # no temp file left
    storage.delete(a)
    storage.delete(a)  # idempotent
    assert not storage.exists(a)
    assert storage.relative_to(storage.join(base, "train", "000000.idx"), base) == "train/000000.idx"
    assert storage.basename(storage.join(base, "train")) == "train"


def test_sha256_travels_in_object_metadata(s3: S3, tmp_path: Path) -> None:
    src = tmp_path / "x.tar"
    src.write_bytes(b"shard bytes" * 100)
    digest = storage.sha256_file(src)
    assert digest == hashlib.sha256(src.read_bytes()).hexdigest()
    storage.upload(src, s3.url("meta", "x.tar"), sha256=digest)
    storage.upload(src, s3.url("meta", "plain.tar"))
    assert storage.stat(s3.url("meta", "x.tar")) == storage.ObjectInfo(size=1100, sha256=digest)
    assert storage.stat(s3.url("meta", "plain.tar")) == storage.ObjectInfo(size=1100, sha256=None)
    head = s3.client().head_object(Bucket=s3.bucket, Key="meta/x.tar")
    assert head["Metadata"] == {"sha256": digest}  # what any S3 tool shows as x-amz-meta-sha256


def test_urls_with_credentials_or_unknown_schemes_are_refused() -> None:
    with pytest.raises(storage.StorageError, match="credentials in a URL are refused") as e:
        storage.check_location("s3://AKIAXX:topsecretvalue@bucket/prefix")
    assert "topsecretvalue" not in str(e.value) and "AKIAXX" not in str(e.value)
    with pytest.raises(storage.StorageError, match="unsupported URL scheme ftp://"):
        storage.check_location("ftp://host/x")
    with pytest.raises(storage.StorageError, match="no bucket"):
        storage.check_location("s3:///prefix")
    assert storage.check_location("/data/shards") == "/data/shards"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _one_line(e: BaseException, url: str, kind: str, *needles: str) -> str:
    text = str(e)
    assert "\n" not in text and text.startswith(url), text
    assert getattr(e, "kind", None) == kind, (kind, text)
    for needle in needles:
        assert needle in text, (needle, text)
    for secret in TEST_CREDENTIALS.values():
        assert secret not in text
    return text


def test_no_credentials(s3: S3, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in TEST_CREDENTIALS:
        monkeypatch.delenv(name)
    url = s3.url("anything")
    with pytest.raises(storage.StorageError) as e:
        storage.check_access(url)
    _one_line(e.value, url, "credentials", "no credentials found", "AWS_ACCESS_KEY_ID")


def test_endpoint_unreachable(s3: S3, monkeypatch: pytest.MonkeyPatch) -> None:
    dead = f"http://127.0.0.1:{_free_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", dead)
    url = s3.url("anything")
    with pytest.raises(storage.StorageError) as e:
        storage.read_bytes(storage.join(url, "manifest.json"))
    _one_line(e.value, url, "unreachable", "cannot reach the object store", dead, "AWS_ENDPOINT_URL")


def test_bucket_and_prefix_missing(s3: S3) -> None:
    with pytest.raises(FileNotFoundError) as e:
        storage.check_access("s3://no-such-bucket-here/x")
    _one_line(e.value, "s3://no-such-bucket-here/x", "missing", "bucket 'no-such-bucket-here' does not exist")
    url = s3.url("never-written")
    with pytest.raises(FileNotFoundError) as e:
        storage.check_access(url)
    _one_line(e.value, url, "missing", "no such object or prefix")
    storage.check_access(url, must_exist=False)  # a writer's new prefix is fine
    # a bucket whose name is the word "bucket": its empty prefix is still a missing prefix
    named = s3.server.create_bucket("bucket") + "/nothing"
    with pytest.raises(FileNotFoundError) as e:
        storage.check_access(named)
    _one_line(e.value, named, "missing", "no such object or prefix")
    storage.check_access(named, must_exist=False)
    with pytest.raises(FileNotFoundError) as e:
        storage.stat(storage.join(url, "x.tar"))
    _one_line(e.value, url, "missing")
    assert storage.list_files(url) == {}


def test_access_denied_and_rejected_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that checks signatures and IAM policies after its 4 set-up requests: a user
    without a policy is denied; a wrong secret is rejected; neither line holds a secret."""
    with LocalS3(auth_after=4) as server:
        server.create_bucket("locked")
        iam = server.client("iam")
        iam.create_user(UserName="reader")
        key = iam.create_access_key(UserName="reader")["AccessKey"]
        server.client().put_object(Bucket="locked", Key="b/manifest.json", Body=b"{}")
        for name, value in server.env().items():
            monkeypatch.setenv(name, value)
        monkeypatch.delenv("AWS_SESSION_TOKEN")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
        with pytest.raises(storage.StorageError) as e:
            storage.check_access("s3://locked/b")
        text = _one_line(e.value, "s3://locked/b", "denied", "access denied", "s3:GetObject")
        assert key["SecretAccessKey"] not in text and key["AccessKeyId"] not in text
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-value")
        with pytest.raises(storage.StorageError) as e:
            storage.check_access("s3://locked/b")
        text = _one_line(e.value, "s3://locked/b", "rejected", "rejected the credentials")
        assert "wrong-secret-value" not in text


def test_error_reaches_the_user_as_one_line(s3: S3, capsys: pytest.CaptureFixture[str]) -> None:
    def main(argv: list[str] | None) -> int:
        storage.check_access("s3://no-such-bucket-here/build")
        return 0

    assert run_cli(main, []) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: s3://no-such-bucket-here/build: bucket")


def test_redact_removes_environment_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "sekrit-123456")
    assert storage.redact("a sekrit-123456 b s3://u:p@host/x") == "a *** b s3://***@host/x"
