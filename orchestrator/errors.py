"""The orchestrator's exceptions: one small, typed hierarchy.

Every error a caller can act on derives from :class:`OrchestratorError`. Errors from
the upstream API carry the call that failed, the HTTP status and the response body;
errors about the caller's own input name the offending field. None of them ever
carries the API key.
"""

from __future__ import annotations

from typing import Any

from orchestrator.wire.retry import retryable_status

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "ConfigError",
    "ConflictError",
    "InputError",
    "InternalServerError",
    "JobEnded",
    "MalformedEventError",
    "NotFoundError",
    "OrchestratorError",
    "PermissionDeniedError",
    "RateLimitError",
    "ResponseTooLargeError",
    "StreamError",
    "UnknownIdError",
    "UnprocessableEntityError",
]


class OrchestratorError(Exception):
    """Base class of every error raised on purpose by this package."""


class ConfigError(OrchestratorError):
    """A setting is missing or invalid; ``variable`` names the environment variable."""

    def __init__(self, variable: str, message: str) -> None:
        self.variable = variable
        super().__init__(f"{variable}: {message}")


class InputError(OrchestratorError, ValueError):
    """The caller's input was rejected before anything was sent or stored.

    ``field`` names the offending field (dotted for nested ones, e.g. ``when.cron``).
    """

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class UnknownIdError(InputError):
    """A well-formed id that names nothing we or the upstream know (the HTTP API
    answers 404 for it, where other refused input is 400)."""


class JobEnded(OrchestratorError):
    """Raised by a task, after all its cleanup, when its job ended without completing
    (failed, refused, cancelled, or any later end state but ``completed``), so that
    Flower shows the task as FAILURE with the reason. Never retried; the message is
    acked (``task_acks_on_failure_or_timeout``) and never redelivered."""

    def __init__(self, job_id: str, status: str, reason: str = "") -> None:
        # Positional args only: the exception is rebuilt from them (pickled between
        # prefork processes, shown as its repr in task events).
        super().__init__(job_id, status, reason)
        self.job_id, self.status, self.reason = job_id, status, reason

    def __str__(self) -> str:
        return f"job {self.job_id} {self.status}: {self.reason or 'no reason given'}"


class APIError(OrchestratorError):
    """Any failure talking to the Workers API. ``call`` names the client method."""

    def __init__(self, message: str, *, call: str) -> None:
        self.call = call
        super().__init__(f"{call}: {message}")


class APIConnectionError(APIError):
    """The request never got an HTTP answer (refused, reset, DNS, TLS...)."""


class APITimeoutError(APIConnectionError):
    """The request timed out."""


class StreamError(APIError):
    """An update stream broke or carried something that is not an SSE event of JSON."""


class MalformedEventError(StreamError):
    """An event of an update stream whose data is not JSON; ``index`` is its place in
    the stream (the worker's update number), -1 when the answer is no event stream at
    all. Reconnecting replays the same thing, so a follower retries it a bounded number
    of times only."""

    def __init__(self, message: str, *, call: str, index: int) -> None:
        self.index = index
        super().__init__(message, call=call)


class ResponseTooLargeError(APIError):
    """An answer larger than its bound (``FILE_MAX_BYTES`` for a file). Never retried:
    asking again gets the same bytes."""


class APIStatusError(APIError):
    """The API answered with a non-success status."""

    status_code: int = 0

    def __init__(self, message: str, *, call: str, status_code: int, body: Any) -> None:
        self.status_code = status_code
        self.body = body
        super().__init__(f"HTTP {status_code}: {message}", call=call)

    @property
    def retryable(self) -> bool:
        """Whether the retry policy would try this status again."""
        return retryable_status(self.status_code)


class BadRequestError(APIStatusError):
    """400."""


class AuthenticationError(APIStatusError):
    """401: the API key is missing or wrong."""


class PermissionDeniedError(APIStatusError):
    """403."""


class NotFoundError(APIStatusError):
    """404: unknown worker, schedule or file."""


class ConflictError(APIStatusError):
    """409."""


class UnprocessableEntityError(APIStatusError):
    """422: the API rejected the body."""


class RateLimitError(APIStatusError):
    """429: rate limited (retried by the client until its attempts run out)."""


class InternalServerError(APIStatusError):
    """5xx."""


_BY_STATUS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    422: UnprocessableEntityError,
    429: RateLimitError,
}


def status_error(call: str, status_code: int, body: Any) -> APIStatusError:
    """Build the typed error for an HTTP status."""
    cls = _BY_STATUS.get(status_code)
    if cls is None:
        cls = InternalServerError if status_code >= 500 else APIStatusError
    message = _message_from_body(body)
    return cls(message, call=call, status_code=status_code, body=body)


def _message_from_body(body: Any) -> str:
    if isinstance(body, dict):
        for key in ("message", "error", "detail"):
            value = body.get(key)
            if isinstance(value, str) and value:
                return value
            if isinstance(value, dict) and isinstance(value.get("message"), str):
                return str(value["message"])
    if isinstance(body, str) and body:
        return body[:200]
    return "request failed"
