"""Synchronous client for the Workers API (httpx, pooled, with the retry policy).

    client = WorkersClient("https://api.example", api_key)
    worker = client.create("Summarise today's tickets", budget="low")
    for update in client.stream_updates(worker.id):
        print(update.index, update.data)

Every method validates its input first (:class:`~orchestrator.errors.InputError`,
nothing sent), retries what :mod:`orchestrator.wire.retry` says is retryable, and raises the
typed errors of :mod:`orchestrator.errors`. The API key is sent as a Bearer header and
appears in no error, log line or repr.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections.abc import Callable, Generator, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

import httpx
from pydantic import BaseModel, SecretStr

from orchestrator.errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    RateLimitError,
    ResponseTooLargeError,
    status_error,
)
from orchestrator.settings import Settings
from orchestrator.wire import routes
from orchestrator.wire.body import (
    ACCEPT_ENCODING,
    ERROR_BODY_MAX_BYTES,
    iter_decoded,
    read_bounded,
)
from orchestrator.wire.deadline import PerThreadTransport, deadline
from orchestrator.wire.http import Client, build_request
from orchestrator.wire.models import Budget, ScheduleCancel, ScheduleList, Worker, WorkerSchedule
from orchestrator.wire.retry import RetryPolicy
from orchestrator.wire.routes import Call
from orchestrator.wire.sse import iter_events

__all__ = ["DownloadedFile", "Update", "WorkersClient", "client_options"]

CHUNK_SIZE = 64 * 1024
NO_RETRY = RetryPolicy(max_retries=0)


@dataclass(frozen=True, slots=True)
class Update:
    """One event of an update stream: ``index`` counts events of the connection from 0."""

    index: int
    data: Any


@dataclass(frozen=True)
class DownloadedFile:
    path: Path
    size: int
    sha256: str


def client_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for either client, from the settings."""
    if settings.workers_api_url is None or settings.workers_api_key is None:
        raise APIError("WORKERS_API_URL and WORKERS_API_KEY must be set", call="configure")
    return {
        "base_url": settings.workers_api_url,
        "api_key": settings.workers_api_key,
        "timeout": settings.http_timeout,
        "connect_timeout": settings.http_connect_timeout,
        "stream_read_timeout": settings.stream_read_timeout,
        "deadline": settings.http_deadline,
        "event_max_bytes": settings.event_max_bytes,
        "answer_max_bytes": settings.answer_max_bytes,
        "file_deadline": settings.file_deadline,
        "file_max_bytes": settings.file_max_bytes,
        "retry": RetryPolicy(
            max_retries=settings.max_retries,
            initial_delay=settings.retry_initial_delay,
            max_delay=settings.retry_max_delay,
        ),
    }


def auth_headers(api_key: str | SecretStr) -> dict[str, str]:
    key = api_key.get_secret_value() if isinstance(api_key, SecretStr) else api_key
    return {"Authorization": f"Bearer {key}", "Accept": "application/json"}


def transport_error(call: Call, exc: httpx.TransportError) -> APIConnectionError:
    """A typed error for a failed exchange; httpx's message holds no header values."""
    if isinstance(exc, httpx.TimeoutException):
        why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return APITimeoutError(f"timed out ({why})", call=call.name)
    return APIConnectionError(f"{type(exc).__name__}: {exc}", call=call.name)


# Called after each attempt: (call name, HTTP status or 0 for no answer, seconds).
AttemptHook = Callable[[str, int, float], None]

# What one attempt ended with: a response (any status) or a failed exchange.
Outcome = httpx.Response | httpx.TransportError


class Attempts:
    """The retry decisions for one call, shared by both clients so that each keeps only
    its own I/O (throttle, send, read, sleep) around them."""

    def __init__(self, call: Call, policy: RetryPolicy, on_attempt: AttemptHook | None) -> None:
        self._call = call
        self._policy = policy
        self._on_attempt = on_attempt
        self._retries = 0
        self._started = time.monotonic()

    def start(self) -> None:
        """Mark an attempt's start; called before the throttle, so its wait is timed too."""
        self._started = time.monotonic()

    def succeeded(self, outcome: Outcome) -> TypeGuard[httpx.Response]:
        """Report the attempt to the hook; True if it got a successful response."""
        if self._on_attempt is not None:
            status = outcome.status_code if isinstance(outcome, httpx.Response) else 0
            self._on_attempt(self._call.name, status, time.monotonic() - self._started)
        return isinstance(outcome, httpx.Response) and outcome.is_success

    def retry_delay(self, outcome: Outcome) -> tuple[float, bool]:
        """Seconds to wait before retrying a failed attempt, and whether the whole fleet
        should back off too (a 429); raises the typed error when the failure is final.

        A failed response must be read first: its body goes into the error.
        """
        headers: Mapping[str, str] = {}
        if isinstance(outcome, httpx.TransportError):
            error: APIError = transport_error(self._call, outcome)
        else:
            body = routes.response_body(outcome)
            error = status_error(self._call.name, outcome.status_code, body)
            headers = outcome.headers
            if not self._policy.should_retry_status(outcome.status_code, headers):
                raise error
        if self._retries >= self._policy.max_retries:
            raise error
        self._retries += 1
        return self._policy.delay(self._retries, headers), isinstance(error, RateLimitError)


