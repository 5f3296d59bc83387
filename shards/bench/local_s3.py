"""Tool, not library: a local S3 server for tests and benchmarks (moto, in its own process).

DALI's S3 client lists and opens objects holding the GIL, so a server thread inside the
reading process stalls with it: the server runs in another process (``ThreadedMotoServer``
on 127.0.0.1, port 0; the port is read back from its first line of output). Nothing here
sends traffic anywhere but 127.0.0.1. Every request the server answers is logged by werkzeug
to a file, so :meth:`LocalS3.requests` counts what a reader really asked for.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

_SERVER = """
import os, sys, time
from moto.server import ThreadedMotoServer
from moto.s3.responses import S3Response

_put = S3Response.put_object
_REFUSED = (b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>NotImplemented</Code><Message>A header "
            b"you provided implies functionality that is not implemented</Message><Header>If-None-Match</Header></Error>")

def put_object(self):  # faults a test asks for (LocalS3's put_delay, refuse_conditional)
    key = self.parse_key_name()
    delay = float(os.environ.get("MUSICSTREAM_S3_PUT_DELAY", "0"))
    if delay and os.environ.get("MUSICSTREAM_S3_SLOW_KEYS", "") in key:
        time.sleep(delay)
    if os.environ.get("MUSICSTREAM_S3_REFUSE_CONDITIONAL") and self.headers.get("If-None-Match"):
        return 501, {"Content-Type": "application/xml"}, _REFUSED
    return _put(self)

S3Response.put_object = put_object
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=True)
server.start()
print("PORT", server.get_host_and_port()[1], flush=True)
sys.stdin.read()  # until the parent closes the pipe (or dies)
server.stop()
"""

TEST_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "AKIAMUSICSTREAMTEST0",
    "AWS_SECRET_ACCESS_KEY": "musicstream-test-secret-never-printed",
    "AWS_SESSION_TOKEN": "musicstream-test-session-token-never-printed",
}
"""Dummy credentials, distinctive so tests can search every output for them."""

_REQUEST = re.compile(
    r'"(?:\x1b\[[\d;]*m)*(GET|PUT|HEAD|POST|DELETE) (\S+) HTTP/[\d.]+(?:\x1b\[[\d;]*m)*" (\d{3})'
)


class LocalS3:
    """A moto S3 server in a subprocess; ``env()`` is what a client sets to use it.

    ``auth_after``: moto's ``INITIAL_NO_AUTH_ACTION_COUNT``: after that many requests the server
    checks signatures and IAM policies (for access-denied and bad-credential tests).
    ``put_delay``: seconds every PUT of a key containing ``slow_keys`` waits before it is
    handled (a slow store); ``refuse_conditional``: a PUT with ``If-None-Match`` is answered
    501 NotImplemented, as S3-compatible servers without conditional writes answer it.
    """

    def __init__(
        self,
        *,
        auth_after: int | None = None,
        put_delay: float = 0.0,
        slow_keys: str = "",
        refuse_conditional: bool = False,
    ) -> None:
        self._log = Path(tempfile.mkstemp(prefix="musicstream-s3-", suffix=".log")[1])
        env = dict(os.environ)
        if auth_after is not None:
            env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(auth_after)
        env["MUSICSTREAM_S3_PUT_DELAY"], env["MUSICSTREAM_S3_SLOW_KEYS"] = str(put_delay), slow_keys
        if refuse_conditional:
            env["MUSICSTREAM_S3_REFUSE_CONDITIONAL"] = "1"
        with open(self._log, "w") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", _SERVER],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                env=env,
            )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        while line and not line.startswith("PORT "):  # moto's own "Starting a new Thread..." line
            line = self._proc.stdout.readline()
        if not line.startswith("PORT "):
            why = self._log.read_text(errors="replace")[-2000:]
            self.stop()
            raise RuntimeError(f"moto server did not start: {line!r} {why}")
        self.port = int(line.split()[1])
        threading.Thread(target=self._proc.stdout.read, daemon=True).start()  # never let the pipe fill
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """Variables that point botocore, s3fs and DALI at this server, with dummy credentials and
        no instance-metadata or proxy lookups."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            **TEST_CREDENTIALS,
            "AWS_REGION": "us-east-1",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        }

    def client(self, service: str = "s3") -> Any:
        """A boto3 client of this server (for setting up buckets, users, objects)."""
        import boto3

        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=TEST_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        )

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return f"s3://{name}"

    def upload_dir(self, local: str | Path, url: str) -> str:
        """Upload every file under ``local`` to ``url`` (``s3://bucket/prefix``), as is: a test's
        build put on the store the way ``aws s3 cp --recursive`` would (no sha256 metadata)."""
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        client, root = self.client(), Path(local)
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            key = "/".join(filter(None, [prefix.strip("/"), path.relative_to(root).as_posix()]))
            client.upload_file(str(path), bucket, key)
        return url

    def requests(self, under: str | None = None) -> Counter[str]:
        """Requests answered so far, by method (``GET``, ``HEAD``, ``PUT``...; ``LIST`` for a GET
        of a bucket listing; ``RANGE`` is not told apart from ``GET``). ``under`` (``s3://bucket/
        prefix``) counts only that build's: another test's downloads still finishing in the
        background are not this one's."""
        counts: Counter[str] = Counter()
        for method, path, _status in self._answered(under):
            listing = method == "GET" and ("list-type" in path or path.rstrip("/").count("/") <= 1)
            counts["LIST" if listing else method] += 1
        return counts

    def requests_at_rest(
        self, under: str | None = None, quiet: float = 2.0, limit: float = 60.0
    ) -> Counter[str]:
        """:meth:`requests` once no new one has been answered for ``quiet`` seconds (at most
        ``limit``): a reader that runs ahead (DALI's prefetch) has filled its queues and stopped,
        so a count no longer depends on when it is taken."""
        last, since, end = self.requests(under), time.monotonic(), time.monotonic() + limit
        while time.monotonic() - since < quiet and time.monotonic() < end:
            time.sleep(0.2)
            now = self.requests(under)
            if now != last:
                last, since = now, time.monotonic()
        return last

    def requests_by_key(self, under: str | None = None) -> Counter[tuple[str, str]]:
        """Requests answered so far, by (method, path without its query): which objects were read."""
        return Counter((method, path.split("?", 1)[0]) for method, path, _ in self._answered(under))

    def _answered(self, under: str | None) -> list[tuple[str, str, str]]:
        found = _REQUEST.findall(self._log.read_text(errors="replace"))
        if under is None:
            return found
        bucket, _, prefix = under.removeprefix("s3://").partition("/")
        prefix = prefix.strip("/")
        return [r for r in found if _inside(r[1], bucket, prefix)]

    def stop(self) -> None:
        if self._proc.poll() is None:
            assert self._proc.stdin is not None
            self._proc.stdin.close()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()
        self._log.unlink(missing_ok=True)

    def __enter__(self) -> LocalS3:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _inside(path: str, bucket: str, prefix: str) -> bool:
    """Whether a request path reads ``prefix``'s objects or lists them (a listing's own
    ``prefix=`` is ``prefix`` or under it, not a sibling such as ``prefix2``)."""
    if path.startswith(f"/{bucket}/{prefix}/"):
        return True
    route, _, query = path.partition("?")
    listed = parse_qs(query).get("prefix", [""])[0].rstrip("/")
    return route.rstrip("/") == f"/{bucket}" and (listed == prefix or listed.startswith(f"{prefix}/"))
