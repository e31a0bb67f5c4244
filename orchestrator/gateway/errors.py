"""One error shape for every answer that is not a success:
``{"error": {"type", "field", "message"}}``, with the status code that says what happened.

The handlers here turn our typed errors, FastAPI's own validation errors, Starlette's
HTTP errors and anything unexpected (500, logged with its traceback, never sent) into
that shape.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from orchestrator.errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    InputError,
    NotFoundError,
    UnknownIdError,
)
from orchestrator.gateway.links import redact
from orchestrator.store.connection import StoreError

log = logging.getLogger("orchestrator.gateway")

#: status -> the error ``type`` it carries.
TYPES: dict[int, str] = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
    500: "internal_error",
    502: "upstream_error",
    503: "unavailable",
}


class ErrorDetail(BaseModel):
    type: str
    field: str | None
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for these error statuses, all with :class:`ErrorBody`."""
    return {code: {"model": ErrorBody, "description": TYPES[code]} for code in codes}


#: What every authenticated route can answer besides its success.
COMMON = (400, 401, 403, 404, 413, 415, 422, 429, 500, 503)


class ApiError(Exception):
    """An answer to send in the one error shape."""

    def __init__(
        self, status: int, message: str, *, field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:  # fmt: skip
        self.status, self.message, self.field, self.headers = status, message, field, headers
        super().__init__(message)


def not_found(what: str, field: str) -> ApiError:
    return ApiError(404, f"no {what}", field=field)


def error_response(
    status: int, message: str, field: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = {"error": {"type": TYPES.get(status, "error"), "field": field, "message": message}}
    return JSONResponse(body, status_code=status, headers=headers)


def _field_of(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc]
    if len(parts) > 1 and parts[0] in ("body", "query", "path", "header", "cookie"):
        parts = parts[1:]
    return ".".join(parts) or "body"


def install(app: FastAPI) -> None:
    """Register the handlers that give every error the one shape."""

    @app.exception_handler(ApiError)
    async def _api(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.field, exc.headers)

    @app.exception_handler(InputError)
    async def _input(_: Request, exc: InputError) -> JSONResponse:
        return error_response(
            404 if isinstance(exc, UnknownIdError) else 400, exc.message, exc.field
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        if first.get("type") == "json_invalid":
            # Its location is the character where parsing stopped, not a field.
            where = first.get("loc", ())[-1:]
            ctx = first.get("ctx")
            said = ctx.get("error", "") if isinstance(ctx, dict) else ""
            message = (
                f"the body is not valid JSON ({said} at character {where[0]})"
                if (where and said)
                else "the body is not valid JSON"
            )
            return error_response(422, message, "body")
        message = str(first.get("msg", "invalid"))
        return error_response(422, message, _field_of(tuple(first.get("loc", ()))))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        status = exc.status_code if exc.status_code in TYPES else 400
        return error_response(status, str(exc.detail), None, getattr(exc, "headers", None))

    @app.exception_handler(StoreError)
    async def _store(_: Request, exc: StoreError) -> JSONResponse:
        log.error("store unavailable: %s", type(exc).__name__)
        return error_response(503, "the store is not answering; try again", None,
                              {"Retry-After": "1"})  # fmt: skip

    @app.exception_handler(APIError)
    async def _upstream(_: Request, exc: APIError) -> JSONResponse:
        if isinstance(exc, NotFoundError):
            return error_response(404, "the upstream has no such object", None)
        if isinstance(exc, APIConnectionError):
            return error_response(503, "the upstream API is not answering", None)
        status = exc.status_code if isinstance(exc, APIStatusError) else 0
        log.warning("upstream error %s in %s", status, exc.call)
        return error_response(502, f"the upstream API answered {status or 'badly'}", None)

    @app.exception_handler(Exception)
    async def _anything(request: Request, exc: Exception) -> JSONResponse:
        # The traceback goes to the log only; the client learns nothing of the code.
        path = redact(request.url.path)
        log.error("unhandled error on %s %s", request.method, path, exc_info=exc)
        return error_response(500, "internal error", None)
