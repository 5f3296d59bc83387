"""A store's failures as ONE line naming the URL and the fix, and never a credential.

``storage.py``'s remote calls run inside ``storage_errors(url)``, which hands any exception to
:func:`explain`: no credentials, endpoint unreachable, bucket or key missing, access denied,
credentials rejected. botocore's exception classes are matched by name, so nothing here imports
a cloud package at import time. :func:`redact` (``shards.base.logs.redact``, which the log
formatter applies too) removes the credential values in use from any text: the environment's,
and those botocore resolved from a profile or instance metadata (:func:`remember_credentials`).
"""

from __future__ import annotations

import importlib

from shards.base.logs import SECRET_VARS, redact, remember_secrets

__all__ = ["SECRET_VARS", "StorageError", "StorageNotFound", "explain", "redact", "remember_credentials"]


class StorageError(ValueError):
    """A store's failure in one line naming the URL and the fix (a user error: ``run_cli`` prints
    it as ``error: ...``). ``kind``: credentials, unreachable, missing, denied, rejected, other."""

    def __init__(self, message: str, kind: str = "other") -> None:
        super().__init__(redact(message))
        self.kind = kind


class StorageNotFound(StorageError, FileNotFoundError):
    """A missing bucket, object or prefix: also a ``FileNotFoundError``, as a missing local file is.
    ``bucket``: the bucket itself is missing (a writer may create a prefix, never a bucket)."""

    def __init__(self, message: str, *, bucket: bool = False) -> None:
        super().__init__(message, "missing")
        self.bucket = bucket


def remember_credentials() -> None:
    """The credentials botocore's chain resolves (environment, profile, instance metadata) join
    what :func:`redact` removes: a key from ``~/.aws/credentials`` is as secret as one from the
    environment. Called when an ``s3://`` client is made (the chain is resolved then anyway)."""
    creds = importlib.import_module("botocore.session").get_session().get_credentials()
    if creds is not None:
        frozen = creds.get_frozen_credentials()
        remember_secrets(frozen.access_key, frozen.secret_key, frozen.token)


def _names(e: BaseException) -> set[str]:
    """Class names of ``e`` and its causes (botocore's are matched by name: no import needed)."""
    out: set[str] = set()
    seen: BaseException | None = e
    while seen is not None and len(out) < 64:
        out |= {c.__name__ for c in type(seen).__mro__}
        seen = seen.__cause__ or seen.__context__
    return out


def explain(e: BaseException, location: object, endpoint: str | None = None) -> StorageError:
    """The one line for a store's exception ``e`` met at ``location`` (URL named, fix given)."""
    if isinstance(e, StorageError):
        return e
    url, names, text = str(location), _names(e), " ".join(str(e).split())
    where = f" at {endpoint}" if endpoint else ""
    if names & {"NoCredentialsError", "PartialCredentialsError", "DefaultCredentialsError"}:
        return StorageError(
            f"{url}: no credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or "
            "AWS_PROFILE; GOOGLE_APPLICATION_CREDENTIALS for gs://)",
            "credentials",
        )
    if names & {"EndpointConnectionError", "ConnectTimeoutError", "ConnectionError", "ClientConnectorError"}:
        return StorageError(
            f"{url}: cannot reach the object store{where} ({text}): check AWS_ENDPOINT_URL "
            "and that the server is up",
            "unreachable",
        )
    low = text.lower()
    if isinstance(e, PermissionError) or "accessdenied" in low.replace(" ", ""):
        if any(s in low for s in ("access key id", "signature", "invalidaccesskeyid", "token")):
            return StorageError(
                f"{url}: the store rejected the credentials{where} ({text}): check "
                "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN or AWS_PROFILE",
                "rejected",
            )
        return StorageError(
            f"{url}: access denied{where} ({text}): the credentials in use may not read (or write) "
            "this bucket/prefix; grant s3:ListBucket and s3:GetObject (s3:PutObject to write)",
            "denied",
        )
    # the store's own words for a missing bucket (boto's code, or s3fs's translation of it);
    # not the word "bucket" alone, which a missing key's path can hold (s3://bucket/nothing)
    no_bucket = "nosuchbucket" in low.replace(" ", "") or "bucket does not exist" in low
    if isinstance(e, FileNotFoundError) or no_bucket:
        bucket = url.split("://", 1)[-1].split("/", 1)[0]
        if no_bucket:
            return StorageNotFound(
                f"{url}: bucket {bucket!r} does not exist{where}: create it or fix the URL", bucket=True
            )
        return StorageNotFound(f"{url}: no such object or prefix{where}")
    return StorageError(f"{url}: {type(e).__name__}: {text}", "other")
