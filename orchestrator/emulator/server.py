"""Running the emulator: in the foreground (:func:`serve`) or in a background thread
(:class:`EmulatorServer`, for tests and benchmarks).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from types import TracebackType
from typing import Self

import uvicorn

from orchestrator.emulator.app import create_app
from orchestrator.emulator.config import EmulatorConfig
from orchestrator.emulator.state import EmulatorState


class _QuietCutStreams(logging.Filter):
    # A cut stream ends without its final chunk on purpose; uvicorn reports that as an
    # application error, which is noise here.
    def filter(self, record: logging.LogRecord) -> bool:
        return "returned without completing response" not in record.getMessage()


def _quiet_uvicorn() -> None:
    log = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _QuietCutStreams) for f in log.filters):
        log.addFilter(_QuietCutStreams())


def serve(host: str, port: int, api_key: str, config: EmulatorConfig | None = None) -> None:
    """Serve the emulator on ``host:port`` until interrupted (blocking)."""
    _quiet_uvicorn()
    uvicorn.run(
        create_app(api_key, config),
        host=host,
        port=port,
        log_level="info",
        timeout_graceful_shutdown=5,
        # One worker holds many idle streams; keep the kernel's accept queue deep.
        backlog=4096,
    )


def loopback_socket(port: int = 0) -> socket.socket:
    """A TCP socket bound to ``127.0.0.1:port`` (0: a free port) for uvicorn to serve on;
    bound here, so the caller knows the port before the server starts."""
    # An explicit IPPROTO_TCP matters: asyncio sets TCP_NODELAY only on sockets that
    # say so, and without it every keep-alive response waits ~40 ms (Nagle and
    # delayed ACK).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    return sock


class BackgroundServer:
    """A uvicorn server on a bound socket, run in a daemon thread with its own event
    loop: the emulator's, and the tests' stand-ins for a broken upstream."""

    def __init__(self, config: uvicorn.Config, sock: socket.socket, name: str) -> None:
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [sock]}, name=name, daemon=True
        )

    def start(self, timeout: float) -> bool:
        """Start the thread; True once the server accepts connections, False when the
        thread ended or ``timeout`` seconds passed first (the caller cleans up)."""
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def stop(self, *, force: bool = False) -> None:
        """Ask the server to exit (``force``: without waiting for open connections) and
        wait up to 10 s for its thread."""
        self.server.should_exit = True
        if force:
            self.server.force_exit = True
        self.thread.join(timeout=10)


class EmulatorServer:
    """The emulator on 127.0.0.1 in a background thread with its own event loop.

    Use as a context manager::

        with EmulatorServer("test-key", EmulatorConfig(turn_seconds=0.2)) as emu:
            httpx.post(f"{emu.url}/api/workers", ...)

    ``port=0`` picks a free port; ``url`` tells which. ``__enter__`` returns once the
    server accepts connections (or raises :class:`RuntimeError` after
    ``start_timeout`` seconds); ``__exit__`` ends running turns, which closes open
    streams, and stops the server.
    """

    def __init__(
        self,
        api_key: str = "emulator-test-key",
        config: EmulatorConfig | None = None,
        *,
        port: int = 0,
        start_timeout: float = 10.0,
    ) -> None:
        self.api_key = api_key
        self.app = create_app(api_key, config)
        self.state: EmulatorState = self.app.state.emulator
        self._port = port
        self._start_timeout = start_timeout
        self._running: BackgroundServer | None = None
        self.url = ""

    @property
    def port(self) -> int:
        """The bound port (valid once started)."""
        return self._port

    def start(self) -> None:
        """Start serving and wait until the server accepts connections."""
        if self._running is not None:
            raise RuntimeError("EmulatorServer already started")
        _quiet_uvicorn()
        sock = loopback_socket(self._port)
        self._port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self._port}"
        config = uvicorn.Config(
            self.app,
            log_level="warning",
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=2,
            backlog=4096,
        )
        self._running = BackgroundServer(config, sock, "emulator")
        if not self._running.start(self._start_timeout):
            self.stop()
            sock.close()
            raise RuntimeError(f"emulator did not start on {self.url}")

    def stop(self) -> None:
        """End running turns (closing their streams) and stop the server."""
        running = self._running
        if running is None:
            return
        loop = self.state.loop
        if loop is not None and not loop.is_closed():
            # Open streams end with their turn; uvicorn would otherwise wait for them.
            with contextlib.suppress(RuntimeError):  # the loop closed in between
                loop.call_soon_threadsafe(self.state.stop_turns)
        running.stop()
        self._running = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
