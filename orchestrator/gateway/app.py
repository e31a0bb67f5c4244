"""The gateway's ASGI app: ``create_app()`` (uvicorn's factory), served by
``orchestrator serve``.

Everything the routes share is built in the lifespan (one facade, one token store, one
live-update hub per process). Requests larger than ``GATEWAY_MAX_BODY_BYTES`` are refused
(413) before they are read, so are bodies not sent as JSON (415), both after a caller
without a valid token is refused (401); uvicorn's access log never shows a read link's
token.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import UnionType
from typing import Any, Union, get_args, get_origin

from fastapi import Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orchestrator.facade import Orchestrator
from orchestrator.gateway import apidocs, console, errors, events, jobs, me, money, schedules
from orchestrator.gateway.auth import TokenFirst
from orchestrator.gateway.fanout import Hub
from orchestrator.gateway.links import redact
from orchestrator.gateway.schemas import Health
from orchestrator.gateway.state import Gateway
from orchestrator.gateway.webhooks import router as webhook_routes
from orchestrator.ops.gctune import tune_gc
from orchestrator.settings import Settings, load_settings
from orchestrator.store.listing import JobIndex
from orchestrator.store.live import LiveStore
from orchestrator.store.tokens import TokenStore

#: At shutdown, how long the first-task sends under way are waited for (the re-send
#: sweep makes any left).
SEND_DRAIN_SECONDS = 5.0
HEALTH_PATH = "/healthz"


class _AccessLog(logging.Filter):
    """uvicorn's access log line carries the path: take any link token out of it, and
    leave out a health probe that passed (the stack or a cluster asks every few seconds;
    one that failed is news, and stays)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and len(record.args) >= 5:
            args = list(record.args)
            path = str(args[2])
            passed = isinstance(args[4], int) and args[4] < 400
            if path.partition("?")[0] == HEALTH_PATH and passed:
                return False
            args[2] = redact(path)
            record.args = tuple(args)
        return True


class _BodyLimit:
    """413 for a request body over ``limit`` bytes: by its Content-Length at once, or
    as soon as a chunked body passes it."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            await _too_large(scope, receive, send, self.limit)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _TooLarge
            return message

        try:
            await self.app(scope, counted, send)
        except _TooLarge:
            await _too_large(scope, receive, send, self.limit)


class _TooLarge(Exception):
    pass


class _JsonBody:
    """415 for a ``/v1`` request body not sent as JSON (FastAPI took it as bytes and
    answered 422 "Input should be a valid dictionary", naming no header). A request
    without a body (a bare ``POST …/cancel``) needs no content type."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and str(scope.get("path", "")).startswith("/v1/"):
            headers = dict(scope.get("headers") or [])
            sized = headers.get(b"content-length", b"0") not in (b"", b"0")
            if sized or b"transfer-encoding" in headers:
                given = headers.get(b"content-type", b"").decode("latin-1")
                media = given.partition(";")[0].strip().lower()
                if media != "application/json" and not media.endswith("+json"):
                    said = f"{given[:64]!r}" if given else "none"
                    response = errors.error_response(
                        415, f"send the body as JSON, Content-Type: application/json (got {said})",
                        "content-type",
                    )  # fmt: skip
                    await response(scope, receive, send)
                    return
        await self.app(scope, receive, send)


async def _too_large(scope: Scope, receive: Receive, send: Send, limit: int) -> None:
    response = errors.error_response(413, f"the body is over {limit} bytes", "body")
    await response(scope, receive, send)


def _query_names(route: APIRoute) -> tuple[frozenset[str], frozenset[str]]:
    """The query parameters ``route`` takes, its dependencies' included, and those of
    them that take a list (``?tag=`` repeated)."""
    names: set[str] = set()
    lists: set[str] = set()
    todo = [route.dependant]
    while todo:
        dependant = todo.pop()
        for field in dependant.query_params:
            names.add(field.alias)
            if _takes_list(field.field_info.annotation):
                lists.add(field.alias)
        todo.extend(dependant.dependencies)
    return frozenset(names), frozenset(lists)


