"""The Starlette app: the ``/api`` routes of the Workers API, exactly as on the wire.

Every ``/api`` request goes through one guard, in this order: bearer auth (401), the
status faults (429/500/503), the slow fault, the handler, then the lost-response fault
for POSTs that succeeded. Each answer is counted in the ledger by route and status.

``Idempotency-Key`` on a POST: the first successful answer is stored under (path, key)
and a repeat gets it back (with ``idempotent-replayed: true``) without acting again; a
repeat of a ``stream: true`` request replays that worker's stream. Failed attempts
(4xx) are not stored, so they can be retried with the same key.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import TypeVar

from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from orchestrator.emulator.config import EmulatorConfig
from orchestrator.emulator.control import control_routes
from orchestrator.emulator.responses import (
    authorized,
    error_response,
    invalid,
    invalid_from,
    lost_response,
    not_found,
    unauthorized,
)
from orchestrator.emulator.sse import UpdateStream
from orchestrator.emulator.state import EmulatorState, IdempotentResult, TurnConflict, WorkerRecord
from orchestrator.wire.models import (
    CreateSchedule,
    CreateWorker,
    ScheduleCancel,
    ScheduledWhen,
    ScheduleList,
)

Answer = Response | UpdateStream
Handler = Callable[[Request], Awaitable[Answer]]
M = TypeVar("M", bound=BaseModel)


class WorkersApi:
    """Handlers of the ``/api`` routes over one :class:`EmulatorState`."""

    def __init__(self, state: EmulatorState) -> None:
        self.state = state

    def routes(self) -> list[Route]:
        """The routes, each wrapped in the guard under its ledger name."""
        w = "/api/workers/{worker_id}"
        table: list[tuple[str, str, str, Handler]] = [
            ("/api/workers", "POST", "create", self.create),
            (w, "GET", "retrieve", self.retrieve),
            (w, "POST", "continue", self.continue_),
            (w + "/stream", "GET", "stream", self.stream),
            (w + "/email", "GET", "email", self.email),
            (w + "/files/{file_path:path}", "GET", "file", self.file),
            (w + "/schedules", "GET", "list_schedules", self.list_schedules),
            (w + "/schedules", "POST", "create_schedule", self.create_schedule),
            (w + "/schedules/{schedule_id}", "DELETE", "cancel_schedule", self.cancel_schedule),
        ]
        return [
            Route(path, self._guarded(name, handler), methods=[method], name=name)
            for path, method, name, handler in table
        ]

    def _guarded(self, name: str, handler: Handler) -> Handler:
        async def endpoint(request: Request) -> Answer:
            self.state.ledger.count_arrival()
            answer = await self._answer(request, handler)
            self.state.ledger.count_request(name, answer.status_code)
            return answer

        return endpoint

    async def _answer(self, request: Request, handler: Handler) -> Answer:
        state = self.state
        if not authorized(request, state.api_key):
            return unauthorized()
        fault = state.faults.status_fault()
        if fault is not None:
            return fault
        delay = state.faults.slow_seconds()
        if delay > 0:
            await asyncio.sleep(delay)
        lose = request.method == "POST" and state.faults.lose_response()
        answer = await handler(request)
        if lose and answer.status_code < 400:
            return lost_response()
        return answer

    # --- helpers -----------------------------------------------------------------

    def _worker(self, request: Request) -> WorkerRecord | None:
        return self.state.workers.get(request.path_params["worker_id"])

    def _stream(self, worker: WorkerRecord) -> UpdateStream:
        cut = self.state.faults.cut_after(worker.planned_end)
        return UpdateStream(worker, cut_after=cut)

    def _replay(self, request: Request) -> Answer | None:
        """The stored first answer for this request's idempotency key, if any."""
        key = request.headers.get("idempotency-key")
        if not key:
            return None
        record = self.state.idempotency.get((request.url.path, key))
        if record is None:
            return None
        if record.stream_worker is not None:
            worker = self.state.workers.get(record.stream_worker)
            if worker is not None:
                return self._stream(worker)
        return Response(
            record.body,
            status_code=record.status,
            media_type="application/json",
            headers={"idempotent-replayed": "true"},
        )

    def _remember(self, request: Request, answer: Answer, stream_worker: str | None) -> None:
        """Store a successful POST's answer under its idempotency key, if it has one."""
        key = request.headers.get("idempotency-key")
        if not key:
            return
        body = answer.body if isinstance(answer, Response) else b""
        self.state.idempotency[(request.url.path, key)] = IdempotentResult(
            answer.status_code, bytes(body), stream_worker
        )

    def _parse(self, request: Request, body: bytes, model: type[M]) -> M | Answer:
        """A POST's body as ``model``, or the answer to give instead: the first answer
        again for a repeated idempotency key, or 422 for a body that does not validate."""
        replay = self._replay(request)
        if replay is not None:
            return replay
        try:
            return model.model_validate_json(body)
        except ValidationError as exc:
            return invalid_from(exc)

    async def _parse_for_worker(
        self, request: Request, model: type[M]
    ) -> tuple[WorkerRecord, M] | Answer:
        """:meth:`_parse` for a POST under a worker, after a 404 for an unknown one."""
        body = await request.body()
        worker = self._worker(request)
        if worker is None:
            return not_found("worker")
        parsed = self._parse(request, body, model)
        return (worker, parsed) if isinstance(parsed, BaseModel) else parsed

    # --- workers -----------------------------------------------------------------

    async def create(self, request: Request) -> Answer:
        """POST /api/workers: a new worker running its first turn."""
        parsed = self._parse(request, await request.body(), CreateWorker)
        if not isinstance(parsed, CreateWorker):
            return parsed
        base_url = str(request.base_url)
        worker = self.state.create_worker(parsed.input, parsed.budget or "standard", base_url)
        return self._started(request, worker, stream=bool(parsed.stream))

    async def continue_(self, request: Request) -> Answer:
        """POST /api/workers/{id}: the worker's next turn (409 while one runs)."""
        read = await self._parse_for_worker(request, CreateWorker)
        if not isinstance(read, tuple):
            return read
        worker, parsed = read
        try:
            self.state.start_turn(worker, parsed.input, parsed.budget or "standard")
        except TurnConflict:
            return error_response(409, "conflict_error", "a turn is already running")
        return self._started(request, worker, stream=bool(parsed.stream))

    def _started(self, request: Request, worker: WorkerRecord, *, stream: bool) -> Answer:
        answer: Answer = self._stream(worker) if stream else JSONResponse(worker.to_wire())
        self._remember(request, answer, worker.id if stream else None)
        return answer

    async def retrieve(self, request: Request) -> Answer:
        """GET /api/workers/{id}: the Worker, or its stream with ``?stream=true``."""
        worker = self._worker(request)
        if worker is None:
            return not_found("worker")
        if request.query_params.get("stream", "").lower() in ("true", "1"):
            return self._stream(worker)
        return JSONResponse(worker.to_wire())

    async def stream(self, request: Request) -> Answer:
        """GET /api/workers/{id}/stream: replay, then live updates, then close."""
        worker = self._worker(request)
        if worker is None:
            return not_found("worker")
        return self._stream(worker)

    async def email(self, request: Request) -> Answer:
        """GET /api/workers/{id}/email: the worker's address as a JSON string."""
        worker = self._worker(request)
        if worker is None:
            return not_found("worker")
        return JSONResponse(f"{worker.id}@workers.example.test")

    async def file(self, request: Request) -> Answer:
        """GET /api/workers/{id}/files/{path}: the file's raw bytes."""
        worker = self._worker(request)
        if worker is None:
            return not_found("worker")
        path: str = request.path_params["file_path"]
        parts = path.split("/")
        # Only exact stored paths are served; anything like traversal is "not found".
        if path.startswith("/") or "\\" in path or any(p in ("", ".", "..") for p in parts):
            return not_found("file")
        stored = worker.files.get(path)
        if stored is None:
            return not_found("file")
        return Response(stored.content, media_type=stored.media_type)

    # --- schedules ---------------------------------------------------------------

    async def list_schedules(self, request: Request) -> Answer:
        """GET /api/workers/{id}/schedules: the worker's live (not cancelled) ones."""
        worker = self._worker(request)
        if worker is None:
            return not_found("worker")
        live = [r.schedule for r in worker.schedules.values() if not r.cancelled]
        return JSONResponse(ScheduleList(schedules=live, worker_id=worker.id).to_wire())

    async def create_schedule(self, request: Request) -> Answer:
        """POST /api/workers/{id}/schedules: store a schedule with its next run time."""
        read = await self._parse_for_worker(request, CreateSchedule)
        if not isinstance(read, tuple):
            return read
        worker, parsed = read
        when = parsed.when
        if isinstance(when, ScheduledWhen) and when.date <= datetime.now(UTC):
            return invalid("when.date", "must be in the future")
        answer = JSONResponse(self.state.create_schedule(worker, parsed).to_wire())
        self._remember(request, answer, None)
        return answer

    async def cancel_schedule(self, request: Request) -> Answer:
        """DELETE /api/workers/{id}/schedules/{sid}: ``{"cancelled": bool}``."""
        worker = self._worker(request)
        if worker is None:
            return not_found("worker")
        cancelled = self.state.cancel_schedule(worker, request.path_params["schedule_id"])
        if cancelled is None:
            return not_found("schedule")
        return JSONResponse(ScheduleCancel(cancelled=cancelled).to_wire())


async def _http_error(request: Request, exc: Exception) -> Response:
    # Unknown paths and methods answer in the API's JSON error shape too.
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    kind = {404: "not_found_error", 405: "invalid_request_error"}.get(status, "api_error")
    detail = exc.detail if isinstance(exc, HTTPException) else "internal error"
    return error_response(status, kind, str(detail))


def create_app(api_key: str, config: EmulatorConfig | None = None) -> Starlette:
    """The emulator as an ASGI app that accepts ``Authorization: Bearer <api_key>``.

    ``app.state.emulator`` is its :class:`~orchestrator.emulator.state.EmulatorState`.
    """
    if not api_key:
        raise ValueError("api_key must not be empty")
    state = EmulatorState(api_key, config or EmulatorConfig())

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state.loop = asyncio.get_running_loop()
        yield
        await state.aclose()

    app = Starlette(
        routes=[*WorkersApi(state).routes(), *control_routes(state)],
        exception_handlers={404: _http_error, 405: _http_error},
        lifespan=lifespan,
    )
    app.state.emulator = state
    return app