class WorkersClient:
    """Blocking client for every route of the Workers API. Thread-safe; close when done."""

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
        file_deadline: float | None = 600.0,
        file_max_bytes: int = 100 * 2**20,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
        on_attempt: AttemptHook | None = None,
        throttle: Any = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.retry = retry or RetryPolicy()
        self._stream_timeout = httpx.Timeout(
            timeout, connect=connect_timeout, read=stream_read_timeout
        )
        # Deadlines (whole exchange, see wire.deadline) and size bounds on answers.
        self._deadline = deadline
        self._event_max_bytes = event_max_bytes
        self._answer_max_bytes = answer_max_bytes
        self._file_deadline = file_deadline
        self._file_max_bytes = file_max_bytes
        limits = httpx.Limits(max_connections=100, max_keepalive_connections=20)
        self._http = Client(
            base_url=base_url,
            headers={**auth_headers(api_key), **ACCEPT_ENCODING},
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            transport=transport or PerThreadTransport(limits),
        )
        self._on_attempt = on_attempt
        # Fleet-wide rate limit (orchestrator.controls.limits.FleetRate or its async twin).
        self._throttle = throttle
        self._sleep = sleep

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> WorkersClient:
        return cls(**{**client_options(settings), **kwargs})

    def __repr__(self) -> str:
        return f"WorkersClient(base_url={str(self._http.base_url)!r})"

    def __enter__(self) -> WorkersClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # --- the routes ----------------------------------------------------------------

    def create(
        self, input: str, *, budget: Budget | None = None, idempotency_key: str | None = None
    ) -> Worker:
        """Create a worker and start its first turn."""
        return self._json(routes.create(input, budget, idempotency_key=idempotency_key), Worker)

    def create_streaming(
        self, input: str, *, budget: Budget | None = None, idempotency_key: str | None = None
    ) -> Iterator[Update]:
        """Create a worker with ``stream: true``: its updates, as they come."""
        call = routes.create(input, budget, stream=True, idempotency_key=idempotency_key)
        return self._events(call)

    def retrieve(self, worker_id: str) -> Worker:
        """The worker's current snapshot."""
        return self._json(routes.retrieve(worker_id), Worker)

    def continue_(
        self,
        worker_id: str,
        input: str,
        *,
        budget: Budget | None = None,
        idempotency_key: str | None = None,
    ) -> Worker:
        """Start the worker's next turn with a new input."""
        call = routes.continue_(worker_id, input, budget, idempotency_key=idempotency_key)
        return self._json(call, Worker)

    def continue_streaming(
        self,
        worker_id: str,
        input: str,
        *,
        budget: Budget | None = None,
        idempotency_key: str | None = None,
    ) -> Iterator[Update]:
        key = idempotency_key
        call = routes.continue_(worker_id, input, budget, stream=True, idempotency_key=key)
        return self._events(call)

    def stream_updates(
        self, worker_id: str, *, via_retrieve: bool = False, retry: bool = True
    ) -> Generator[Update, None, None]:
        """Every stored update of the worker, then live ones until the turn ends.

        A reconnect starts from update 0 again, so ``Update.index`` is the worker's
        update number. A stream cut mid-way raises :class:`StreamError`. Without
        ``retry`` a failed open raises at once (the caller has someone to hand over to).
        """
        call = routes.stream_updates(worker_id, via_retrieve=via_retrieve)
        return self._events(call, None if retry else NO_RETRY)

    def retrieve_email(self, worker_id: str) -> str:
        """The worker's email address."""
        call = routes.retrieve_email(worker_id)
        response = self._send(call)
        return routes.parse_email(call, response)

    def download_file(
        self, worker_id: str, file_path: str, dest: Path, *, chunk_size: int = CHUNK_SIZE
    ) -> DownloadedFile:
        """Stream a published file to ``dest`` in chunks (never whole in memory).

        The bytes land in a temporary sibling first and are renamed into place, so a
        failed download leaves no partial file at ``dest``. The whole download (every
        attempt and the body) has ``file_deadline`` seconds; a file over
        ``file_max_bytes`` raises :class:`ResponseTooLargeError`, refused by its
        ``Content-Length`` before a byte is read, or cut off when its body passes it.
        """
        call = routes.retrieve_file(worker_id, file_path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        # Not named after dest: a name near the 255-byte limit must still fit.
        tmp = dest.with_name(f".{uuid.uuid4().hex}.part")
        digest, size, cap = hashlib.sha256(), 0, self._file_max_bytes
        try:
            with deadline(self._file_deadline), self._streaming(call) as response:
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > cap:
                    raise ResponseTooLargeError(
                        f"file of {declared} bytes is over the {cap}-byte limit", call=call.name
                    )
                with open(tmp, "wb") as out:
                    try:
                        for chunk in iter_decoded(call, response, chunk_size):
                            size += len(chunk)
                            if size > cap:
                                raise ResponseTooLargeError(
                                    f"file passed the {cap}-byte limit", call=call.name
                                )
                            out.write(chunk)
                            digest.update(chunk)
                    except httpx.TransportError as exc:
                        raise transport_error(call, exc) from None
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        return DownloadedFile(dest, size, digest.hexdigest())

    def list_schedules(self, worker_id: str) -> ScheduleList:
        return self._json(routes.list_schedules(worker_id), ScheduleList)

    def create_schedule(
        self,
        worker_id: str,
        *,
        input: str,
        when: Mapping[str, Any] | BaseModel,
        budget: Budget | None = None,
        idempotency_key: str | None = None,
    ) -> WorkerSchedule:
        """Create an upstream schedule; ``when`` is a When model or its wire dict."""
        call = routes.create_schedule(
            worker_id, input, when, budget, idempotency_key=idempotency_key
        )
        response = self._send(call)
        return routes.parse_schedule(call, response)

    def cancel_schedule(self, worker_id: str, schedule_id: str) -> ScheduleCancel:
        return self._json(routes.cancel_schedule(worker_id, schedule_id), ScheduleCancel)

    # --- plumbing ------------------------------------------------------------------

    def _json(self, call: Call, model: type[routes.M]) -> routes.M:
        return routes.parse(call, self._send(call), model)

    def _send(
        self, call: Call, *, stream: bool = False, policy: RetryPolicy | None = None
    ) -> httpx.Response:
        """Send with retries (``policy``, else the client's); returns a successful response
        (unread if ``stream``).

        Each attempt (for a stream: up to its headers) has ``deadline`` seconds in all;
        a download's own deadline, around the whole download, applies instead.
        """
        request = build_request(self._http, call, self._stream_timeout if stream else None)
        attempts = Attempts(call, policy or self.retry, self._on_attempt)
        while True:
            attempts.start()
            if self._throttle is not None:
                self._throttle.before(call.name)
            try:
                with deadline(self._deadline):
                    # Always streamed: a JSON answer is read here, with a bound.
                    outcome: Outcome = self._http.send(request, stream=True)
                    if attempts.succeeded(outcome):
                        if not stream:
                            read_bounded(call, outcome, self._answer_max_bytes)
                        return outcome
                    if isinstance(outcome, httpx.Response):
                        read_bounded(call, outcome, ERROR_BODY_MAX_BYTES, strict=False)
            except httpx.TransportError as exc:
                outcome = exc
            delay, fleet_wide = attempts.retry_delay(outcome)
            if fleet_wide and self._throttle is not None:
                self._throttle.rate_limited(delay)  # the whole fleet backs off
            self._sleep(delay)

    @contextmanager
    def _streaming(self, call: Call, policy: RetryPolicy | None = None) -> Iterator[httpx.Response]:
        response = self._send(call, stream=True, policy=policy)
        try:
            yield response
        finally:
            response.close()

    def _events(
        self, call: Call, policy: RetryPolicy | None = None
    ) -> Generator[Update, None, None]:
        with self._streaming(call, policy) as response:
            routes.check_event_stream(call, response)
            index = 0
            try:
                for event in iter_events(iter_decoded(call, response), self._event_max_bytes):
                    yield Update(index, routes.decode_event(call, event, index))
                    index += 1
            except httpx.TransportError as exc:
                raise routes.stream_broken(call, index, exc) from None
