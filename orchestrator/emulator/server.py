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
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    @property
    def port(self) -> int:
        """The bound port (valid once started)."""
        return self._port

    def start(self) -> None:
        """Start serving and wait until the server accepts connections."""
        if self._thread is not None:
            raise RuntimeError("EmulatorServer already started")
        _quiet_uvicorn()
        # An explicit IPPROTO_TCP matters: asyncio sets TCP_NODELAY only on sockets that
        # say so, and without it every keep-alive response waits ~40 ms (Nagle and
        # delayed ACK).
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self._port))
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
        server = uvicorn.Server(config)
        self._server = server
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="emulator", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + self._start_timeout
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                sock.close()
                raise RuntimeError(f"emulator did not start on {self.url}")
            time.sleep(0.01)

    def stop(self) -> None:
        """End running turns (closing their streams) and stop the server."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        loop = self.state.loop
        if loop is not None and not loop.is_closed():
            # Open streams end with their turn; uvicorn would otherwise wait for them.
            with contextlib.suppress(RuntimeError):  # the loop closed in between
                loop.call_soon_threadsafe(self.state.stop_turns)
        server.should_exit = True
        thread.join(timeout=10)
        self._server = None
        self._thread = None

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
