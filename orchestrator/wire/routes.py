"""The routes of the Workers API as request descriptions, shared by the sync and the
async client: what to send for each call and how to read its answer.

Nothing here does I/O. Input is validated with the wire models *before* a request is
built, so bad input raises :class:`~orchestrator.errors.InputError` and nothing is sent.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, TypeAdapter, ValidationError

from orchestrator.errors import InputError, MalformedEventError, StreamError, status_error
from orchestrator.wire.models import (
    WORKER_SCHEDULE_ADAPTER,
    Budget,
    CreateSchedule,
    CreateWorker,
    WorkerSchedule,
    input_error,
)
from orchestrator.wire.sse import Event, truncated

M = TypeVar("M", bound=BaseModel)
_STR_ADAPTER: TypeAdapter[str] = TypeAdapter(str)


@dataclass(frozen=True)
class Call:
    """One HTTP request to make: ``name`` is the client method, used in errors."""

    name: str
    method: str
    path: str
    json: dict[str, Any] | None = None
    params: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)


def validate(model: type[M], data: Mapping[str, Any]) -> M:
    """Validate caller input with a wire model, as an :class:`InputError` naming the field."""
    try:
        return model.model_validate(dict(data))
    except ValidationError as exc:
        raise input_error(exc) from None


def _segment(name: str, value: str) -> str:
    if not isinstance(value, str) or not value or "/" in value or value in (".", ".."):
        raise InputError(name, "must be a non-empty id without '/'")
    return quote(value, safe="")


def _file_path(value: str) -> str:
    parts = value.split("/") if isinstance(value, str) else []
    if not parts or any(p in ("", ".", "..") for p in parts):
        raise InputError("file_path", "must be a relative path without '.' or '..' parts")
    return "/".join(quote(p, safe="") for p in parts)


def _idem(key: str | None) -> dict[str, str]:
    if key is None:
        return {}
    if not key or len(key) > 255 or not key.isprintable():
        raise InputError("idempotency_key", "must be 1-255 printable characters")
    return {"Idempotency-Key": key}


def create(
    input: str, budget: Budget | None, *, stream: bool = False, idempotency_key: str | None
) -> Call:
    body = validate(CreateWorker, {"input": input, "budget": budget, "stream": stream or None})
    return Call("create", "POST", "/api/workers", body.to_wire(), headers=_idem(idempotency_key))


def continue_(
    worker_id: str,
    input: str,
    budget: Budget | None,
    *,
    stream: bool = False,
    idempotency_key: str | None,
) -> Call:
    path = f"/api/workers/{_segment('worker_id', worker_id)}"
    body = validate(CreateWorker, {"input": input, "budget": budget, "stream": stream or None})
    return Call("continue", "POST", path, body.to_wire(), headers=_idem(idempotency_key))


def retrieve(worker_id: str) -> Call:
    return Call("retrieve", "GET", f"/api/workers/{_segment('worker_id', worker_id)}")


def stream_updates(worker_id: str, *, via_retrieve: bool = False) -> Call:
    wid = _segment("worker_id", worker_id)
    if via_retrieve:
        return Call("stream_updates", "GET", f"/api/workers/{wid}", params={"stream": "true"})
    return Call("stream_updates", "GET", f"/api/workers/{wid}/stream")


def retrieve_email(worker_id: str) -> Call:
    return Call("retrieve_email", "GET", f"/api/workers/{_segment('worker_id', worker_id)}/email")


def retrieve_file(worker_id: str, file_path: str) -> Call:
    wid = _segment("worker_id", worker_id)
    return Call(
        "retrieve_file",
        "GET",
        f"/api/workers/{wid}/files/{_file_path(file_path)}",
        headers={"Accept": "application/octet-stream"},
    )


def list_schedules(worker_id: str) -> Call:
    wid = _segment("worker_id", worker_id)
    return Call("list_schedules", "GET", f"/api/workers/{wid}/schedules")


def create_schedule(
    worker_id: str,
    input: str,
    when: Mapping[str, Any] | BaseModel,
    budget: Budget | None,
    *,
    idempotency_key: str | None,
) -> Call:
    wid = _segment("worker_id", worker_id)
    when_data = when.model_dump(by_alias=True) if isinstance(when, BaseModel) else dict(when)
    body = validate(CreateSchedule, {"input": input, "when": when_data, "budget": budget})
    return Call(
        "create_schedule",
        "POST",
        f"/api/workers/{wid}/schedules",
        body.to_wire(),
        headers=_idem(idempotency_key),
    )


def cancel_schedule(worker_id: str, schedule_id: str) -> Call:
    wid = _segment("worker_id", worker_id)
    sid = _segment("schedule_id", schedule_id)
    return Call("cancel_schedule", "DELETE", f"/api/workers/{wid}/schedules/{sid}")


# --- reading answers ---------------------------------------------------------------


def response_body(response: httpx.Response) -> Any:
    """The decoded body for an error report: JSON if it parses, else (short) text."""
    try:
        return response.json()
    except (ValueError, RecursionError):  # not JSON, bad UTF-8, or absurdly nested
        return response.text[:500]


def raise_for_status(call: Call, response: httpx.Response) -> None:
    """Raise the typed error for a non-2xx answer (the body must already be read)."""
    if response.is_success:
        return
    raise status_error(call.name, response.status_code, response_body(response))


def parse(call: Call, response: httpx.Response, model: type[M]) -> M:
    """Parse a successful JSON answer into ``model``; a malformed one is a StreamError."""
    try:
        return model.model_validate_json(response.content)
    except (ValidationError, RecursionError) as exc:
        if isinstance(exc, RecursionError):
            raise StreamError("malformed answer: nested too deeply", call=call.name) from None
        raise StreamError(f"malformed answer: {exc.errors()[0]['msg']}", call=call.name) from None


def parse_email(call: Call, response: httpx.Response) -> str:
    try:
        return _STR_ADAPTER.validate_json(response.content)
    except ValidationError:
        raise StreamError("malformed answer: expected a JSON string", call=call.name) from None


def decode_event(call: Call, event: Event, index: int) -> Any:
    """The JSON value of SSE event ``index``; an oversize one is its truncated record."""
    if event.truncated:
        return truncated(event)
    try:
        return json.loads(event.data)
    except (ValueError, RecursionError):
        message = f"event {index} is not JSON: {event.data[:80]!r}"
        raise MalformedEventError(message, call=call.name, index=index) from None


def parse_schedule(call: Call, response: httpx.Response) -> WorkerSchedule:
    """Parse one WorkerSchedule (a union, so not a plain model)."""
    try:
        return WORKER_SCHEDULE_ADAPTER.validate_json(response.content)
    except ValidationError as exc:
        raise StreamError(f"malformed answer: {exc.errors()[0]['msg']}", call=call.name) from None


def check_event_stream(call: Call, response: httpx.Response) -> None:
    """Raise :class:`MalformedEventError` (index -1: before any event) unless the
    response is an SSE stream: asking again gets the same answer, so a follower gives
    up after a bounded number of tries, as for an event that is not JSON."""
    content_type = response.headers.get("content-type", "")
    if "text/event-stream" not in content_type:
        message = f"expected an event stream, got {content_type[:80]!r}"
        raise MalformedEventError(message, call=call.name, index=-1)


def stream_broken(call: Call, count: int, exc: httpx.TransportError) -> StreamError:
    """The error for a stream cut after ``count`` events."""
    return StreamError(f"stream broken after {count} events ({type(exc).__name__})", call=call.name)
