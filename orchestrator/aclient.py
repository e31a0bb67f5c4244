"""Asynchronous client for the Workers API: the same routes and retry policy as
:class:`~orchestrator.client.WorkersClient`, for code that follows many streams at once
on one event loop (the stream follower).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import httpx
from httpx_sse import EventSource
from pydantic import SecretStr

from . import calls
from .calls import Call
from .client import AttemptHook, Update, auth_headers, client_options, transport_error
from .errors import APIError, StreamError, status_error
from .models import Budget, Worker
from .retry import RetryPolicy
from .settings import Settings

__all__ = ["AsyncWorkersClient"]


class AsyncWorkersClient:
    """Non-blocking client; one instance serves many concurrent calls. Close when done."""

    def __init__(
        self,
        base_url: str,
        api_key: str | SecretStr,
        *,
        timeout: float = 30.0,
        connect_timeout: float = 5.0,
        stream_read_timeout: float = 120.0,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        max_connections: int = 2000,
        on_attempt: AttemptHook | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.retry = retry or RetryPolicy()
        self._stream_timeout = httpx.Timeout(
            timeout, connect=connect_timeout, read=stream_read_timeout
        )
        self._http = httpx.AsyncClient(
            base_url=base_url,
            headers=auth_headers(api_key),
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            transport=transport,
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
        )
        self._on_attempt = on_attempt
        self._sleep = sleep

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> AsyncWorkersClient:
        return cls(**{**client_options(settings), **kwargs})

    def __repr__(self) -> str:
        return f"AsyncWorkersClient(base_url={str(self._http.base_url)!r})"

    async def __aenter__(self) -> AsyncWorkersClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def create(
        self, input: str, *, budget: Budget | None = None, idempotency_key: str | None = None
    ) -> Worker:
        call = calls.create(input, budget, idempotency_key=idempotency_key)
        return calls.parse(call, await self._send(call), Worker)

    async def retrieve(self, worker_id: str) -> Worker:
        call = calls.retrieve(worker_id)
        return calls.parse(call, await self._send(call), Worker)

    async def continue_(
        self,
        worker_id: str,
        input: str,
        *,
        budget: Budget | None = None,
        idempotency_key: str | None = None,
    ) -> Worker:
        call = calls.continue_(worker_id, input, budget, idempotency_key=idempotency_key)
        return calls.parse(call, await self._send(call), Worker)

    async def stream_updates(
        self, worker_id: str, *, via_retrieve: bool = False
    ) -> AsyncIterator[Update]:
        """Every stored update, then live ones until the turn ends (see the sync client)."""
        call = calls.stream_updates(worker_id, via_retrieve=via_retrieve)
        response = await self._send(call, stream=True)
        try:
            content_type = response.headers.get("content-type", "")
            if "text/event-stream" not in content_type:
                raise StreamError(f"expected an event stream, got {content_type!r}", call=call.name)
            index = 0
            try:
                async for event in EventSource(response).aiter_sse():
                    yield Update(index, calls.decode_event(call, event.data))
                    index += 1
            except httpx.TransportError as exc:
                raise StreamError(
                    f"stream broken after {index} events ({type(exc).__name__})", call=call.name
                ) from None
        finally:
            await response.aclose()

    async def _send(self, call: Call, *, stream: bool = False) -> httpx.Response:
        request = self._http.build_request(
            call.method,
            call.path,
            json=call.json,
            params=call.params,
            headers=call.headers,
            timeout=self._stream_timeout if stream else httpx.USE_CLIENT_DEFAULT,
        )
        retries = 0
        while True:
            started = time.monotonic()
            headers: Mapping[str, str] = {}
            try:
                response = await self._http.send(request, stream=stream)
            except httpx.TransportError as exc:
                self._record(call, 0, started)
                error: APIError = transport_error(call, exc)
            else:
                self._record(call, response.status_code, started)
                if response.is_success:
                    return response
                await response.aread()
                await response.aclose()
                error = status_error(call.name, response.status_code, calls.response_body(response))
                headers = response.headers
                if not self.retry.should_retry_status(response.status_code, headers):
                    raise error
            if retries >= self.retry.max_retries:
                raise error
            retries += 1
            await self._sleep(self.retry.delay(retries, headers))

    def _record(self, call: Call, status: int, started: float) -> None:
        if self._on_attempt is not None:
            self._on_attempt(call.name, status, time.monotonic() - started)
