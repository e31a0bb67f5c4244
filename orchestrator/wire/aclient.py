"""Asynchronous client for the Workers API: the same routes and retry policy as
:class:`~orchestrator.wire.client.WorkersClient`, for code that follows many streams at once
on one event loop (the stream follower).
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
from pydantic import SecretStr

from orchestrator.settings import Settings
from orchestrator.wire import routes
from orchestrator.wire.body import (
    ACCEPT_ENCODING,
    ERROR_BODY_MAX_BYTES,
    aiter_decoded,
    aread_bounded,
)
from orchestrator.wire.client import (
    AttemptHook,
    Attempts,
    Outcome,
    Update,
    auth_headers,
    client_options,
)
from orchestrator.wire.deadline import async_transport, deadline
from orchestrator.wire.http import AsyncClient, build_request
from orchestrator.wire.models import Budget, Worker
from orchestrator.wire.retry import RetryPolicy
from orchestrator.wire.routes import Call
from orchestrator.wire.sse import aiter_events

__all__ = ["AsyncWorkersClient"]


class AsyncWorkersClient:
    """Non-blocking client; one instance serves many concurrent routes. Close when done."""

    def __init__(
        self,
        base_url: str,
        api_key: str | SecretStr,
        *,
        timeout: float = 30.0,
        connect_timeout: float = 5.0,
        stream_read_timeout: float = 120.0,
        deadline: float | None = 120.0,
        event_max_bytes: int = 2**20,
        answer_max_bytes: int = 32 * 2**20,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        max_connections: int = 2000,
        pool_shards: int = 1,
        on_attempt: AttemptHook | None = None,
        throttle: Any = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.retry = retry or RetryPolicy()
        self._deadline = deadline  # of each attempt, whole exchange (see wire.deadline)
        self._event_max_bytes = event_max_bytes
        self._answer_max_bytes = answer_max_bytes
        self._stream_timeout = httpx.Timeout(
            timeout, connect=connect_timeout, read=stream_read_timeout
        )
        # httpcore's pool scans every connection on each request and release, so one
        # pool of a thousand open streams burns the CPU (quadratic). Several small
        # pools, picked by worker id, keep each scan short.
        # Streams pick their pool by worker id, so pools fill unevenly: each may hold
        # twice its share, or a stream waits for a connection of its full pool while
        # others stand idle (5,000 streams on pools sized to their share exactly: live
        # lag p99 12.6 s). The follower's capacity bounds the streams open in all.
        per_shard = max(1, -(-max_connections // pool_shards))
        if pool_shards > 1:
            per_shard *= 2
        # One TLS context for every pool (httpx's default one, built once): each costs
        # ~20 ms of CPU and some memory to build.
        tls = httpx.create_ssl_context()
        limits = httpx.Limits(max_connections=per_shard, max_keepalive_connections=per_shard)
        self._pools = [
            AsyncClient(
                base_url=base_url,
                headers={**auth_headers(api_key), **ACCEPT_ENCODING},
                timeout=httpx.Timeout(timeout, connect=connect_timeout),
                transport=transport or async_transport(limits, tls),
            )
            for _ in range(max(1, pool_shards))
        ]
        self._http = self._pools[0]
        self._next = 0
        self._on_attempt = on_attempt
        # Fleet-wide rate limit (orchestrator.controls.limits.FleetRate or its async twin).
        self._throttle = throttle
        self._sleep = sleep

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> AsyncWorkersClient:
        options = client_options(settings)
        for name in ("file_deadline", "file_max_bytes"):  # no downloads here
            del options[name]
        return cls(**{**options, **kwargs})

    def __repr__(self) -> str:
        return f"AsyncWorkersClient(base_url={str(self._http.base_url)!r})"

    async def __aenter__(self) -> AsyncWorkersClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        for pool in self._pools:
            await pool.aclose()

    def _pool(self, key: str | None) -> AsyncClient:
        if len(self._pools) == 1:
            return self._http
        if key is None:
            self._next = (self._next + 1) % len(self._pools)
            return self._pools[self._next]
        return self._pools[zlib.crc32(key.encode()) % len(self._pools)]

    async def create(
        self, input: str, *, budget: Budget | None = None, idempotency_key: str | None = None
    ) -> Worker:
        call = routes.create(input, budget, idempotency_key=idempotency_key)
        return routes.parse(call, await self._send(call), Worker)

    async def retrieve(self, worker_id: str) -> Worker:
        call = routes.retrieve(worker_id)
        return routes.parse(call, await self._send(call), Worker)

    async def continue_(
        self,
        worker_id: str,
        input: str,
        *,
        budget: Budget | None = None,
        idempotency_key: str | None = None,
    ) -> Worker:
        call = routes.continue_(worker_id, input, budget, idempotency_key=idempotency_key)
        return routes.parse(call, await self._send(call), Worker)

    async def stream_updates(
        self, worker_id: str, *, via_retrieve: bool = False
    ) -> AsyncIterator[Update]:
        """Every stored update, then live ones until the turn ends (see the sync client)."""
        call = routes.stream_updates(worker_id, via_retrieve=via_retrieve)
        response = await self._send(call, stream=True, key=worker_id)
        try:
            routes.check_event_stream(call, response)
            index = 0
            try:
                async for event in aiter_events(
                    aiter_decoded(call, response), self._event_max_bytes
                ):
                    yield Update(index, routes.decode_event(call, event, index))
                    index += 1
            except httpx.TransportError as exc:
                raise routes.stream_broken(call, index, exc) from None
        finally:
            await response.aclose()

    async def _send(
        self, call: Call, *, stream: bool = False, key: str | None = None
    ) -> httpx.Response:
        """Send with retries; returns a successful response (unread if ``stream``)."""
        http = self._pool(key)
        request = build_request(http, call, self._stream_timeout if stream else None)
        attempts = Attempts(call, self.retry, self._on_attempt)
        while True:
            attempts.start()
            if self._throttle is not None:
                await self._throttle.before(call.name)
            try:
                with deadline(self._deadline):  # for a stream: up to its headers
                    # Always streamed: a JSON answer is read here, with a bound.
                    outcome: Outcome = await http.send(request, stream=True)
                    if attempts.succeeded(outcome):
                        if not stream:
                            await aread_bounded(call, outcome, self._answer_max_bytes)
                        return outcome
                    if isinstance(outcome, httpx.Response):
                        await aread_bounded(call, outcome, ERROR_BODY_MAX_BYTES, strict=False)
            except httpx.TransportError as exc:
                outcome = exc
            delay, fleet_wide = attempts.retry_delay(outcome)
            if fleet_wide and self._throttle is not None:
                await self._throttle.rate_limited(delay)  # the whole fleet backs off
            await self._sleep(delay)