def _takes_list(annotation: Any) -> bool:
    origin = get_origin(annotation)
    if origin in (list, tuple, set, frozenset):
        return True
    return origin in (Union, UnionType) and any(_takes_list(a) for a in get_args(annotation))


def _known_query() -> Any:
    """A dependency refusing (422, ``field`` the parameter) a query parameter a ``/v1``
    route does not take: a misspelt filter (``?tags=`` for ``?tag=``) would otherwise be
    ignored, and the list answered unfiltered. One that takes a single value, given
    twice, is refused too (``?limit=500&limit=1`` was answered with the last). The
    console's page and the health check take whatever a browser or a probe adds."""
    known: dict[int, tuple[frozenset[str], frozenset[str]]] = {}

    async def check(request: Request) -> None:
        route = request.scope.get("route")
        if not isinstance(route, APIRoute) or not request.query_params:
            return
        if not route.path.startswith("/v1/"):
            return
        found = known.get(id(route))
        if found is None:
            found = known[id(route)] = _query_names(route)
        names, lists = found
        for name in request.query_params:
            if name not in names:
                takes = ", ".join(sorted(names)) or "none"
                raise errors.ApiError(
                    422, f"this route takes no such query parameter (it takes: {takes})",
                    field=name[:64],
                )  # fmt: skip
            if name not in lists and len(request.query_params.getlist(name)) > 1:
                raise errors.ApiError(422, "is given more than once", field=name)

    return Depends(check)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The gateway app; settings from the environment unless given."""
    settings = settings or load_settings()
    logging.getLogger("uvicorn.access").addFilter(_AccessLog())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        orch = Orchestrator(settings)
        orch.app.conf.task_send_sent_event = settings.gateway_task_sent_events
        assert settings.redis_url is not None  # the facade has refused otherwise
        live = LiveStore.from_url(
            settings.redis_url, settings.key_prefix, settings.store_cells, settings.fair_share_tag
        )
        hub = Hub(live, settings.gateway_sse_buffer, settings.gateway_sse_keepalive_seconds)
        tokens = live.token_check(settings.gateway_token_cache_seconds)
        gw = Gateway(settings, orch, TokenStore(orch.store), JobIndex(orch.store), hub, tokens,
                     live.job_writer(wake=settings.gateway_send == "relay"))  # fmt: skip
        app.state.gateway = gw
        # A thousand SSE connections are a heap of long-lived objects: at Python's
        # defaults, full collections stalled the loop (and every stream) 0.3-0.8 s.
        tune_gc()
        try:
            yield
        finally:
            await gw.drain(SEND_DRAIN_SECONDS)
            await hub.close()
            orch.close()

    app = FastAPI(
        title="orchestrator",
        version="1",
        description="Jobs, schedules and costs over REST; live updates over SSE.",
        lifespan=lifespan,
        dependencies=[_known_query()],
        docs_url=None,  # apidocs serves them, with assets of ours rather than a CDN's
        redoc_url=None,
    )
    errors.install(app)
    for module in (jobs, events, schedules, money, me):
        app.include_router(module.router)
    app.include_router(webhook_routes)

    @app.get(HEALTH_PATH, response_model=Health, tags=["ops"],
             responses=errors.responses(503, 500))  # fmt: skip
    async def healthz() -> Any:
        """200 when Redis answers; 503 otherwise."""
        await run_in_threadpool(app.state.gateway.orch.store.ping)
        return Health(status="ok")

    apidocs.mount(app)
    console.mount(app)
    app.add_middleware(_JsonBody)
    app.add_middleware(_BodyLimit, limit=settings.gateway_max_body_bytes)
    app.add_middleware(TokenFirst)  # the outermost: a caller without a token is told first
    return app
