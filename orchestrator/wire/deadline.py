"""An overall deadline for an HTTP exchange, not only for each read.

httpx bounds each connect, read and write, so a server that answers one byte a second
never trips a read timeout and can hold a call for as long as it likes. Here every
socket operation of the clients' own transports is bounded by what is left of the
exchange's deadline too::

    with deadline(120.0):
        client.send(request)  # connect + send + headers + body: 120 s at most

The deadline lives in a context variable (per thread, per asyncio task), so one pooled
connection serves calls with different deadlines. Outside a ``deadline`` block (a long
update stream's body) only httpx's own timeouts apply. A passed deadline is an
``httpx.ReadTimeout``, so the retry policy treats it as the timeout it is.
"""

from __future__ import annotations

import ssl
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from typing import Any

import httpcore
import httpx

__all__ = [
    "DeadlinePassed",
    "PerThreadTransport",
    "async_transport",
    "deadline",
    "sync_transport",
]

#: (monotonic time it ends, its length in seconds) of the exchange under way, if any.
_DEADLINE: ContextVar[tuple[float, float] | None] = ContextVar("http_deadline", default=None)


class DeadlinePassed(httpcore.ReadTimeout):
    """The exchange's overall deadline passed (mapped by httpx to ``httpx.ReadTimeout``)."""


@contextmanager
def deadline(seconds: float | None) -> Iterator[None]:
    """Bound every socket operation inside the block by ``seconds`` from now in total.

    An enclosing deadline that ends sooner still holds; None adds no bound of its own.
    """
    bound = _DEADLINE.get()
    if seconds is not None:
        at = time.monotonic() + seconds
        if bound is None or at < bound[0]:
            bound = (at, seconds)
    token = _DEADLINE.set(bound)
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def _left(timeout: float | None) -> float | None:
    """``timeout`` shortened to what is left of the deadline; raises once it passed."""
    bound = _DEADLINE.get()
    if bound is None:
        return timeout
    left = bound[0] - time.monotonic()
    if left <= 0:
        raise DeadlinePassed(f"the call's deadline of {bound[1]:g}s passed")
    return left if timeout is None else min(timeout, left)


class _Timeouts:
    """Name the deadline when a shortened timeout is what ran out. A class, not a
    generator-based context manager: it wraps every socket read and write (a tenth of
    the cost; it holds no state, so one instance serves every thread and task)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: Any) -> None:  # fmt: skip
        if kind is not None and issubclass(kind, httpcore.TimeoutException):
            bound = _DEADLINE.get()
            if bound is not None and time.monotonic() >= bound[0]:
                raise DeadlinePassed(f"the call's deadline of {bound[1]:g}s passed") from None


_TIMEOUTS = _Timeouts()


Options = Iterable[Any] | None


class _Stream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        with _TIMEOUTS:
            return self._inner.read(max_bytes, _left(timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        with _TIMEOUTS:
            self._inner.write(buffer, _left(timeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        with _TIMEOUTS:
            return _Stream(self._inner.start_tls(ssl_context, server_hostname, _left(timeout)))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _Backend(httpcore.NetworkBackend):
    def __init__(self, inner: httpcore.NetworkBackend) -> None:
        self._inner = inner

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Options = None,
    ) -> httpcore.NetworkStream:
        with _TIMEOUTS:
            inner = self._inner.connect_tcp(
                host, port, _left(timeout), local_address, socket_options
            )
        return _Stream(inner)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Options = None
    ) -> httpcore.NetworkStream:
        with _TIMEOUTS:
            return _Stream(self._inner.connect_unix_socket(path, _left(timeout), socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class _AsyncStream(httpcore.AsyncNetworkStream):
    def __init__(self, inner: httpcore.AsyncNetworkStream) -> None:
        self._inner = inner

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        with _TIMEOUTS:
            return await self._inner.read(max_bytes, _left(timeout))

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        with _TIMEOUTS:
            await self._inner.write(buffer, _left(timeout))

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        with _TIMEOUTS:
            inner = await self._inner.start_tls(ssl_context, server_hostname, _left(timeout))
        return _AsyncStream(inner)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _AsyncBackend(httpcore.AsyncNetworkBackend):
    def __init__(self, inner: httpcore.AsyncNetworkBackend) -> None:
        self._inner = inner

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Options = None,
    ) -> httpcore.AsyncNetworkStream:
        with _TIMEOUTS:
            inner = await self._inner.connect_tcp(
                host, port, _left(timeout), local_address, socket_options
            )
        return _AsyncStream(inner)

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Options = None
    ) -> httpcore.AsyncNetworkStream:
        with _TIMEOUTS:
            inner = await self._inner.connect_unix_socket(path, _left(timeout), socket_options)
        return _AsyncStream(inner)

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def sync_transport(limits: httpx.Limits) -> httpx.HTTPTransport:
    """httpx's own transport, its sockets bounded by the exchange's deadline.

    httpx 0.28 takes no network backend, so the pool's is wrapped in place
    (``tests/test_bounds.py`` fails if a new httpx/httpcore moves it).
    """
    transport = httpx.HTTPTransport(limits=limits)
    pool: Any = transport._pool
    pool._network_backend = _Backend(pool._network_backend)
    return transport


class _ThreadPool:
    """One thread's pool, held only by that thread's locals: when the thread ends they
    are dropped, and the pool's connections are closed with them."""

    __slots__ = ("__weakref__", "transport")

    def __init__(self, transport: httpx.HTTPTransport) -> None:
        self.transport = transport

    def __del__(self) -> None:
        # A finalizer: at interpreter exit the modules it needs may be gone already.
        with suppress(Exception):
            self.transport.close()


class PerThreadTransport(httpx.BaseTransport):
    """:func:`sync_transport` pools, one for each thread that sends. A worker's pool
    threads each keep their own connections, as a client per thread would, instead of
    queueing on one pool's lock for every request and every returned connection. A
    thread's pool ends with the thread, so an application that starts a thread per
    request does not pile up open connections."""

    def __init__(self, limits: httpx.Limits) -> None:
        self._limits = limits
        self._local = threading.local()
        self._made: weakref.WeakSet[_ThreadPool] = weakref.WeakSet()
        self._lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        pool: _ThreadPool | None = getattr(self._local, "pool", None)
        if pool is None:
            pool = self._local.pool = _ThreadPool(sync_transport(self._limits))
            with self._lock:
                self._made.add(pool)
        return pool.transport.handle_request(request)

    def close(self) -> None:
        with self._lock:
            made = list(self._made)
            self._made.clear()
        for pool in made:
            pool.transport.close()


def async_transport(limits: httpx.Limits, verify: ssl.SSLContext) -> httpx.AsyncHTTPTransport:
    """The asyncio twin of :func:`sync_transport`."""
    transport = httpx.AsyncHTTPTransport(limits=limits, verify=verify)
    pool: Any = transport._pool
    pool._network_backend = _AsyncBackend(pool._network_backend)
    return transport
