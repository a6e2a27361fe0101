"""A real S3 API for tests: moto's server on 127.0.0.1, reached through environment variables.

Nothing is mocked: vidfeat, s3fs and botocore talk HTTP to the server exactly as they would to
AWS. The endpoint and the credentials are set the way a user sets them (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, ...), so the tests also prove no option is needed on the command line.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

# Recognisable, so a test can search logs and store attrs for it.
SECRET_KEY = "vidfeat-test-secret-8f3e1c0d"
ACCESS_KEY = "vidfeat-test-access-key"


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    env: dict[str, str]

    def bucket(self) -> str:
        """A fresh bucket; returns its ``s3://`` URL."""
        import boto3

        name = f"b-{uuid.uuid4().hex[:12]}"
        boto3.client("s3", endpoint_url=self.endpoint, **_client_kwargs()).create_bucket(
            Bucket=name
        )
        return f"s3://{name}"


def _client_kwargs() -> dict[str, str]:
    return {
        "aws_access_key_id": ACCESS_KEY,
        "aws_secret_access_key": SECRET_KEY,
        "region_name": "us-east-1",
    }


# moto's threaded server in a process of its own, on a port the kernel picks as it binds (no
# window in which another test's service could take a port chosen beforehand); it prints the
# port, then serves until its standard input closes. Request lines are not logged.
SERVE = """
import logging, sys
from moto.server import ThreadedMotoServer
logging.getLogger("werkzeug").setLevel(logging.WARNING)
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print(server.get_host_and_port()[1], flush=True)
sys.stdin.read()
server.stop()
"""


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory) -> Iterator[str]:
    pytest.importorskip("s3fs")
    pytest.importorskip("moto.server")
    from s3fs import S3FileSystem

    S3FileSystem.clear_instance_cache()  # none made for another endpoint may be reused
    # Its own process, not a thread of the test process: the server then answers on the other
    # core instead of taking the GIL from the code under test for every request.
    errors = tmp_path_factory.mktemp("moto") / "stderr.txt"
    with errors.open("w") as err:
        server = subprocess.Popen(
            [sys.executable, "-c", SERVE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    try:
        port = server.stdout.readline().strip()
        if not port.isdigit():
            server.wait(timeout=30)
            raise RuntimeError(f"moto's server did not start: {errors.read_text()[-2000:]}")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stdin.close()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.fixture
def s3(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path_factory) -> S3Server:
    """The server's endpoint and credentials in this test's environment (and its children's)."""
    home = tmp_path_factory.mktemp("home")  # no ~/.aws of the machine running the tests
    env = {
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(home / "config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(home / "credentials"),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    import fsspec

    fsspec.config.conf.pop("s3", None)
    # s3fs instances stay cached for the session (the endpoint and credentials are the same
    # for every test): dropping them would leave their HTTP sessions to the garbage collector,
    # which logs "Unclosed client session" into whatever test runs then.
    return S3Server(s3_endpoint, env)
