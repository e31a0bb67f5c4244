"""Redis over TLS, with a password, for the store and the broker alike: a job runs end to
end through a ``rediss://`` URL, a server certificate from another CA is refused, and no
secret shows up in Redis, the logs or an error.

The redis-server runs with ``--port 0 --tls-port P`` and a CA and server certificate
made here with the ``openssl`` command line. redis-py (sync and asyncio) and kombu's
Redis transport both take ``ssl_cert_reqs`` and ``ssl_ca_certs`` from the URL's query,
so neither the store nor Celery needs anything beyond ``REDIS_URL``.
"""

from __future__ import annotations

import secrets
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from orchestrator.facade import Orchestrator
from orchestrator.ops.redis_server import RedisServer, find_redis_server
from orchestrator.settings import load_settings

from .conftest import Emulator
from .processes import celery_worker, stack_env
from .test_chaos import redis_dump

pytestmark = pytest.mark.slow
PASSWORD = "tls-" + secrets.token_hex(16)


def make_certificates(folder: Path) -> dict[str, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1, signed by it."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    steps = [
        "req -x509 -new -nodes -newkey rsa:2048 -keyout ca.key -out ca.pem -days 2"
        " -subj /CN=orchestrator-test-ca",
        "req -new -nodes -newkey rsa:2048 -keyout server.key -out server.csr -subj /CN=127.0.0.1",
        "x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem"
        " -days 2 -extfile san.ext",
        "req -x509 -new -nodes -newkey rsa:2048 -keyout other.key -out other.pem -days 2"
        " -subj /CN=another-ca",
    ]
    for step in steps:
        subprocess.run(
            ["openssl", *step.split()], cwd=folder, check=True, capture_output=True, timeout=60
        )
    return {name: folder / f"{name}.pem" for name in ("ca", "server", "other")}


class TlsRedis(RedisServer):
    """redis-server listening on TLS only; ready once a TLS handshake and PING succeed."""

    def __init__(self, certs: dict[str, Path]) -> None:
        super().__init__(args=["--requirepass", PASSWORD])
        self.certs = certs

    def command(self) -> list[str]:
        tls = ["--port", "0", "--tls-port", str(self.port), "--tls-auth-clients", "no",
               "--tls-cert-file", str(self.certs["server"]),
               "--tls-key-file", str(self.certs["server"].with_suffix(".key")),
               "--tls-ca-cert-file", str(self.certs["ca"])]  # fmt: skip
        return [*super().command(), *tls]

    def start(self, timeout: float = 10.0) -> TlsRedis:
        self.process = subprocess.Popen(
            self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        context = ssl.create_default_context(cafile=str(self.certs["ca"]))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = (self.data_dir / "redis.log").read_text(errors="replace")
                pytest.skip(f"this redis-server cannot serve TLS: {log[-300:]}")
            try:
                raw = socket.create_connection(("127.0.0.1", self.port), timeout=0.5)
                with context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64).startswith((b"+PONG", b"-NOAUTH")):
                        return self
            except OSError:
                time.sleep(0.05)
        raise AssertionError("TLS redis-server did not start")

    def tls_url(self, ca: Path) -> str:
        return (
            f"rediss://:{PASSWORD}@127.0.0.1:{self.port}/0?ssl_cert_reqs=required&ssl_ca_certs={ca}"
        )


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[TlsRedis]:
    if shutil.which("openssl") is None:
        pytest.skip("no openssl command to make certificates with")
    find_redis_server()
    server = TlsRedis(make_certificates(tmp_path / "certs")).start()
    try:
        yield server
    finally:
        server.cleanup()


def test_a_job_runs_end_to_end_over_tls_with_a_password(
    tls_redis: TlsRedis, emulator: Emulator, key_prefix: str, tmp_path: Path
) -> None:
    url = tls_redis.tls_url(tls_redis.certs["ca"])
    assert redis.Redis.from_url(url).ping()
    with pytest.raises(redis.ConnectionError):  # a server certificate we do not trust
        redis.Redis.from_url(tls_redis.tls_url(tls_redis.certs["other"])).ping()
    env = stack_env(url, key_prefix, emulator.url, emulator.api_key,
                    FOLLOW_LEASE_SECONDS="3", FILES_DIR=str(tmp_path / "files"))  # fmt: skip
    settings = load_settings(
        redis_url=url, key_prefix=key_prefix, workers_api_url=emulator.url,
        workers_api_key=emulator.api_key,
    )  # fmt: skip
    worker = celery_worker(env, tmp_path / "worker.log").start()
    try:
        with Orchestrator(settings) as orch:
            jobs = [orch.submit(f"over tls {i}", tags={"tenant": "tls"}) for i in range(5)]
            for job in jobs:
                done = orch.wait(job.id, timeout=60)
                assert done.status == "completed", (done.status, done.error)
                assert len(list(orch.updates(job.id, block=False))) == 5
            total = orch.costs()["total"]
        assert (
            total["turns"] == 5
            and total["model_cost_micro"] == emulator.ledger()["model_cost_micro"]
        )
    finally:
        worker.stop()
    log = (tmp_path / "worker.log").read_text()
    assert "Connected to rediss://" in log
    dump = list(redis_dump(url))
    for secret in (PASSWORD, emulator.api_key):
        assert not [item for item in dump if secret.encode() in item]
        assert secret not in log
