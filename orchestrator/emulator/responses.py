"""The API's answers that are not data: auth checks and the JSON error shape.

Errors look like ``{"error": {"message": str, "type": str[, "field": str]}}``; a 422
names the offending field as a dotted snake_case path (e.g. ``when.cron``).
"""

from __future__ import annotations

import hmac

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse

from orchestrator.wire.models import error_field


def error_response(
    status: int,
    kind: str,
    message: str,
    *,
    field: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """The API's error body: ``{"error": {"message", "type"[, "field"]}}``."""
    error: dict[str, str] = {"message": message, "type": kind}
    if field is not None:
        error["field"] = field
    return JSONResponse({"error": error}, status_code=status, headers=headers)


def authorized(request: Request, api_key: str) -> bool:
    """Whether the request carries ``Authorization: Bearer <api_key>``."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(token.strip().encode(), api_key.encode())


def unauthorized() -> JSONResponse:
    """The 401 answer (it never echoes the key that was sent)."""
    return error_response(401, "authentication_error", "missing or invalid API key")


def invalid(field: str, message: str) -> JSONResponse:
    """A 422 answer naming ``field``."""
    return error_response(422, "invalid_request_error", f"{field}: {message}", field=field)


def invalid_from(exc: ValidationError) -> JSONResponse:
    """The 422 answer for the first error of a failed validation."""
    first = exc.errors()[0]
    return invalid(error_field(tuple(first["loc"])), first["msg"])


def not_found(what: str) -> JSONResponse:
    """A 404 answer for an unknown worker, schedule or file."""
    return error_response(404, "not_found_error", f"{what} not found")


def lost_response() -> JSONResponse:
    """The 502 that stands in for a response lost after the action was performed."""
    return error_response(502, "api_error", "bad gateway: response lost (injected)")
